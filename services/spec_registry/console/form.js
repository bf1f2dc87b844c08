// The deployment form of seeds/002 (Create and Edit), the spec it stands for, its YAML, and the
// API's validation errors placed beside the field they name.
import { h } from "./dom.js";

const ENVIRONMENTS = [["development", "Development"], ["staging", "Staging"], ["production", "Production"]];
const GPU_TYPES = [["", "None"], ["T4", "NVIDIA T4"], ["V100", "NVIDIA V100"], ["A100", "NVIDIA A100"]];
const ALGORITHMS = [["round-robin", "Round Robin"], ["least-connections", "Least Connections"], ["ip-hash", "IP Hash"]];
const STRATEGIES = [["rolling", "Rolling Update"], ["blue-green", "Blue-Green"], ["canary", "Canary"]];
const PROBES = ["startup", "readiness", "liveness"];
const TARGETS = [["cpu", "Target CPU Utilization (%)", "CPU threshold for scaling. Example: 70, 80"],
  ["memory", "Target Memory Utilization (%)", "Memory threshold for scaling. Example: 80, 90"],
  ["gpu", "Target GPU Utilization (%)", "GPU threshold for scaling"]];

// Fields part of the revision's template: changing them replaces replicas (libs/revision.py).
export function restarts(path) {
  const [top, second] = path.split(".");
  if (top === "resources") return !["replicas", "autoscaling"].includes(second);
  return ["image", "containerRegistry", "command", "env", "model", "integrations", "restartedAt"].includes(top);
}
const LOCKED = { name: "cannot edit", "model.id": "use Update Model instead", "model.version": "use Update Model instead" };

function get(object, path) {
  return path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), object);
}
function set(object, path, value) {
  const keys = path.split(".");
  let o = object;
  for (const k of keys.slice(0, -1)) { if (typeof o[k] !== "object" || o[k] === null) o[k] = {}; o = o[k]; }
  if (value === undefined) delete o[keys.at(-1)]; else o[keys.at(-1)] = value;
}
function prune(object, path) { // drop a mapping the form emptied
  const value = get(object, path);
  if (value && typeof value === "object" && !Array.isArray(value) && !Object.keys(value).length) set(object, path, undefined);
}

let ids = 0;
// One labelled field with its helper text and a slot for the API's error about it.
function field(path, label, help, control, { required = false, mode } = {}) {
  const id = `f${++ids}`;
  control.id = id;
  control.name = path;
  const describedBy = `${id}-help ${id}-error`;
  control.setAttribute("aria-describedby", describedBy);
  const marks = [];
  if (mode === "edit" && LOCKED[path]) {
    control.disabled = true;
    marks.push(h("span", { class: "tag locked", title: "locked" }, `locked: ${LOCKED[path]}`));
  } else if (mode === "edit" && restarts(path)) {
    marks.push(h("span", { class: "tag restart" }, "⚠ requires restart (replaces replicas)"));
  }
  const isBox = control.type === "checkbox";
  const labelNode = h("label", { for: id }, label, required ? h("span", { class: "req", "aria-hidden": "true" }, " *") : null);
  return h("div", { class: `field${isBox ? " check" : ""}`, dataset: { field: path } },
    isBox ? [control, labelNode] : [labelNode, control], marks,
    h("p", { class: "help", id: `${id}-help` }, help),
    h("p", { class: "error", id: `${id}-error`, role: "alert", hidden: true }));
}
const input = (type, attrs = {}) => h("input", { type, ...attrs });
const select = (options) => h("select", {}, options.map(([value, text]) => h("option", { value }, text)));

