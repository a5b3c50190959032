// The new-job page: model source, stages stacked in order (from GET /v1/methods), calibration,
// evaluation and gate; submits POST /v1/jobs and shows 422 errors beside the fields.

import { ApiError, listMethods, postJSON, uploadModel } from "./api.js";
import { clearErrors, renderObject, showErrors } from "./form.js";
import { formatBytes, h, progressBar } from "./format.js";

const SOURCE_FIELDS = {
  local: [["path", "Folder", "A model folder with config.json, under an allowed root."]],
  hub: [["id", "Hub id", "org/name on the Hugging Face Hub."], ["revision", "Revision", "Branch, tag or commit."]],
  upload: [["upload_id", "Upload id", "The id POST /v1/models returned."]],
};

function modelSource(container, suggestions, defaultPath) {
  const kind = h("select", { id: "f-model-kind" },
    ["local", "hub", "upload"].map((k) => h("option", { value: k }, k)));
  const datalist = h("datalist", { id: "model-suggestions" }, suggestions.map((p) => h("option", { value: p })));
  const inputs = {};
  const groups = Object.fromEntries(Object.entries(SOURCE_FIELDS).map(([k, fields]) => [k,
    h("div", { class: "source-fields", "data-kind": k }, fields.map(([name, label, hint]) => {
      const id = `f-model-${name}`;
      inputs[name] = h("input", { id, type: "text", spellcheck: "false", "aria-describedby": `${id}-hint`,
        list: name === "path" ? "model-suggestions" : null,
        value: name === "path" ? defaultPath : name === "revision" ? "main" : "" });
      return h("div", { class: "field", "data-loc": `model.${name}` },
        h("label", { for: id }, label), inputs[name], h("p", { class: "hint", id: `${id}-hint` }, hint),
        h("p", { class: "field-error", id: `${id}-error`, hidden: true }));
    }))]));
  groups.upload.append(uploadControl(inputs.upload_id));
  const sync = () => {
    for (const [k, group] of Object.entries(groups)) group.hidden = k !== kind.value;
  };
  kind.addEventListener("change", sync);
  container.append(h("div", { class: "field", "data-loc": "model.kind" }, h("label", { for: kind.id }, "Source"), kind,
    h("p", { class: "field-error", id: "f-model-kind-error", hidden: true })), datalist, ...Object.values(groups));
  sync();
  container.dataset.loc = "model";
  return () => {
    const out = { kind: kind.value };
    for (const [name] of SOURCE_FIELDS[kind.value]) out[name] = inputs[name].value.trim();
    return out;
  };
}

/** The model families GET /v1/methods lists, under the model source, with what each refuses and why. */
function familyList(container, families) {
  const refusals = (f) => [
    ...f.refused.map((r) => `refuses ${r.applies_to}: ${r.reason}`),
    ...f.refused_checkpoints.map((r) => `refuses ${r.applies_to} checkpoints: ${r.reason}`),
    ...(f.dequantized_checkpoints || []).map((q) => `dequantizes ${q} checkpoints first`),
  ];
  container.replaceChildren(
    h("p", { class: "hint", id: "families-title" }, "Supported families (", h("code", {}, "model_type"),
      " in config.json):"),
    h("ul", { class: "families", "aria-labelledby": "families-title" }, families.map((f) =>
      h("li", { "data-family": f.model_type }, h("code", {}, f.model_type),
        refusals(f).map((text) => h("span", { class: "hint" }, text))))));
}

/** A tar of a model folder (config.json, safetensors, tokenizer) sent to POST /v1/models; fills the id. */
function uploadControl(idInput) {
  const file = h("input", { id: "f-model-upload-file", type: "file", accept: ".tar,application/x-tar",
    "aria-describedby": "f-model-upload-file-hint" });
  const bar = progressBar("Upload progress");
  bar.node.hidden = true;
  const note = h("p", { class: "hint", role: "status", id: "upload-status" });
  const button = h("button", { type: "button", class: "secondary", id: "upload-button" }, "Upload");
  button.addEventListener("click", async () => {
    if (!file.files.length) {
      note.textContent = "Choose a .tar file first.";
      return;
    }
    button.disabled = true;
    bar.node.hidden = false;
    try {
      const done = await uploadModel(file.files[0], (f) => bar.update(f, "uploading"));
      idInput.value = done.id;
      bar.update(1, "uploaded");
      note.textContent = `Uploaded ${formatBytes(done.bytes)}, sha256 ${done.sha256}.`;
    } catch (error) {
      note.textContent = `Upload refused: ${error.message}`;
    } finally {
      button.disabled = false;
    }
  });
  return h("div", { class: "field" }, h("label", { for: file.id }, "Model folder as a .tar"),
    h("div", { class: "inline" }, file, button), bar.node,
    h("p", { class: "hint", id: "f-model-upload-file-hint" }, "tar -cf model.tar -C MODEL_DIR . — then submit the job."),
    note);
}

/** The ordered list of stages: add, move up/down, remove; each rendered from its method's schema. */
class StageEditor {
  constructor(list, methods) {
    this.list = list;
    this.methods = new Map(methods.map((m) => [m.name, m]));
    this.stages = []; // [{method, values, read}]
  }

