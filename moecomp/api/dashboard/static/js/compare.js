// Compare: finished jobs on one model, quality (% of original) against memory and against speedup.

import { artifactJSON, listAllJobs, listArtifacts } from "./api.js";
import { chartFigure, scatterChart } from "./charts.js";
import { memoryOf, qualityPct, speedupOf } from "./figures.js";
import { formatNumber, formatPct, h, modelKey, modelLabel, recipeShort } from "./format.js";

const reports = new Map(); // job id -> report (or null when the job has none)

async function reportOf(job) {
  if (!reports.has(job.id)) {
    const artifacts = (await listArtifacts(job.id)).items;
    reports.set(job.id, await artifactJSON(artifacts, "report").catch(() => null));
  }
  return reports.get(job.id);
}

const refOf = (job) => job.model_ref ?? modelKey(job.model);

function qualityLabel(kind) {
  return kind === "accuracy" ? "Mean accuracy, % of original (higher is better)"
    : "Perplexity, % of original (lower is better)";
}

/** The jobs that have both figures, after the original; none at all gives [] (the chart says "No data"). */
function pointsFor(entries, kind, xOf, reference) {
  const points = [];
  entries.forEach(({ job, report }, series) => { // one colour per job across both charts
    const x = xOf(report), y = qualityPct(report, kind);
    if (x !== null && y !== null) points.push({ x, y, label: job.id.slice(0, 8), series });
  });
  return points.length && reference ? [{ ...reference, y: 100, label: "original", reference: true }, ...points] : points;
}

const memoryText = (m) => (m ? `${formatNumber(m.value)} ${m.unit}` : "—");

function resultsTable(entries, kind) {
  return h("div", { class: "table-wrap" }, h("table", { class: "responsive compare-table" },
    h("caption", {}, "The compared jobs"),
    h("thead", {}, h("tr", {}, ["Job", "Recipe", "Quality, % of original", "Memory", "Decode speedup"]
      .map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, entries.map(({ job, report }) => h("tr", {},
      h("th", { scope: "row", "data-label": "Job" }, h("a", { href: `/dashboard/jobs/${job.id}` }, job.id.slice(0, 8))),
      h("td", { "data-label": "Recipe" }, recipeShort(job.recipe)),
      h("td", { "data-label": "Quality" }, formatPct(qualityPct(report, kind))),
      h("td", { "data-label": "Memory" }, memoryText(memoryOf(report.candidate))),
      h("td", { "data-label": "Speedup" }, speedupOf(report) ? `${speedupOf(report).toFixed(2)}×` : "not measured"))))));
}

function draw(target, entries, kind) {
  if (!entries.length) {
    target.replaceChildren(h("p", {}, "Pick at least one evaluated job."));
    return;
  }
  const base = memoryOf(entries[0].report.baseline);
  const memory = pointsFor(entries, kind, (r) => memoryOf(r.candidate)?.value ?? null,
    base ? { x: base.value } : null);
  const speed = pointsFor(entries, kind, speedupOf, { x: 1 });
  const unmeasured = entries.filter(({ report }) => speedupOf(report) === null).length;
  target.replaceChildren(
    chartFigure(scatterChart({ title: "Quality against memory", xLabel: base?.label ?? "Memory",
      yLabel: qualityLabel(kind), points: memory }), null, "chart-memory"),
    chartFigure(scatterChart({ title: "Quality against speedup", xLabel: "Decode speedup over the original (×)",
      yLabel: qualityLabel(kind), points: speed }),
    unmeasured ? `${unmeasured} job(s) without a speed measurement are not drawn here.` : null, "chart-speed"),
    resultsTable(entries, kind));
}

export async function initCompare(root) {
  const form = root.querySelector("#compare-form");
  const picker = root.querySelector("#compare-jobs");
  const charts = root.querySelector("#compare-charts");
  const jobs = (await listAllJobs({ status: "succeeded" })).filter((j) => j.status === "succeeded");
  const models = new Map(jobs.map((j) => [refOf(j), j.model]));
  form.elements.model.replaceChildren(...[...models].map(([ref, model]) =>
    h("option", { value: ref }, modelLabel(model))));
  const wanted = new URLSearchParams(location.search).get("model");
  if (wanted && models.has(wanted)) form.elements.model.value = wanted;

  async function refresh() {
    const chosen = [...picker.querySelectorAll("input:checked")].map((box) => box.value);
    const entries = [];
    for (const job of jobs.filter((j) => chosen.includes(j.id))) {
      const report = await reportOf(job);
      if (report) entries.push({ job, report });
    }
    draw(charts, entries, form.elements.quality.value);
    root.dataset.ready = "true";
  }

  function listJobsOfModel() {
    const ofModel = jobs.filter((j) => refOf(j) === form.elements.model.value);
    const none = ofModel.length ? [] : [h("p", {}, "No finished jobs on this model.")];
    picker.replaceChildren(h("legend", {}, "Jobs"), ...none,
      ...ofModel.map((job, i) => h("div", { class: "field checkbox" },
        h("input", { type: "checkbox", id: `pick-${job.id}`, value: job.id, checked: i < 8 }),
        h("label", { for: `pick-${job.id}` }, `${job.id.slice(0, 8)} · ${recipeShort(job.recipe)}`))));
  }

  form.elements.model.addEventListener("change", () => {
    listJobsOfModel();
    refresh();
  });
  form.elements.quality.addEventListener("change", refresh);
  picker.addEventListener("change", refresh);
  listJobsOfModel();
  await refresh();
}