// The form element; `spec` fills it (Edit), `mode` is "create" or "edit"; `secrets` the project's secret names.
export function deploymentForm(spec, mode, secrets) {
  const o = { mode };
  const form = h("form", { class: "spec-form", novalidate: true },
    h("div", { class: "summary error-summary", role: "alert", tabindex: "-1", hidden: true }),
    h("fieldset", { dataset: { section: "" } }, h("legend", {}, "Basic Information"),
      field("name", "Deployment Name", "Enter a descriptive name for the deployment. Example: resnet-prod, bert-api-v1", input("text", { autocomplete: "off" }), { required: true, ...o }),
      field("description", "Description", "Deployment purpose and details", h("textarea", { rows: 2 }), o),
      field("model.id", "Model ID", "ID of the model to deploy", input("text"), { required: true, ...o }),
      field("model.version", "Model Version", "Version of the model to deploy", input("text"), { required: true, ...o }),
      field("environment", "Environment", "Select deployment environment. Default: development", select(ENVIRONMENTS), { required: true, ...o })),
    h("fieldset", { dataset: { section: "resources" } }, h("legend", {}, "Resource Configuration"),
      field("resources.cpu", "CPU Cores", "Number of CPU cores per instance. Example: 4, 8, 16", input("number", { min: 0, step: "any" }), o),
      field("resources.memory", "Memory (GB)", "Memory allocation per instance in GB. Example: 8, 16, 32", input("number", { min: 0, step: "any" }), o),
      field("resources.gpuCount", "GPU Count", "Number of GPUs (0 or GPU Count). Default: 0", input("number", { min: 0, step: 1 }), o),
      field("resources.gpuType", "GPU Type", "Select GPU type if GPU Count > 0", select(GPU_TYPES), o),
      field("resources.replicas", "Replicas", "Instances to run; with auto-scaling, where it starts. Example: 1, 2", input("number", { min: 0, step: 1 }), { required: true, ...o })),
    h("fieldset", { dataset: { section: "resources.autoscaling" } }, h("legend", {}, "Scaling Configuration"),
      field("resources.autoscaling.enabled", "Enable Auto-Scaling", "Enable automatic scaling based on metrics", input("checkbox"), o),
      h("div", { class: "when", dataset: { when: "resources.autoscaling.enabled" } },
        field("resources.autoscaling.minReplicas", "Min Instances", "Minimum instances to maintain. Example: 1, 2", input("number", { min: 0, step: 1 }), { required: true, ...o }),
        field("resources.autoscaling.maxReplicas", "Max Instances", "Maximum instances allowed. Example: 10, 20", input("number", { min: 1, step: 1 }), { required: true, ...o }),
        TARGETS.map(([metric, label, help]) => field(`resources.autoscaling.metrics.${metric}`, label, help, input("number", { min: 1, step: "any" }), o)))),
    h("fieldset", { dataset: { section: "loadBalancer" } }, h("legend", {}, "Load Balancer"),
      field("loadBalancer.enabled", "Enable Load Balancer", "Enable load balancing across instances", input("checkbox"), o),
      h("div", { class: "when", dataset: { when: "loadBalancer.enabled" } },
        field("loadBalancer.algorithm", "Service Type", "Round Robin, Least Connections or IP Hash", select(ALGORITHMS), { required: true, ...o }),
        field("loadBalancer.healthCheckPath", "Health Check URL", "Endpoint for health checks (e.g., /health)", input("text"), o),
        field("loadBalancer.healthCheckIntervalSeconds", "Health Check Interval (seconds)", "Frequency of health checks", input("number", { min: 1, step: 1 }), o),
        field("loadBalancer.stickySessions", "Sticky Sessions", "Enable session affinity", input("checkbox"), o))),
    h("fieldset", { dataset: { section: "image" } }, h("legend", {}, "Container"),
      field("image", "Image", "The container image (a Kubernetes runtime pulls it; the local runtime runs the command). Example: python:3.11-slim", input("text"), { required: true, ...o }),
      field("command", "Command", "One argument per line, e.g. python, -m, examples.iris.server", h("textarea", { rows: 3 }), o),
      field("resources.ports", "Ports", "Comma-separated; the first receives traffic. Example: 8000", input("text", { inputmode: "numeric" }), { required: true, ...o }),
      envEditor(spec?.env || [], secrets, mode)),
    h("fieldset", { dataset: { section: "healthChecks" } }, h("legend", {}, "Health checks"),
      h("p", { class: "help" }, "Leave a probe's path empty for no probe. Startup holds the others until it passes; readiness takes a replica in and out of the load balancer; liveness restarts it."),
      PROBES.map((probe) => h("div", { class: "probe" }, h("h3", {}, probe[0].toUpperCase() + probe.slice(1)),
        field(`healthChecks.${probe}.path`, "Path", "e.g. /health", input("text"), o),
        field(`healthChecks.${probe}.port`, "Port", "One of the ports; the first when empty", input("number", { min: 1, step: 1 }), o),
        field(`healthChecks.${probe}.periodSeconds`, "Period (s)", "Seconds between probes (10)", input("number", { min: 1, step: 1 }), o),
        field(`healthChecks.${probe}.timeoutSeconds`, "Timeout (s)", "Seconds one probe may take (1)", input("number", { min: 1, step: 1 }), o),
        field(`healthChecks.${probe}.failureThreshold`, "Failure threshold", "Failures in a row that count (3)", input("number", { min: 1, step: 1 }), o)))),
    h("fieldset", { dataset: { section: "updateStrategy" } }, h("legend", {}, "Deployment Strategy"),
      field("updateStrategy.type", "Update strategy", "How new replicas replace running ones: Rolling Update (gradual, zero downtime), Blue-Green (switch all at once), Canary (a small percentage first)", select(STRATEGIES), o),
      field("updateStrategy.canaryPercent", "Canary percentage", "Share of traffic the new version takes first (1-99; default 10)", input("number", { min: 1, max: 99, step: 1 }), o)));
  fill(form, spec || { environment: "development", resources: { replicas: 1 }, loadBalancer: { enabled: true } });
  form.addEventListener("input", () => toggle(form));
  toggle(form);
  return form;
}

