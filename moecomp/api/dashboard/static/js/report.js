// The job page's report: gate, figures with "% of original", expert-score heatmaps and similarity bars.

import { barChart, chartFigure, heatmap, scatterChart } from "./charts.js";
import { describeFigure, firstPerplexitySource, memoryOf, modelFigures, qualityPct } from "./figures.js";
import { formatNumber, formatPct, h } from "./format.js";

function figureRow(path, label, original, compressed, pct) {
  return h("tr", { "data-figure": path }, h("th", { scope: "row" }, label),
    h("td", { "data-label": "Original" }, original), h("td", { "data-label": "Compressed" }, compressed),
    h("td", { class: "pct", "data-label": "% of original" }, pct));
}

function figuresTable(report) {
  const candidate = modelFigures(report.candidate);
  const baseline = modelFigures(report.baseline);
  const rows = Object.keys(candidate).map((path) => {
    const [label, format] = describeFigure(path);
    return figureRow(path, label, path in baseline ? format(baseline[path]) : "—", format(candidate[path]),
      formatPct(report.relative?.[path]));
  });
  const agreement = formatPct((report.fidelity?.top1_agreement ?? NaN) * 100);
  const fidelity = report.fidelity ? [
    figureRow("fidelity.top1_agreement", "Top-1 agreement with the original", "100%", agreement, agreement),
    figureRow("fidelity.kl_mean", "KL(original ‖ compressed), nats", "0", formatNumber(report.fidelity.kl_mean), "—"),
  ] : [];
  return h("div", { class: "table-wrap" }, h("table", { class: "figures responsive" },
    h("caption", {}, "Figures of the compressed model against the original"),
    h("thead", {}, h("tr", {}, ["Figure", "Original", "Compressed", "% of original"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows, fidelity)));
}

function gateNote(report) {
  if (!report.gate) return null;
  if (report.gate.passed) return h("p", { class: "gate gate-pass" }, "✓ Quality gate passed.");
  return h("div", { class: "gate gate-fail", role: "note" }, h("p", {}, "✗ Quality gate failed:"),
    h("ul", {}, report.gate.failures.map((f) => h("li", {}, f))));
}

/** Manifest stages as a list, whatever container the manifest uses. */
function manifestStages(manifest) {
  const stages = manifest?.stages ?? [];
  return Array.isArray(stages) ? stages : Object.entries(stages).map(([name, s]) => ({ method: name, ...s }));
}

const decisionsOf = (stage, manifest) => stage.decisions ?? manifest?.decisions ?? {};

function expertHeatmap(stage, manifest) {
  const kept = decisionsOf(stage, manifest).kept_experts ?? {};
  const rows = Object.entries(stage.scores).map(([layer, values]) => {
    const keep = kept[layer];
    const dropped = new Set(keep ? values.map((_, e) => e).filter((e) => !keep.includes(e)) : []);
    return { label: layer, values, dropped };
  });
  // Layers whose MoE (or whole block) another stage removed have no expert scores: say so in their row.
  const all = manifest?.decisions ?? {};
  for (const [list, note] of [[all.dropped_layers, "MoE removed"], [all.dropped_blocks, "block removed"]]) {
    for (const layer of list ?? []) {
      if (!(String(layer) in stage.scores)) rows.push({ label: String(layer), values: [], note });
    }
  }
  rows.sort((a, b) => Number(a.label) - Number(b.label));
  return heatmap({ title: `Expert scores per layer (${stage.method ?? "expert drop"})`, rows });
}

function similarityBars(stage, manifest) {
  const decisions = decisionsOf(stage, manifest);
  const isBlock = String(stage.method ?? "").includes("block");
  const dropped = new Set((isBlock ? decisions.dropped_blocks : decisions.dropped_layers) ?? []);
  const items = Object.entries(stage.similarity).sort(([a], [b]) => Number(a) - Number(b))
    .map(([idx, value]) => ({ label: idx, value, marked: dropped.has(Number(idx)) || dropped.has(idx) }));
  const unit = isBlock ? "block" : "MoE layer";
  return barChart({ title: `${isBlock ? "Block" : "Layer"} similarity (${stage.method ?? unit})`, items,
    valueLabel: `cosine similarity per ${unit}` });
}

function structureCharts(manifest) {
  const charts = [];
  for (const stage of manifestStages(manifest)) {
    if (stage.scores && Object.keys(stage.scores).length) charts.push(expertHeatmap(stage, manifest));
    if (stage.similarity && Object.keys(stage.similarity).length) charts.push(similarityBars(stage, manifest));
  }
  return charts;
}

function tradeoffChart(report) {
  const base = memoryOf(report.baseline), cand = memoryOf(report.candidate);
  const quality = qualityPct(report, report.candidate?.mean_accuracy != null ? "accuracy" : "perplexity");
  if (!base || !cand || quality === null) return null;
  const what = report.candidate?.mean_accuracy != null ? "Mean accuracy" : `Perplexity (${firstPerplexitySource(report)})`;
  return scatterChart({ title: `${what} against size`, xLabel: cand.label, yLabel: `${what}, % of original`,
    points: [{ x: base.value, y: 100, label: "original", reference: true }, { x: cand.value, y: quality, label: "this job" }] });
}

export function renderReport(target, report, manifest) {
  if (!report && !manifest) {
    target.replaceChildren(h("p", {}, "No report: this job was not evaluated, or did not finish."));
    target.dataset.ready = "true";
    return;
  }
  manifest = manifest ?? report?.manifest ?? null;
  const parts = [];
  if (report) {
    parts.push(h("p", { class: "runtime" }, `Measured with ${report.candidate?.runtime ?? "?"} on ${report.device}.`),
      gateNote(report), figuresTable(report));
    if (report.notes?.length) parts.push(h("ul", { class: "notes" }, report.notes.map((n) => h("li", {}, n))));
  }
  const charts = [report ? tradeoffChart(report) : null, ...structureCharts(manifest)].filter(Boolean);
  if (charts.length) parts.push(h("div", { class: "chart-grid" }, charts.map((c) => chartFigure(c))));
  target.replaceChildren(...parts.filter(Boolean));
  target.dataset.ready = "true";
}
