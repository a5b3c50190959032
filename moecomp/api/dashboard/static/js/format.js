// Formatting helpers and a tiny DOM builder shared by every page.

/** h("td", {class: "x", onclick: fn}, child, ...) -> Element; strings become text nodes (never HTML). */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Status is told by text and a distinct glyph, never by colour alone.
export const STATUS = {
  queued: { icon: "◷", label: "Queued" },
  running: { icon: "▶", label: "Running" },
  succeeded: { icon: "✓", label: "Succeeded" },
  failed: { icon: "✗", label: "Failed" },
  cancelled: { icon: "⊘", label: "Cancelled" },
};
export const FINAL = new Set(["succeeded", "failed", "cancelled"]);

export function statusBadge(status) {
  const info = STATUS[status] ?? { icon: "?", label: status };
  return h("span", { class: `status status-${status}`, "data-status": status },
    h("span", { class: "status-icon", "aria-hidden": "true" }, info.icon), " ", info.label);
}

export function modelLabel(model) {
  if (!model) return "";
  if (model.kind === "local") return model.path.split("/").filter(Boolean).pop() ?? model.path;
  if (model.kind === "hub") return model.revision && model.revision !== "main" ? `${model.id}@${model.revision}` : model.id;
  if (model.kind === "upload") return `upload ${String(model.upload_id).slice(0, 8)}`;
  return JSON.stringify(model);
}

/** A stable key for "the same model" across jobs. */
export function modelKey(model) {
  if (!model) return "";
  if (model.kind === "local") return `local:${model.path}`;
  if (model.kind === "hub") return `hub:${model.id}@${model.revision || "main"}`;
  return `${model.kind}:${model.upload_id ?? ""}`;
}

const STAGE_SHORT = {
  expert_drop: (s) => `expert drop keep ${s.keep}${s.mode === "global" ? " (global)" : ""}`,
  layer_drop: (s) => `layer drop ${s.drop}`,
  block_drop: (s) => `block drop ${s.drop}${s.mode === "consecutive" ? " (consecutive)" : ""}`,
};

export function stageShort(stage) {
  const known = STAGE_SHORT[stage.method];
  if (known) return known(stage);
  const params = Object.entries(stage).filter(([k, v]) => k !== "method" && typeof v !== "object")
    .slice(0, 3).map(([k, v]) => `${k} ${v}`);
  return [stage.method.replaceAll("_", " "), ...params].join(" ");
}

export function recipeShort(recipe) {
  const stages = recipe?.stages ?? [];
  return stages.length ? stages.map(stageShort).join(" → ") : "re-export only";
}

export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = Number(bytes);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export function jobDuration(job, now = Date.now()) {
  if (!job.started_at) return null;
  const end = job.finished_at ? Date.parse(job.finished_at) : now;
  return (end - Date.parse(job.started_at)) / 1000;
}

export function formatTime(iso) {
  if (!iso) return "—";
  return new Date(iso).toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

export function formatNumber(value, digits = 3) {
  if (value === null || value === undefined || Number.isNaN(Number(value))) return "—";
  const n = Number(value);
  if (Number.isInteger(n)) return n.toLocaleString();
  return Math.abs(n) >= 1000 ? n.toFixed(0) : n.toPrecision(digits);
}

export function formatPct(value) {
  if (value === null || value === undefined || Number.isNaN(Number(value))) return "—";
  return `${Number(value).toFixed(1)}%`;
}

/** A progress bar with role=progressbar; returns {node, update(fraction, text)}. */
export function progressBar(label) {
  const fill = h("span", { class: "bar-fill" });
  const text = h("span", { class: "bar-text" });
  const bar = h("div", { class: "bar", role: "progressbar", "aria-label": label,
    "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": "0" }, fill);
  const node = h("div", { class: "progress" }, bar, text);
  function update(fraction, caption = "") {
    const pct = Math.round(Math.min(1, Math.max(0, fraction || 0)) * 100);
    bar.setAttribute("aria-valuenow", String(pct));
    bar.setAttribute("aria-valuetext", caption ? `${pct}%, ${caption}` : `${pct}%`);
    fill.style.width = `${pct}%`;
    text.textContent = caption ? `${pct}% · ${caption}` : `${pct}%`;
  }
  update(0);
  return { node, update };
}

// Stages whose steps are not layers (the methods and export count layers of the model).
const STEP_STAGES = new Set(["load", "calibrate", "evaluate", "artifacts", "worker", "upload", "download"]);

/** "layer 3 of 8" or "step 5 of 6 (candidate perplexity)": how far a progress event says its stage is. */
export function stepText(stage, data) {
  if (!data?.total) return "";
  const unit = data.unit ?? (STEP_STAGES.has(stage) ? "step" : "layer");
  const what = [data.model, data.measurement].filter((x) => typeof x === "string").join(" ");
  return `${unit} ${data.step} of ${data.total}` + (what ? ` (${what})` : "");
}

/** "calibrate · layer 3 of 8" or "evaluate · step 5 of 6 (candidate perplexity)" for a progress event. */
export function stepCaption(stage, data) {
  if (!data) return stage ?? "";
  return [stage, stepText(stage, data)].filter(Boolean).join(" · ");
}