function envEditor(env, secrets, mode) {
  const rows = h("div", { class: "env-rows" });
  const list = h("datalist", { id: "secret-refs" }, secrets.map((name) => h("option", { value: `secret:${name}` })));
  const add = (name = "", value = "") => {
    const row = h("div", { class: "env-row" },
      h("input", { type: "text", "aria-label": "Variable name", placeholder: "NAME", value: name, class: "env-name" }),
      h("input", { type: "text", "aria-label": "Value or secret reference", placeholder: "value or secret:<name>", value, list: "secret-refs", class: "env-value" }),
      h("button", { type: "button", class: "small", "aria-label": `Remove variable ${name}`, onclick: () => row.remove() }, "Remove"));
    rows.append(row);
  };
  env.forEach((e) => add(e.name, e.value));
  const help = secrets.length
    ? `A value, or one of the project's secrets (pick from the suggestions: ${secrets.map((s) => `secret:${s}`).join(", ")}); secret values are never shown.`
    : "A value, or a secret of the project as secret:<name> (this project has no secrets yet: `berth secrets set`).";
  return h("div", { class: "field", dataset: { field: "env" } },
    h("span", { class: "label" }, "Environment variables"), mode === "edit" ? h("span", { class: "tag restart" }, "⚠ requires restart (replaces replicas)") : null,
    rows, list, h("button", { type: "button", class: "small", onclick: () => add() }, "Add variable"),
    h("p", { class: "help" }, help), h("p", { class: "error", role: "alert", hidden: true }));
}

function toggle(form) {
  for (const block of form.querySelectorAll(".when")) block.hidden = !form.elements[block.dataset.when].checked;
  const gpus = Number(form.elements["resources.gpuCount"].value || 0);
  form.elements["resources.gpuType"].closest(".field").hidden = !(gpus > 0);
  const canary = form.elements["updateStrategy.type"].value === "canary";
  form.elements["updateStrategy.canaryPercent"].closest(".field").hidden = !canary;
}

