// Charts drawn as inline SVG: scatter (quality against cost), bars (similarities), heatmap (expert scores).
// Every chart is role="img" with a title and description; every mark carries a <title> tooltip.

const NS = "http://www.w3.org/2000/svg";
let chartCount = 0;

function s(tag, attrs = {}, ...children) {
  const node = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function frame(width, height, title, description) {
  chartCount += 1;
  const id = `chart-${chartCount}`;
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img",
    "aria-labelledby": `${id}-t ${id}-d`, preserveAspectRatio: "xMidYMid meet" },
  s("title", { id: `${id}-t` }, title), s("desc", { id: `${id}-d` }, description));
  // Scales down on a phone, but never up past 1.4x: the labels keep a readable, similar size.
  svg.style.maxWidth = `${Math.round(width * 1.4)}px`;
  return svg;
}

/** <figure> with the chart's title as a visible caption (and an optional note under the chart). */
export function chartFigure(svg, note = null, id = null) {
  const figure = document.createElement("figure");
  figure.className = "chart-box";
  if (id) figure.id = id;
  const caption = document.createElement("figcaption");
  caption.textContent = svg.querySelector("title")?.textContent ?? "";
  figure.append(caption, svg);
  if (note) figure.append(Object.assign(document.createElement("p"), { className: "chart-note", textContent: note }));
  return figure;
}

/** About five round tick values covering [lo, hi]. */
export function ticks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((m) => m >= raw) ?? raw;
  const out = [];
  const first = Math.ceil(lo / step);
  // Counting in steps (not adding floats) so a step below the values' precision cannot loop forever.
  for (let i = 0; i <= count * 3 && (first + i) * step <= hi + step * 1e-9; i += 1) {
    out.push(Number(((first + i) * step).toPrecision(12)));
  }
  return out;
}

function extent(values, pad = 0.08) {
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  // Values equal up to rounding (e.g. 100 and 99.99999999999999 %) get a readable range around them.
  if (hi - lo <= 1e-9 * Math.max(Math.abs(lo), Math.abs(hi), 1)) {
    lo -= Math.abs(lo) * 0.1 || 1;
    hi += Math.abs(hi) * 0.1 || 1;
  }
  const margin = (hi - lo) * pad;
  return [lo - margin, hi + margin];
}

const fmt = (v) => (Math.abs(v) >= 100 ? v.toFixed(0) : Number(v.toPrecision(3)).toString());

/** Tick labels with as many decimals as the tick step needs, so neighbouring ticks never read the same. */
function tickFormat(values) {
  const step = values.length > 1 ? Math.abs(values[1] - values[0]) : 1;
  const decimals = Math.min(10, Math.max(0, -Math.floor(Math.log10(step || 1))));
  return (v) => v.toFixed(decimals);
}

/**
 * points: [{x, y, label, reference}] — the reference (the original model) is drawn as a diamond.
 * Returns an <svg>; a chart with no points says so instead of drawing empty axes.
 */