  add(name) {
    this.snapshot();
    this.stages.push({ method: name, values: { ...this.methods.get(name).defaults } });
    this.render(this.stages.length - 1, "stage-method");
  }

  snapshot() {
    for (const stage of this.stages) if (stage.read) stage.values = stage.read();
  }

  move(index, delta, focusClass) {
    this.snapshot();
    const [stage] = this.stages.splice(index, 1);
    const target = Math.min(this.stages.length, Math.max(0, index + delta));
    if (delta !== 0) this.stages.splice(target, 0, stage);
    this.render(delta === 0 ? Math.min(index, this.stages.length - 1) : target, focusClass);
  }

  render(focusIndex = -1, focusClass = "") {
    this.list.replaceChildren(...this.stages.map((stage, i) => this.stageItem(stage, i)));
    // Keep the keyboard user's place: the same control in the moved stage, or "Add stage" when none is left.
    const item = this.list.children[focusIndex];
    const other = { "move-up": "move-down", "move-down": "move-up" }[focusClass] ?? focusClass;
    const focus = item?.querySelector(`.${focusClass}:not([disabled])`) ?? item?.querySelector(`.${other}:not([disabled])`)
      ?? item?.querySelector("input, select, button");
    (focus ?? this.fallbackFocus)?.focus();
  }

  stageItem(stage, i) {
    const method = this.methods.get(stage.method);
    const n = i + 1;
    const box = h("fieldset", { class: "stage", "data-loc": `recipe.stages.${i}` },
      h("legend", {}, h("span", { class: "stage-method", tabindex: "-1" }, `Stage ${n}: ${stage.method.replaceAll("_", " ")}`),
        " ", h("span", { class: "family" }, method.family)));
    stage.read = renderObject(box, method.schema, method.schema, ["recipe", "stages", i], stage.values);
    const last = i === this.stages.length - 1;
    const actions = h("div", { class: "inline stage-actions" },
      h("button", { type: "button", class: "secondary move-up", disabled: i === 0, "aria-label": `Move stage ${n} up`,
        onclick: () => this.move(i, -1, "move-up") }, "↑ Up"),
      h("button", { type: "button", class: "secondary move-down", disabled: last, "aria-label": `Move stage ${n} down`,
        onclick: () => this.move(i, 1, "move-down") }, "↓ Down"),
      h("button", { type: "button", class: "secondary remove", "aria-label": `Remove stage ${n}`,
        onclick: () => this.move(i, 0, "remove") }, "Remove"));
    box.append(actions);
    return h("li", {}, box);
  }

  read() {
    return this.stages.map((stage) => stage.read());
  }
}

async function submit(form, summary, status, body, isTag) {
  clearErrors(form, summary);
  status.textContent = "Submitting…";
  try {
    const job = await postJSON("/v1/jobs", body);
    status.textContent = "Submitted.";
    location.assign(`/dashboard/jobs/${encodeURIComponent(job.id)}`);
  } catch (error) {
    status.textContent = "";
    if (error instanceof ApiError && error.status !== 401) showErrors(form, summary, error.detail, isTag);
    else throw error;
  }
}

export async function initNewJob(root) {
  const form = root.querySelector("#new-job");
  const summary = root.querySelector("#form-errors");
  const status = root.querySelector("#submit-status");
  const catalog = await listMethods();
  const isTag = (part) => catalog.methods.some((m) => m.name === part);
  const readModel = modelSource(root.querySelector("#model-source"), JSON.parse(root.dataset.models || "[]"),
    root.dataset.defaultModel || "");
  familyList(root.querySelector("#families"), catalog.families);
  const editor = new StageEditor(root.querySelector("#stages"), catalog.methods);
  editor.fallbackFocus = root.querySelector("#add-stage");
  const picker = root.querySelector("#add-method");
  picker.replaceChildren(...catalog.methods.map((m) =>
    h("option", { value: m.name }, `${m.name.replaceAll("_", " ")} (${m.family})`)));
  root.querySelector("#add-stage").addEventListener("click", () => editor.add(picker.value));

  const recipeSchema = catalog.recipe_schema;
  const calibrationBox = root.querySelector("#calibration");
  calibrationBox.dataset.loc = "recipe.calibration";
  const readCalibration = renderObject(calibrationBox, recipeSchema.properties.calibration, recipeSchema,
    ["recipe", "calibration"]);
  const evaluationBox = root.querySelector("#evaluation");
  evaluationBox.dataset.loc = "evaluation";
  const readEvaluation = renderObject(evaluationBox, catalog.evaluation_schema, catalog.evaluation_schema, ["evaluation"]);

  const button = root.querySelector("#submit-job");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    const body = { model: readModel(), recipe: { version: 1, stages: editor.read(), calibration: readCalibration() },
      evaluation: readEvaluation() };
    try {
      await submit(form, summary, status, body, isTag);
    } finally {
      button.disabled = false;
    }
  });
  form.dataset.ready = "true";
}
