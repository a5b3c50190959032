// The job page: recipe, per-stage progress, the live event log, artifacts, cancel and the report.

import { ApiError, artifactJSON, artifactUrl, cancelJob, getJob, listArtifacts, listEvents, serverNow } from "./api.js";
import { estimate, observe, startTrack } from "./eta.js";
import {
  FINAL, formatBytes, formatDuration, formatTime, h, jobDuration, modelKey, progressBar, stageShort,
  statusBadge, stepCaption, stepText,
} from "./format.js";
import { renderReport } from "./report.js";

const POLL_MS = 1000;
const MAX_LOG_LINES = 2000;
const TICK_MS = 1000;

function describeRecipe(target, job) {
  const stages = job.recipe?.stages ?? [];
  const list = h("ol", { class: "stages" }, stages.map((stage) => h("li", {},
    h("strong", {}, stageShort(stage)),
    h("code", { class: "params" }, JSON.stringify(stage)))));
  const calibration = job.recipe?.calibration;
  target.replaceChildren(
    stages.length ? list : h("p", {}, "No stages: the model is re-exported unchanged."),
    calibration ? h("p", {}, `Calibration: ${calibration.samples} × ${calibration.seq_len} tokens from `,
      h("code", {}, calibration.sources.join(", "))) : null,
    job.evaluation ? h("details", {}, h("summary", {}, "Evaluation settings"),
      h("pre", {}, JSON.stringify(job.evaluation, null, 2))) : null);
}

function describeJob(target, job) {
  const rows = [
    ["Model", modelKey(job.model)], ["Created", formatTime(job.created_at)],
    ["Started", formatTime(job.started_at)], ["Finished", formatTime(job.finished_at)],
    ["Duration", formatDuration(jobDuration(job))], ["Attempts", job.attempts], ["Host", job.host ?? "—"],
    ["Worker", job.worker ?? "—"],
  ];
  target.replaceChildren(...rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]));
}

const seconds = (ms) => formatDuration(ms / 1000);
const etaText = (ms) => ms === null ? "estimating…" : ms < 1000 ? "almost done" : `about ${seconds(ms)} left`;

/**
 * One row per stage, in the order stages first report: a bar with "layer k of N", then the stage's time.
 * The stage that reported last runs (unless the job ended): its elapsed time and time left tick each
 * second; a done stage shows how long it took, one left behind (a failed attempt) where it stopped.
 */
class StageBoard {
  constructor(list) {
    this.list = list;
    this.rows = new Map();
    this.current = null;
    this.latest = null; // server time of the job's latest event: where a stage that first reports a step began
    this.ended = false;
    this.timer = null;
  }

  add(event) {
    const time = Date.parse(event.time);
    if (event.kind === "progress" && event.stage && event.data?.total) this.progress(event.stage, time, event.data);
    if (!Number.isNaN(time)) this.latest = Math.max(this.latest ?? time, time);
  }

  progress(stage, time, data) {
    let row = this.rows.get(stage);
    if (!row) {
      row = { bar: progressBar(`Stage ${stage}`), time: h("p", { class: "stage-time" }), track: null };
      row.node = h("li", { "data-stage": stage }, h("span", { class: "stage-name" }, stage),
        h("div", { class: "stage-body" }, row.bar.node, row.time));
      this.list.append(row.node);
      this.rows.set(stage, row);
    }
    if (!row.track || data.step < row.track.step) { // its first report, or a new attempt began it again
      row.track = startTrack(data.step > 0 && this.latest !== null ? this.latest : time);
    }
    row.track = observe(row.track, time, data.step, data.total);
    row.caption = stepText(stage, data);
    this.current = stage;
    if (!this.ended) this.timer ??= setInterval(() => this.render(), TICK_MS);
    this.render();
  }

  /** The job is final: nothing runs any more. */
  end() {
    this.ended = true;
    clearInterval(this.timer);
    this.render();
  }

  render() {
    const now = serverNow();
    for (const [stage, row] of this.rows) {
      const view = estimate(row.track, now);
      const state = view.done ? "done" : stage === this.current && !this.ended ? "running" : "stopped";
      row.node.dataset.state = state;
      row.bar.update(view.fraction, row.caption);
      if (state === "running") {
        row.time.replaceChildren(h("span", { class: "stage-elapsed" }, `${seconds(view.elapsed)} elapsed`), " · ",
          h("span", { class: "stage-eta" }, etaText(view.remaining)));
      } else {
        const took = state === "done" ? view.elapsed : estimate(row.track, row.track.last.time).elapsed;
        row.time.replaceChildren(h("span", { class: "stage-duration" },
          `${state === "done" ? "took" : "stopped after"} ${seconds(took)}`));
      }
    }
  }
}

class EventLog {
  constructor(list) {
    this.list = list;
    this.lastSeq = 0;
  }

