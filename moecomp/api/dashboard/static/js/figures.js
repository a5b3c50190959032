// Reading figures out of a report.json ("moecomp.report/1", moecomp/compression/evaluation/schema.py).

import { formatBytes, formatNumber } from "./format.js";

const SKIP = new Set(["tokens", "windows", "n", "prompt_tokens", "prefill_tokens", "flops_context", "local"]);

/** Dotted path -> number, the way compression/evaluation/compare.py flattens a ModelResult. */
export function flatten(value, prefix = "", out = {}) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    for (const [key, inner] of Object.entries(value)) {
      if (SKIP.has(key) || key.endsWith("_stderr")) continue;
      flatten(inner, prefix ? `${prefix}.${key}` : key, out);
    }
  } else if (typeof value === "number") {
    out[prefix] = value;
  }
  return out;
}

export function modelFigures(result) {
  if (!result) return {};
  const parts = {};
  for (const key of ["perplexity", "tasks", "mean_accuracy", "speed", "footprint"]) {
    if (result[key] !== null && result[key] !== undefined) parts[key] = result[key];
  }
  return flatten(parts);
}

/** [label, formatter] for a dotted figure path. */
export function describeFigure(path) {
  const parts = path.split(".");
  const [group] = parts;
  const last = parts[parts.length - 1];
  if (group === "perplexity") {
    const source = parts.slice(1, -1).join(".");
    return [last === "ppl" ? `Perplexity (${source})` : `NLL, nats (${source})`, formatNumber];
  }
  if (group === "tasks") return [`${last === "acc_norm" ? "Normalized accuracy" : "Accuracy"} (${parts[1]})`, pct];
  if (group === "mean_accuracy") return ["Mean accuracy", pct];
  if (group === "speed") return describeSpeed(parts);
  if (path === "footprint.disk_bytes") return ["Size on disk", formatBytes];
  if (path === "footprint.params_total") return ["Parameters", formatNumber];
  if (path === "footprint.params_active") return ["Active parameters per token", formatNumber];
  if (path === "footprint.flops_per_token") return ["FLOPs per token", formatNumber];
  return [path, formatNumber];
}

/** A speed figure's label names its runtime: "served" under speed.served, else "eager" (the study's baseline). */
function describeSpeed(parts) {
  const runtime = parts[1] === "served" ? "served" : "eager";
  const [name, batch] = runtime === "served" ? parts.slice(2) : parts.slice(1);
  if (name === "prefill_tok_s") return [`Prefill tokens/s (${runtime})`, formatNumber];
  if (name === "decode_tok_s") return [`Decode tokens/s (${runtime})`, formatNumber];
  if (name === "decode") return [`Decode tokens/s at batch ${batch} (${runtime})`, formatNumber];
  if (name === "peak_memory_gib") return [`Peak memory, GiB (${runtime})`, formatNumber];
  if (name === "rss_gib") return ["Process RSS, GiB", formatNumber];
  return [parts.join("."), formatNumber];
}

const pct = (fraction) => (typeof fraction === "number" ? `${(fraction * 100).toFixed(1)}%` : "—");

/** The first perplexity source of a report, e.g. "bundled:heldout", or null. */
export function firstPerplexitySource(report) {
  return Object.keys(report?.candidate?.perplexity ?? {})[0] ?? null;
}

/** Quality of the candidate as % of the original: perplexity or mean accuracy. */
export function qualityPct(report, kind) {
  if (kind === "accuracy") return report?.relative?.mean_accuracy ?? null;
  const source = firstPerplexitySource(report);
  return source ? report?.relative?.[`perplexity.${source}.ppl`] ?? null : null;
}

/** {value, label} of the memory measure both the candidate and the original have. */
export function memoryOf(result) {
  if (typeof result?.speed?.peak_memory_gib === "number") {
    return { value: result.speed.peak_memory_gib, label: "Peak memory (GiB)", unit: "GiB peak" };
  }
  if (typeof result?.footprint?.disk_bytes === "number") {
    return { value: result.footprint.disk_bytes / 2 ** 20, label: "Size on disk (MiB)", unit: "MiB on disk" };
  }
  return null;
}

export function speedupOf(report) {
  const relative = report?.relative?.["speed.decode_tok_s"];
  return typeof relative === "number" ? relative / 100 : null;
}
