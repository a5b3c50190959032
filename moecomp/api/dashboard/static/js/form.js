// Inputs built from a JSON schema (pydantic's), and 422 errors placed beside the matching inputs.
// A field's "loc" is its path in the request body joined with dots, e.g. "recipe.stages.0.keep".

import { h } from "./format.js";

export const locKey = (path) => path.join(".");
const fieldId = (path) => `f-${path.join("-").replace(/[^A-Za-z0-9_-]/g, "_")}`;

function resolve(schema, root) {
  if (schema?.$ref) return resolve(root.$defs?.[schema.$ref.split("/").pop()] ?? {}, root);
  if (schema?.allOf?.length === 1) return { ...resolve(schema.allOf[0], root), ...schema, allOf: undefined };
  return schema ?? {};
}

/** {schema, nullable}: the non-null branch of an Optional (anyOf [X, null]). */
function unwrapOptional(schema, root) {
  const resolved = resolve(schema, root);
  const branches = resolved.anyOf ?? [];
  const real = branches.filter((b) => b.type !== "null");
  if (branches.length && real.length === 1) {
    return { schema: { ...resolve(real[0], root), default: resolved.default, description: resolved.description,
      title: resolved.title }, nullable: real.length < branches.length };
  }
  return { schema: resolved, nullable: false };
}

// Field names that read badly when merely humanized.
const LABELS = {
  seq_len: "Sequence length", gate: "Quality gate", speed_settings: "Speed settings", fidelity_topk: "Fidelity top-k",
  min_top1_agreement: "Min top-1 agreement", min_accuracy_pct: "Min accuracy (% of original)",
  max_perplexity_increase_pct: "Max perplexity increase (%)", dtype: "Data type",
};
const humanize = (name) => LABELS[name] ?? name.replaceAll("_", " ").replace(/^./, (c) => c.toUpperCase());

function fieldShell(path, label, description, control, extraClass = "") {
  const id = control.id;
  const hint = description ? h("p", { class: "hint", id: `${id}-hint` }, description) : null;
  const error = h("p", { class: "field-error", id: `${id}-error`, hidden: true });
  control.setAttribute("aria-describedby", [hint?.id].filter(Boolean).join(" ") || "");
  if (!hint) control.removeAttribute("aria-describedby");
  const labelNode = h("label", { for: id }, label);
  const parts = extraClass === "checkbox" ? [control, labelNode, hint, error] : [labelNode, control, hint, error];
  return h("div", { class: `field ${extraClass}`.trim(), "data-loc": locKey(path) }, parts);
}

function numberInput(id, schema, value) {
  const attrs = { id, type: "number", inputmode: schema.type === "integer" ? "numeric" : "decimal",
    step: schema.type === "integer" ? "1" : "any" };
  for (const [bound, attr] of [["minimum", "min"], ["maximum", "max"]]) {
    if (schema[bound] !== undefined) attrs[attr] = schema[bound];
  }
  return h("input", { ...attrs, value: value ?? "" });
}

/**
 * Renders the properties of an object schema into `container`; returns read() -> the object's value,
 * leaving out fields left empty so the server's defaults apply.
 */
export function renderObject(container, objectSchema, root, path, values = {}) {
  const schema = resolve(objectSchema, root);
  const readers = [];
  for (const [name, raw] of Object.entries(schema.properties ?? {})) {
    const { schema: prop, nullable } = unwrapOptional(raw, root);
    const fieldPath = [...path, name];
    const value = values[name] !== undefined ? values[name] : prop.default;
    if (prop.const !== undefined) {
      readers.push(() => [name, prop.const]);
      continue;
    }
    if (prop.type === "object" || prop.properties) {
      const box = h("fieldset", { class: "nested", "data-loc": locKey(fieldPath) },
        h("legend", {}, humanize(name)));
      const read = renderObject(box, prop, root, fieldPath, value ?? {});
      container.append(box);
      readers.push(() => [name, read()]);
      continue;
    }
    const { node, read } = scalarField(fieldPath, name, prop, nullable, value);
    container.append(node);
    readers.push(() => [name, read()]);
  }
  return () => Object.fromEntries(readers.map((r) => r()).filter(([, v]) => v !== undefined));
}