function fill(form, spec) {
  for (const control of form.querySelectorAll("[name]")) {
    const path = control.name;
    let value;
    const metric = path.match(/^resources\.autoscaling\.metrics\.(\w+)$/);
    if (metric) value = (get(spec, "resources.autoscaling.metrics") || []).find((m) => m.metric === metric[1])?.value;
    else if (path === "command") value = (spec.command || []).join("\n");
    else if (path === "resources.ports") value = (get(spec, path) || []).join(", ");
    else value = get(spec, path);
    if (control.type === "checkbox") control.checked = path === "loadBalancer.enabled" ? value !== false : Boolean(value);
    else control.value = value ?? (control.tagName === "SELECT" ? control.options[0].value : "");
  }
}

// The spec the form stands for: `base` (the current spec on Edit) with the form's fields laid over
// it, so fields the form does not show (integrations, auth, probe headers...) are kept.
export function formSpec(form, base = {}) {
  const spec = structuredClone(base);
  const value = (name) => form.elements[name];
  for (const control of form.querySelectorAll("[name]")) {
    const path = control.name;
    if (path.startsWith("resources.autoscaling.metrics.")) continue;
    let v;
    if (control.type === "checkbox") v = control.checked;
    else if (control.type === "number") v = control.value === "" ? undefined : Number(control.value);
    else v = control.value.trim() === "" ? undefined : control.value;
    if (path === "command") v = v === undefined ? undefined : control.value.split("\n").map((s) => s.trim()).filter(Boolean);
    if (path === "resources.ports") v = v === undefined ? undefined : control.value.split(/[,\s]+/).filter(Boolean).map((p) => (/^\d+$/.test(p) ? Number(p) : p));
    if (path === "resources.gpuType" && !(Number(value("resources.gpuCount").value) > 0)) v = undefined;
    if (path === "updateStrategy.canaryPercent" && value("updateStrategy.type").value !== "canary") v = undefined;
    set(spec, path, v);
  }
  if (spec.resources?.gpuCount === 0 && !base.resources?.gpuCount) delete spec.resources.gpuCount;
  // Auto-scaling: the targets are the cpu/memory/gpu metrics; other metrics of the spec are kept.
  const scaling = spec.resources?.autoscaling || {};
  const kept = (scaling.metrics || []).filter((m) => !TARGETS.some(([name]) => name === m.metric));
  const targets = TARGETS.map(([name]) => [name, value(`resources.autoscaling.metrics.${name}`).value])
    .filter(([, v]) => v !== "").map(([name, v]) => ({ metric: name, summary: "average", value: Number(v) }));
  scaling.metrics = [...targets, ...kept];
  if (!scaling.metrics.length) delete scaling.metrics;
  if (!scaling.enabled && !base.resources?.autoscaling) delete spec.resources.autoscaling;
  // Settings left at berth's defaults are not written out unless the spec had them (a short spec).
  const lb = spec.loadBalancer;
  if (lb && !base.loadBalancer?.stickySessions && lb.stickySessions === false) delete lb.stickySessions;
  if (lb && !base.loadBalancer && lb.enabled === true && Object.keys(lb).length === 2 && lb.algorithm === "round-robin") delete spec.loadBalancer;
  if (spec.updateStrategy?.type === "rolling" && !base.updateStrategy) delete spec.updateStrategy;
  if (!base.model && spec.model && !spec.model.id && !spec.model.version) delete spec.model;
  for (const probe of PROBES) {
    if (!get(spec, `healthChecks.${probe}.path`)) set(spec, `healthChecks.${probe}`, undefined);
  }
  for (const path of ["healthChecks", "model", "resources.autoscaling"]) prune(spec, path);
  const env = [...form.querySelectorAll(".env-row")].map((row) => ({
    name: row.querySelector(".env-name").value.trim(), value: row.querySelector(".env-value").value,
  })).filter((e) => e.name || e.value);
  if (env.length) spec.env = env; else delete spec.env;
  if (!spec.description) delete spec.description;
  return spec;
}

