// The job page: recipe, per-stage progress, the live event log, artifacts, cancel and the report.

import { ApiError, artifactJSON, artifactUrl, cancelJob, getJob, listArtifacts, listEvents } from "./api.js";
import {
  FINAL, formatBytes, formatDuration, formatTime, h, jobDuration, modelKey, progressBar, stageShort,
  statusBadge, stepCaption,
} from "./format.js";
import { renderReport } from "./report.js";

const POLL_MS = 1000;
const MAX_LOG_LINES = 2000;

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
    ["Duration", formatDuration(jobDuration(job))], ["Attempts", job.attempts], ["Worker", job.worker ?? "—"],
  ];
  target.replaceChildren(...rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]));
}

/** One progress bar per stage, in the order stages first report. */
class StageBoard {
  constructor(list) {
    this.list = list;
    this.bars = new Map();
  }

  update(stage, data) {
    if (!stage || !data?.total) return;
    let bar = this.bars.get(stage);
    if (!bar) {
      bar = progressBar(`Stage ${stage}`);
      this.bars.set(stage, bar);
      this.list.append(h("li", { "data-stage": stage }, h("span", { class: "stage-name" }, stage), bar.node));
    }
    bar.update(data.step / data.total, stepCaption(stage, data));
  }
}

class EventLog {
  constructor(list) {
    this.list = list;
    this.lastSeq = 0;
  }

  add(event) {
    if (event.seq <= this.lastSeq) return; // a reconnect may resend what we have
    this.lastSeq = event.seq;
    const text = event.kind === "message" ? event.data?.text
      : event.kind === "progress" ? stepCaption(event.stage, event.data)
        : JSON.stringify(event.data);
    this.list.append(h("li", { class: `log-${event.level ?? "info"} log-kind-${event.kind}` },
      h("time", { datetime: event.time }, new Date(event.time).toLocaleTimeString()), " ",
      h("span", { class: "log-kind" }, event.kind), event.stage ? ` [${event.stage}] ` : " ", text ?? ""));
    while (this.list.children.length > MAX_LOG_LINES) this.list.firstElementChild.remove();
    if (this.follow) this.list.scrollTop = this.list.scrollHeight;
  }

  get follow() {
    const el = this.list;
    return el.scrollHeight - el.scrollTop - el.clientHeight < 40;
  }
}

function showEvent(event, log, board) {
  log.add(event);
  if (event.kind === "progress") board.update(event.stage, event.data);
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
