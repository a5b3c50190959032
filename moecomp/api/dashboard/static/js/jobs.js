// The jobs page: the team's jobs, newest first, updated in place every second without a reload.

import { listEvents, listJobs, readiness } from "./api.js";
import {
  FINAL, STATUS, formatDuration, formatTime, h, jobDuration, modelKey, modelLabel, progressBar,
  recipeShort, statusBadge, stepCaption,
} from "./format.js";

const POLL_MS = 1000;
const PAGE = 50;
const WORKERS_POLL_MS = 5000; // live workers are asked for only while jobs are queued, at most this often

/** Remembers the last progress event of each running job, read incrementally from /events. */
class StepTracker {
  constructor() {
    this.state = new Map(); // job id -> {after, stage, data}
  }

  async refresh(job) {
    const known = this.state.get(job.id) ?? { after: 0, stage: null, data: null };
    const body = await listEvents(job.id, known.after, 500);
    for (const event of body.items) {
      if (event.kind === "progress") Object.assign(known, { stage: event.stage, data: event.data });
    }
    known.after = body.last_seq ?? known.after;
    this.state.set(job.id, known);
    return known;
  }

  caption(job) {
    const known = this.state.get(job.id);
    if (!known?.data || (job.stage && known.stage !== job.stage)) return job.stage ?? "";
    return stepCaption(known.stage, known.data);
  }
}

function jobRow(job) {
  const bar = progressBar(`Progress of job ${job.id.slice(0, 8)}`);
  const cells = {
    status: h("td", { "data-label": "Status" }),
    model: h("td", { "data-label": "Model" }),
    recipe: h("td", { "data-label": "Recipe" }),
    progress: h("td", { "data-label": "Progress" }, bar.node),
    duration: h("td", { "data-label": "Duration" }),
    created: h("td", { "data-label": "Created" }),
  };
  const link = h("a", { href: `/dashboard/jobs/${encodeURIComponent(job.id)}`, class: "job-link" }, job.id.slice(0, 8));
  const tr = h("tr", { "data-job-id": job.id },
    h("th", { scope: "row", "data-label": "Job" }, link), ...Object.values(cells));
  return { tr, cells, bar, status: null };
}

function caption(job, tracker) {
  if (job.status === "running") return tracker.caption(job) || "starting";
  if (job.status === "failed" && job.error) return job.error.code;
  if (job.status === "queued" && job.cancel_requested) return "cancelling";
  return STATUS[job.status]?.label.toLowerCase() ?? job.status;
}

function updateRow(row, job, tracker) {
  if (row.status !== job.status) {
    row.cells.status.replaceChildren(statusBadge(job.status));
    row.tr.dataset.status = job.status;
    row.status = job.status;
  }
  row.cells.model.textContent = modelLabel(job.model);
  row.cells.model.title = modelRef(job);
  row.cells.recipe.textContent = recipeShort(job.recipe);
  const fraction = job.status === "succeeded" ? 1 : job.progress;
  row.bar.update(fraction, caption(job, tracker));
  row.cells.duration.textContent = formatDuration(jobDuration(job));
  row.cells.created.textContent = formatTime(job.created_at);
}

// What the API's `model` filter matches: the resolved path, hub id or upload:<id>.
const modelRef = (job) => job.model_ref ?? modelKey(job.model);

function syncModelFilter(select, jobs) {
  const seen = new Map([...select.options].map((o) => [o.value, o]));
  for (const job of jobs) {
    const key = modelRef(job);
    if (!seen.has(key)) {
      const option = h("option", { value: key }, modelLabel(job.model));
      select.append(option);
      seen.set(key, option);
    }
  }
}

export function initJobs(root) {
  const form = root.querySelector("#job-filters");
  const tbody = root.querySelector("#jobs-body");
  const summary = root.querySelector("#jobs-summary");
  const announcer = document.querySelector("#announcer");
  const more = root.querySelector("#more-jobs");
  const rows = new Map();
  const tracker = new StepTracker();
  const noWorker = root.querySelector("#no-worker");
  let workersAskedAt = 0;
  let pages = 1; // "Show older jobs" adds a page; every shown page stays live

  async function fetchPages(filters) {
    const jobs = [];
    let cursor = "";
    for (let page = 0; page < pages; page += 1) {
      const body = await listJobs({ ...filters, limit: PAGE, cursor });
      jobs.push(...body.items);
      cursor = body.next_cursor;
      if (!cursor) break;
    }
    more.hidden = !cursor;
    return jobs;
  }

  async function tick() {
    const status = form.elements.status.value;
    const model = form.elements.model.value;
    const jobs = await fetchPages({ status, model });
    syncModelFilter(form.elements.model, jobs);
    await Promise.all(jobs.filter((j) => j.status === "running").map((j) => tracker.refresh(j).catch(() => null)));
    render(jobs);
    await warnIfNoWorker(jobs.some((j) => j.status === "queued"));
  }

  /** The banner: jobs wait and no worker is alive (its heartbeats, as /readyz counts them). */
  async function warnIfNoWorker(queued) {
    if (!queued) {
      noWorker.hidden = true;
      return;
    }
    if (Date.now() - workersAskedAt < WORKERS_POLL_MS) return;
    workersAskedAt = Date.now();
    const ready = await readiness().catch(() => null);
    noWorker.hidden = !ready || ready.workers > 0;
  }

  function render(jobs) {
    const wanted = new Set(jobs.map((j) => j.id));
    for (const [id, row] of rows) {
      if (!wanted.has(id)) {
        row.tr.remove();
        rows.delete(id);
      }
    }
    jobs.forEach((job, index) => {
      let row = rows.get(job.id);
      if (!row) {
        row = jobRow(job);
        rows.set(job.id, row);
      } else if (row.status && row.status !== job.status && FINAL.has(job.status)) {
        announcer.textContent = `Job ${job.id.slice(0, 8)} ${STATUS[job.status].label.toLowerCase()}`;
      }
      updateRow(row, job, tracker);
      if (tbody.children[index] !== row.tr) tbody.insertBefore(row.tr, tbody.children[index] ?? null);
    });
    summary.textContent = jobs.length ? `${jobs.length} job${jobs.length === 1 ? "" : "s"}` : "No jobs match.";
  }

  form.addEventListener("change", () => {
    pages = 1;
    tick().catch(showError);
  });
  more.addEventListener("click", () => {
    pages += 1;
    tick().catch(showError);
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    tick().catch(showError);
  });

  function showError(error) {
    summary.textContent = `Could not load jobs: ${error.message}`;
  }

  async function loop() {
    try {
      if (!document.hidden) await tick(); // a background tab stops asking; it catches up when shown
    } catch (error) {
      showError(error);
    }
    setTimeout(loop, POLL_MS);
  }
  loop();
}