function scalarField(path, name, prop, nullable, value) {
  const id = fieldId(path);
  const label = humanize(name);
  const empty = () => (nullable ? null : undefined);
  if (prop.enum) {
    const select = h("select", { id }, prop.enum.map((option) =>
      h("option", { value: option, selected: option === value }, String(option))));
    return { node: fieldShell(path, label, prop.description, select), read: () => select.value };
  }
  if (prop.type === "boolean") {
    const box = h("input", { id, type: "checkbox", checked: Boolean(value) });
    return { node: fieldShell(path, label, prop.description, box, "checkbox"), read: () => box.checked };
  }
  if (prop.type === "integer" || prop.type === "number") {
    const input = numberInput(id, prop, value);
    return { node: fieldShell(path, label, prop.description, input),
      read: () => (input.value.trim() === "" ? empty() : Number(input.value)) };
  }
  if (prop.type === "array") {
    const itemType = prop.items?.type;
    const input = h("input", { id, type: "text", value: Array.isArray(value) ? value.join(", ") : "",
      placeholder: "server default" });
    const hint = [prop.description, "Comma-separated."].filter(Boolean).join(" ");
    const read = () => {
      const parts = input.value.split(",").map((p) => p.trim()).filter(Boolean);
      if (!parts.length) return empty();
      return itemType === "integer" || itemType === "number" ? parts.map(Number) : parts;
    };
    return { node: fieldShell(path, label, hint, input), read };
  }
  const input = h("input", { id, type: "text", value: value ?? "", spellcheck: "false" });
  return { node: fieldShell(path, label, prop.description, input),
    read: () => (input.value.trim() === "" ? empty() : input.value.trim()) };
}

/** Clears every error shown by showErrors inside `form`. */
export function clearErrors(form, summary) {
  for (const error of form.querySelectorAll(".field-error")) {
    error.hidden = true;
    error.textContent = "";
  }
  for (const input of form.querySelectorAll("[aria-invalid]")) {
    input.removeAttribute("aria-invalid");
    const ids = (input.getAttribute("aria-describedby") ?? "").split(" ").filter((x) => x && !x.endsWith("-error"));
    if (ids.length) input.setAttribute("aria-describedby", ids.join(" "));
    else input.removeAttribute("aria-describedby");
  }
  for (const box of form.querySelectorAll(".has-error")) box.classList.remove("has-error");
  summary.hidden = true;
  summary.replaceChildren();
}

/** Candidate keys for a pydantic loc, most specific first; drops "body" and union tags (e.g. "expert_drop"). */
export function locCandidates(loc, isTag = () => false) {
  const path = loc[0] === "body" ? loc.slice(1) : [...loc];
  const cleaned = path.filter((part, i) => !(i > 0 && typeof path[i - 1] === "number" && isTag(part)));
  const out = [];
  for (let n = cleaned.length; n > 0; n -= 1) out.push(locKey(cleaned.slice(0, n)));
  return out;
}

function attachError(box, message) {
  box.classList.add("has-error");
  const input = box.querySelector(":scope > input, :scope > select");
  const error = box.querySelector(":scope > .field-error") ?? box.appendChild(h("p", { class: "field-error" }));
  if (!error.id && input) error.id = `${input.id}-error`;
  error.textContent = error.textContent ? `${error.textContent} ${message}` : message;
  error.hidden = false;
  if (input) {
    input.setAttribute("aria-invalid", "true");
    const ids = new Set((input.getAttribute("aria-describedby") ?? "").split(" ").filter(Boolean));
    ids.add(error.id);
    input.setAttribute("aria-describedby", [...ids].join(" "));
  }
  return input ?? box;
}

/** "Stage 1: expert drop › Keep" for an input: its group's legend and its own label. */
function placeName(target) {
  if (!target) return "";
  const label = target.labels?.[0]?.textContent ?? target.querySelector?.(":scope > legend")?.textContent ?? "";
  const stage = target.closest("fieldset.stage")?.querySelector("legend .stage-method")?.textContent;
  const group = stage ?? target.closest("fieldset")?.querySelector(":scope > legend")?.textContent;
  return [group, label].filter(Boolean).join(" › ");
}

/** Puts each 422 item beside its input (or the nearest enclosing group) and lists them all in `summary`. */
export function showErrors(form, summary, detail, isTag) {
  const items = [];
  for (const item of Array.isArray(detail) ? detail : [{ loc: [], msg: String(detail) }]) {
    const candidates = locCandidates(item.loc ?? [], isTag);
    const box = candidates.map((key) => form.querySelector(`[data-loc="${CSS.escape(key)}"]`)).find(Boolean);
    const target = box ? attachError(box, item.msg) : null;
    const where = placeName(target) || (item.loc ?? []).filter((p) => p !== "body").join(" › ");
    items.push(h("li", {}, target?.id ? h("a", { href: `#${target.id}` }, where || "form") : where || "request",
      `: ${item.msg}`));
  }
  summary.replaceChildren(h("p", {}, `The server refused the job (${items.length} problem${items.length === 1 ? "" : "s"}):`),
    h("ul", {}, items));
  summary.hidden = false;
  summary.focus();
}
