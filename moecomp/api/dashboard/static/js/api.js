// Calls to the /v1 API. Auth rides on the HttpOnly cookie `moecomp_key`, so no key is ever in JS.

export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

function signInAgain() {
  const next = encodeURIComponent(location.pathname + location.search);
  location.assign(`/dashboard/login?next=${next}`);
}

// The server's clock, told by the Date header (whole seconds) of each answer: job events carry the server's
// times, and the browser's clock may be off. offset = server − browser lies in [date − received,
// date + 1 s − sent]; the narrowest bounds seen are kept, and start again if the clocks jump apart.
const clock = { low: -Infinity, high: Infinity };

function noteServerClock(response, sent, received) {
  const date = Date.parse(response.headers.get("date") ?? "");
  if (Number.isNaN(date)) return;
  const low = Math.max(clock.low, date - received);
  const high = Math.min(clock.high, date + 1000 - sent);
  Object.assign(clock, low <= high ? { low, high } : { low: date - received, high: date + 1000 - sent });
}

/** Now on the server's clock, in ms (the browser's own until an answer has told the offset). */
export function serverNow() {
  return Date.now() + (Number.isFinite(clock.low) ? (clock.low + clock.high) / 2 : 0);
}

async function request(method, path, body, headers = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const sent = Date.now();
  const response = await fetch(path, init);
  noteServerClock(response, sent, Date.now());
  if (response.status === 401) {
    signInAgain();
    throw new ApiError(401, "Signed out");
  }
  const data = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) throw new ApiError(response.status, data?.detail ?? response.statusText);
  return data;
}

export const getJSON = (path) => request("GET", path);
export const postJSON = (path, body, headers) => request("POST", path, body, headers);

export function listJobs({ status = "", model = "", limit = 50, cursor = "" } = {}) {
  const query = new URLSearchParams({ limit: String(limit) });
  if (status) query.set("status", status);
  if (model) query.set("model", model);
  if (cursor) query.set("cursor", cursor);
  return getJSON(`/v1/jobs?${query}`);
}

/** Every job of the team (all pages), newest first; bounded so a huge history cannot hang the page. */
export async function listAllJobs(filters = {}, maxPages = 20) {
  const items = [];
  let cursor = "";
  for (let page = 0; page < maxPages; page += 1) {
    const body = await listJobs({ ...filters, limit: 100, cursor });
    items.push(...body.items);
    if (!body.next_cursor) break;
    cursor = body.next_cursor;
  }
  return items;
}

/** The /readyz body (database, broker, live workers), whether it is 200 or 503. */
export async function readiness() {
  const response = await fetch("/readyz", { headers: { Accept: "application/json" }, credentials: "same-origin" });
  return response.json();
}

export const getJob = (id) => getJSON(`/v1/jobs/${encodeURIComponent(id)}`);
export const cancelJob = (id) => postJSON(`/v1/jobs/${encodeURIComponent(id)}/cancel`);
export const listArtifacts = (id) => getJSON(`/v1/jobs/${encodeURIComponent(id)}/artifacts`);
export const listMethods = () => getJSON("/v1/methods");
export const listWorkers = () => getJSON("/v1/workers");

export function listEvents(id, after = 0, limit = 500) {
  return getJSON(`/v1/jobs/${encodeURIComponent(id)}/events?after=${after}&limit=${limit}`);
}

/**
 * Streams a model folder's tar to POST /v1/models; onProgress(fraction) while it goes up.
 * XMLHttpRequest rather than fetch: only it reports upload progress.
 */
export function uploadModel(file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/models");
    xhr.setRequestHeader("Content-Type", "application/x-tar");
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (e) => e.lengthComputable && onProgress(e.loaded / e.total));
    xhr.addEventListener("load", () => {
      if (xhr.status === 201) resolve(xhr.response);
      else reject(new ApiError(xhr.status, xhr.response?.detail ?? xhr.statusText));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, "The upload was interrupted.")));
    xhr.send(file);
  });
}

export function artifactUrl(artifact) {
  return artifact.url || `/v1/artifacts/${encodeURIComponent(artifact.id)}/content`;
}

/** The JSON content of a job's first artifact of `kind` (e.g. "report", "manifest"), or null. */
export async function artifactJSON(artifacts, kind) {
  const artifact = artifacts.find((a) => a.kind === kind);
  if (!artifact) return null;
  const response = await fetch(artifactUrl(artifact), { credentials: "same-origin" });
  if (!response.ok) throw new ApiError(response.status, `Could not read ${artifact.name}`);
  return response.json();
}