// The API's field errors beside their fields: the field named, else the nearest enclosing one the
// form has, else its section; all are listed at the top too (with links that focus the field).
export function showErrors(form, errors, detail) {
  clearErrors(form);
  const summary = form.querySelector(".error-summary");
  const items = [];
  for (const error of errors) {
    const target = placeFor(form, error.field);
    if (target) {
      const slot = target.querySelector(":scope > .error") || target.appendChild(h("p", { class: "error", role: "alert" }));
      slot.hidden = false;
      slot.textContent = slot.textContent ? `${slot.textContent}; ${error.rule}` : error.rule;
      target.classList.add("invalid");
      const control = target.querySelector("input, select, textarea");
      if (control) control.setAttribute("aria-invalid", "true");
    }
    items.push(h("li", {}, h("a", { href: "#", onclick: (e) => { e.preventDefault(); target?.querySelector("input, select, textarea")?.focus(); } }, error.field), `: ${error.rule}`));
  }
  summary.replaceChildren(h("strong", {}, detail || "The API refused the deployment:"), h("ul", {}, items));
  summary.hidden = false;
  const first = form.querySelector(".invalid input, .invalid select, .invalid textarea");
  (first || summary).focus();
}

function placeFor(form, path) {
  const fields = [...form.querySelectorAll("[data-field]")];
  const parts = path.replace(/\[(\d+)\]/g, ".$1").split(".");
  // resources.autoscaling.metrics.0 -> the first target shown, which is what the user typed there.
  for (let n = parts.length; n > 0; n--) {
    const prefix = parts.slice(0, n).join(".");
    const match = fields.find((f) => f.dataset.field === prefix && !f.closest("[hidden]"))
      || fields.find((f) => f.dataset.field.startsWith(`${prefix}.`) && !f.closest("[hidden]") && prefix.includes("."));
    if (match) return match;
    const section = form.querySelector(`fieldset[data-section="${prefix}"]`);
    if (section) return section;
  }
  return null;
}

export function clearErrors(form) {
  form.querySelector(".error-summary").hidden = true;
  for (const node of form.querySelectorAll(".invalid")) node.classList.remove("invalid");
  for (const node of form.querySelectorAll(".error")) { node.hidden = true; node.textContent = ""; }
  for (const node of form.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
}

// YAML as `berth apply` reads it: block mappings and lists, strings quoted when YAML would read them
// as something else.
export function toYaml(value, indent = "") {
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    if (value.every((v) => v === null || typeof v !== "object")) return `[${value.map((v) => (typeof v === "string" && /[:,[\]{}#]/.test(v) ? JSON.stringify(v) : scalar(v))).join(", ")}]`;
    return value.map((item) => `\n${indent}- ${toYaml(item, `${indent}  `).replace(/^\n\s*/, "")}`).join("");
  }
  if (value && typeof value === "object") {
    const keys = Object.keys(value);
    if (!keys.length) return "{}";
    return keys.map((k) => {
      const v = value[k];
      const nested = v && typeof v === "object" && !(Array.isArray(v) && v.every((x) => x === null || typeof x !== "object")) && Object.keys(v).length;
      return `\n${indent}${k}:${nested ? toYaml(v, `${indent}  `) : ` ${toYaml(v, `${indent}  `)}`}`;
    }).join("");
  }
  return scalar(value);
}

function scalar(v) {
  if (v === null || v === undefined) return "null";
  if (typeof v !== "string") return String(v);
  const plain = /^[A-Za-z_/][\w ./:@-]*$/.test(v) && !/^(true|false|yes|no|on|off|null|~)$/i.test(v) && !/: |\s$/.test(v);
  return plain ? v : JSON.stringify(v);
}

export function yamlText(spec) {
  return `${toYaml(spec).replace(/^\n/, "")}\n`;
}