  /** Shows the event; false if it was shown already (a reconnect may resend what we have). */
  add(event) {
    if (event.seq <= this.lastSeq) return false;
    this.lastSeq = event.seq;
    const text = event.kind === "message" ? event.data?.text
      : event.kind === "progress" ? stepCaption(event.stage, event.data)
        : JSON.stringify(event.data);
    this.list.append(h("li", { class: `log-${event.level ?? "info"} log-kind-${event.kind}` },
      h("time", { datetime: event.time }, new Date(event.time).toLocaleTimeString()), " ",
      h("span", { class: "log-kind" }, event.kind), event.stage ? ` [${event.stage}] ` : " ", text ?? ""));
    while (this.list.children.length > MAX_LOG_LINES) this.list.firstElementChild.remove();
    if (this.follow) this.list.scrollTop = this.list.scrollHeight;
    return true;
  }

  get follow() {
    const el = this.list;
    return el.scrollHeight - el.scrollTop - el.clientHeight < 40;
  }
}

function showEvent(event, log, board) {
  if (log.add(event)) board.add(event);
}

/** Reads /events once a second: the fallback when the stream cannot be held open (e.g. a buffering proxy). */
async function pollEvents(jobId, log, board, isFinal) {
  const body = await listEvents(jobId, log.lastSeq, 500);
  for (const event of body.items) showEvent(event, log, board);
  if (body.items.length || !isFinal()) setTimeout(() => pollEvents(jobId, log, board, isFinal), POLL_MS);
}

/** The event stream (EventSource reconnects by itself, resuming with Last-Event-ID). */
function streamEvents(jobId, log, board, onEnd, isFinal) {
  const source = new EventSource(`/v1/jobs/${encodeURIComponent(jobId)}/events/stream?after=0`);
  const handle = (message) => showEvent(JSON.parse(message.data), log, board);
  for (const kind of ["message", "progress", "metrics"]) source.addEventListener(kind, handle);
  source.addEventListener("end", () => {
    source.close();
    onEnd();
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) pollEvents(jobId, log, board, isFinal).catch(() => null);
  });
  return source;
}

// The checkpoint is large: the CLI resumes an interrupted download and checks the sha256.
const fetchCommand = (a) => `moecomp download ${a.job_id} --kind ${a.kind} --out .`;

function artifactRows(tbody, artifacts) {
  tbody.replaceChildren(...artifacts.map((a) => h("tr", { "data-kind": a.kind },
    h("td", { "data-label": "Kind" }, a.kind),
    h("td", { "data-label": "File" }, h("div", {},
      h("a", { href: artifactUrl(a), download: a.name, class: "download" }, a.name),
      ...(a.kind === "checkpoint" ? [h("code", { class: "fetch-command" }, fetchCommand(a))] : []))),
    h("td", { "data-label": "Size" }, formatBytes(a.bytes)),
    h("td", { "data-label": "sha256" }, h("code", { class: "sha256" }, a.sha256)))));
}

export function initJob(root) {
  const jobId = root.dataset.jobId;
  const el = (id) => root.querySelector(`#${id}`);
  const overall = progressBar("Job progress");
  el("job-progress").append(overall.node);
  const board = new StageBoard(el("stage-list"));
  const log = new EventLog(el("event-log"));
  const cancel = el("cancel-button");
  let finished = false;
  let final = false;

  function show(job) {
    el("job-status").replaceChildren(statusBadge(job.status));
    overall.update(job.status === "succeeded" ? 1 : job.progress, job.stage ?? job.status);
    describeJob(el("job-details"), job);
    el("compare-link").href = `/dashboard/compare?model=${encodeURIComponent(job.model_ref ?? modelKey(job.model))}`;
    cancel.hidden = FINAL.has(job.status) || job.cancel_requested;
    if (FINAL.has(job.status)) board.end();
    el("job-error").hidden = !job.error;
    if (job.error) el("job-error").textContent = `${job.error.code}: ${job.error.message}`;
    if (job.cancel_requested && !FINAL.has(job.status)) el("cancel-note").textContent = "Cancellation requested.";
  }

  async function finish() {
    if (finished) return;
    finished = true;
    const artifacts = (await listArtifacts(jobId)).items;
    artifactRows(el("artifacts-body"), artifacts);
    el("artifacts-empty").hidden = artifacts.length > 0;
    const [report, manifest] = await Promise.all([
      artifactJSON(artifacts, "report").catch(() => null), artifactJSON(artifacts, "manifest").catch(() => null)]);
    renderReport(el("report"), report, manifest);
  }

  async function poll() {
    try {
      const job = await getJob(jobId);
      show(job);
      final = FINAL.has(job.status);
      if (final) {
        await finish();
        return;
      }
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        el("job-error").hidden = false;
        el("job-error").textContent = "No such job for your team.";
        return;
      }
      console.error(error);
      if (finished) {
        el("report").textContent = `Could not show the results: ${error.message}`;
        return;
      }
    }
    setTimeout(poll, POLL_MS);
  }

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      show(await cancelJob(jobId));
      el("cancel-note").textContent = "Cancellation requested.";
    } catch (error) {
      el("cancel-note").textContent = `Could not cancel: ${error.message}`;
    } finally {
      cancel.disabled = false;
    }
  });

  getJob(jobId).then((job) => describeRecipe(el("recipe"), job)).catch(() => null);
  streamEvents(jobId, log, board, () => poll(), () => final);
  poll();
}