export function scatterChart({ title, xLabel, yLabel, points, xFormat = fmt, yFormat = fmt }) {
  // xFormat / yFormat label the points; the axes' ticks are labelled at their own precision.
  const W = 560, H = 340, L = 64, R = 20, T = 20, B = 56;
  const usable = points.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
  const svg = frame(W, H, title, `${yLabel} against ${xLabel} for ${usable.length} models.`);
  if (!usable.length) {
    svg.append(s("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "chart-empty" }, "No data"));
    return svg;
  }
  const [x0, x1] = extent(usable.map((p) => p.x));
  const [y0, y1] = extent(usable.map((p) => p.y));
  const px = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const py = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  const xTicks = ticks(x0, x1), yTicks = ticks(y0, y1);
  const xTick = tickFormat(xTicks), yTick = tickFormat(yTicks);
  const axes = s("g", { class: "axes" },
    s("line", { x1: L, y1: H - B, x2: W - R, y2: H - B }), s("line", { x1: L, y1: T, x2: L, y2: H - B }),
    xTicks.map((v) => s("g", { class: "tick" },
      s("line", { x1: px(v), x2: px(v), y1: T, y2: H - B, class: "grid" }),
      s("text", { x: px(v), y: H - B + 18, "text-anchor": "middle" }, xTick(v)))),
    yTicks.map((v) => s("g", { class: "tick" },
      s("line", { x1: L, x2: W - R, y1: py(v), y2: py(v), class: "grid" }),
      s("text", { x: L - 8, y: py(v) + 4, "text-anchor": "end" }, yTick(v)))),
    s("text", { x: (L + W - R) / 2, y: H - 12, "text-anchor": "middle", class: "axis-label" }, xLabel),
    s("text", { x: 16, y: (T + H - B) / 2, "text-anchor": "middle", class: "axis-label",
      transform: `rotate(-90 16 ${(T + H - B) / 2})` }, yLabel));
  const marks = usable.map((p, i) => {
    const cx = px(p.x), cy = py(p.y);
    const shape = p.reference
      ? s("path", { d: `M${cx} ${cy - 8}L${cx + 8} ${cy}L${cx} ${cy + 8}L${cx - 8} ${cy}Z`, class: "mark reference" })
      : s("circle", { cx, cy, r: 6, class: `mark series-${(p.series ?? i) % 6}` });
    const anchor = cx > W * 0.7 ? "end" : "start";
    const dx = anchor === "end" ? -10 : 10;
    return s("g", { class: "point", "data-label": p.label },
      s("title", {}, `${p.label}: ${yLabel} ${yFormat(p.y)}, ${xLabel} ${xFormat(p.x)}`), shape,
      s("text", { x: cx + dx, y: cy - 8, "text-anchor": anchor, class: "point-label" }, p.label));
  });
  svg.append(axes, s("g", { class: "marks" }, marks));
  return svg;
}

/** items: [{label, value, marked}] as vertical bars; marked bars (e.g. dropped) are hatched and labelled. */
export function barChart({ title, items, valueLabel, markLabel = "dropped" }) {
  const W = Math.max(480, 80 + items.length * 34), H = 300, L = 64, R = 12, T = 24, B = 52;
  const svg = frame(W, H, title,
    `${items.length} bars of ${valueLabel}; ${items.filter((i) => i.marked).length} marked ${markLabel}.`);
  if (!items.length) {
    svg.append(s("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "chart-empty" }, "No data"));
    return svg;
  }
  const values = items.map((i) => i.value);
  const lo = Math.min(0, ...values);
  const hi = Math.max(...values) > lo ? Math.max(...values) : lo + 1;
  const py = (v) => H - B - ((v - lo) / (hi - lo)) * (H - T - B);
  const slot = (W - L - R) / items.length;
  const patternId = `hatch-${chartCount}`;
  svg.append(s("defs", {}, s("pattern", { id: patternId, width: 6, height: 6, patternUnits: "userSpaceOnUse",
    patternTransform: "rotate(45)" }, s("rect", { width: 6, height: 6, class: "hatch-bg" }),
  s("line", { x1: 0, y1: 0, x2: 0, y2: 6, class: "hatch-line" }))));
  svg.append(s("g", { class: "axes" },
    s("line", { x1: L, y1: H - B, x2: W - R, y2: H - B }), s("line", { x1: L, y1: T, x2: L, y2: H - B }),
    ticks(lo, hi, 4).map((v, _, all) => s("g", { class: "tick" },
      s("line", { x1: L, x2: W - R, y1: py(v), y2: py(v), class: "grid" }),
      s("text", { x: L - 6, y: py(v) + 4, "text-anchor": "end" }, tickFormat(all)(v)))),
    s("text", { x: 14, y: (T + H - B) / 2, "text-anchor": "middle", class: "axis-label",
      transform: `rotate(-90 14 ${(T + H - B) / 2})` }, valueLabel)));
  const bars = items.map((item, i) => {
    const x = L + i * slot + slot * 0.15, w = slot * 0.7;
    const y = Math.min(py(item.value), py(0)), height = Math.max(1, Math.abs(py(item.value) - py(0)));
    return s("g", { class: `bar-item${item.marked ? " marked" : ""}`, "data-label": item.label },
      s("title", {}, `${item.label}: ${fmt(item.value)}${item.marked ? ` (${markLabel})` : ""}`),
      s("rect", { x, y, width: w, height, class: item.marked ? "bar-marked" : "bar-plain",
        fill: item.marked ? `url(#${patternId})` : null }),
      item.marked ? s("text", { x: x + w / 2, y: y - 4, "text-anchor": "middle", class: "bar-flag" }, "✗") : null,
      s("text", { x: x + w / 2, y: H - B + 16, "text-anchor": "middle" }, item.label));
  });
  svg.append(s("g", { class: "marks" }, bars),
    s("text", { x: W - R, y: H - 10, "text-anchor": "end", class: "legend" }, `✗ hatched = ${markLabel}`));
  return svg;
}

/** A light-to-dark blue ramp; lightness alone carries the value, so it survives greyscale. */
function ramp(t) {
  const k = Math.min(1, Math.max(0, t));
  return `hsl(212 70% ${92 - k * 62}%)`;
}

/**
 * rows: [{label, values: [per column], dropped: Set<column index>}]; dropped cells are crossed out.
 */
export function heatmap({ title, rows, columnLabel = "expert", rowLabel = "layer" }) {
  const cols = Math.max(1, ...rows.map((r) => r.values.length));
  const cell = 30, L = 70, T = 36, B = 40;
  const W = L + cols * cell + 90, H = T + rows.length * cell + B;
  const svg = frame(W, H, title, `${rows.length} ${rowLabel}s by ${cols} ${columnLabel}s; crossed cells are dropped.`);
  const all = rows.flatMap((r) => r.values).filter(Number.isFinite);
  if (!all.length) {
    svg.append(s("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "chart-empty" }, "No data"));
    return svg;
  }
  const lo = Math.min(...all), hi = Math.max(...all);
  const norm = (v) => (hi > lo ? (v - lo) / (hi - lo) : 0.5);
  const header = Array.from({ length: cols }, (_, c) =>
    s("text", { x: L + c * cell + cell / 2, y: T - 8, "text-anchor": "middle" }, String(c)));
  const body = rows.map((row, r) => s("g", { class: `heat-row${row.note ? " removed" : ""}`, "data-row": row.label },
    s("text", { x: L - 8, y: T + r * cell + cell / 2 + 4, "text-anchor": "end" }, row.label),
    row.note ? s("text", { x: L + 6, y: T + r * cell + cell / 2 + 4, class: "heat-note" }, `— ${row.note} —`) : null,
    row.values.map((v, c) => {
      const x = L + c * cell, y = T + r * cell, dropped = row.dropped?.has(c);
      return s("g", { class: `heat-cell${dropped ? " dropped" : ""}` },
        s("title", {}, `${rowLabel} ${row.label}, ${columnLabel} ${c}: ${fmt(v)}${dropped ? " (dropped)" : ""}`),
        s("rect", { x, y, width: cell - 2, height: cell - 2, fill: ramp(norm(v)) }),
        dropped ? s("path", { d: `M${x + 6} ${y + 6}L${x + cell - 8} ${y + cell - 8}M${x + cell - 8} ${y + 6}L${x + 6} ${y + cell - 8}`,
          class: "cross" }) : null);
    })));
  const legendX = L + cols * cell + 16, steps = 5;
  const legend = s("g", { class: "legend" },
    Array.from({ length: steps }, (_, i) => s("rect", { x: legendX, y: T + i * 20, width: 16, height: 18,
      fill: ramp(1 - i / (steps - 1)) })),
    s("text", { x: legendX + 20, y: T + 12 }, fmt(hi)),
    s("text", { x: legendX + 20, y: T + (steps - 1) * 20 + 12 }, fmt(lo)),
    s("text", { x: L, y: H - 12 }, `✗ = dropped ${columnLabel}; columns: ${columnLabel} index`));
  svg.append(s("g", { class: "heat-head" }, header), s("g", { class: "marks" }, body), legend);
  return svg;
}
