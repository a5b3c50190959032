// The workers page: the worker registry (GET /v1/workers), re-read every few seconds.

import { listWorkers } from "./api.js";
import { formatBytes, formatTime, h } from "./format.js";

const POLL_MS = 3000;

function gpuText(gpus) {
  if (gpus === null) return "—";
  if (gpus.length === 0) return "CPU only";
  return gpus.map((gpu) => `${gpu.name} (${formatBytes(gpu.memory_bytes)})`).join(", ");
}

function jobsCell(worker) {
  const cell = h("td", { "data-label": "Current job" });
  for (const id of worker.jobs) {
    cell.append(h("a", { href: `/dashboard/jobs/${encodeURIComponent(id)}`, class: "job-link" }, id.slice(0, 8)), " ");
  }
  const others = worker.running - worker.jobs.length;
  if (others > 0) cell.append(`${others} job${others > 1 ? "s" : ""} of another team`);
  if (worker.running === 0) cell.append("idle");
  return cell;
}

function workerRow(worker) {
  return h("tr", { "data-worker": worker.name },
    h("th", { scope: "row", "data-label": "Worker" }, worker.name),
    h("td", { "data-label": "Host" }, worker.host ?? "—"),
    h("td", { "data-label": "GPUs", class: "worker-gpus" }, gpuText(worker.gpus)),
    h("td", { "data-label": "Version" }, worker.version ?? "—"),
    h("td", { "data-label": "State" }, worker.alive ? "alive" : "silent"),
    jobsCell(worker),
    h("td", { "data-label": "Last heartbeat" }, formatTime(worker.beat_at)),
  );
}

export async function initWorkers(root) {
  const body = root.querySelector("#workers-body");
  const summary = root.querySelector("#workers-summary");
  async function refresh() {
    const { items } = await listWorkers();
    body.replaceChildren(...items.map(workerRow));
    const alive = items.filter((worker) => worker.alive).length;
    summary.textContent = items.length ? `${alive} of ${items.length} workers alive.` : "No worker has reported yet.";
  }
  await refresh();
  setInterval(() => refresh().catch((error) => { summary.textContent = `Could not refresh: ${error.message}`; }), POLL_MS);
}
