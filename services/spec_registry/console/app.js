// The berth console: a page per hash route, each talking only to the public REST API.
import { api, all, live, optional, session, ApiError } from "./api.js";
import { h, when, phaseBadge, notify, confirmDialog } from "./dom.js";
import { deploymentForm, formSpec, showErrors, clearErrors, yamlText } from "./form.js";
import { lineChart, format } from "./charts.js";

const root = document.getElementById("main");
// The current page's view: a fresh element at each navigation. Each page takes it as its own `main` when
// it starts, so a page still loading when the user moves on (a slow metrics read, a list reload) writes
// into its own detached view, never over the next page.
let currentView = root;
let cleanup = () => {};

const ROUTES = [
  [/^#\/login$/, loginPage],
  [/^#\/deployments$/, listPage],
  [/^#\/create$/, createPage],
  [/^#\/alerts$/, alertsPage],
  [/^#\/d\/([^/]+)$/, detailsPage],
  [/^#\/d\/([^/]+)\/edit$/, editPage],
  [/^#\/d\/([^/]+)\/update-model$/, updateModelPage],
  [/^#\/d\/([^/]+)\/scale$/, scalePage],
  [/^#\/d\/([^/]+)\/rollback$/, rollbackPage],
  [/^#\/d\/([^/]+)\/logs$/, logsPage],
  [/^#\/d\/([^/]+)\/delete$/, deletePage],
];

async function route() {
  cleanup();
  cleanup = () => {};
  const hash = location.hash || "#/deployments";
  if (!session.token() && hash !== "#/login") { location.replace("#/login"); return; }
  document.getElementById("nav").hidden = !session.token();
  for (const link of document.querySelectorAll("#nav a")) {
    link.toggleAttribute("aria-current", hash.startsWith(link.getAttribute("href")));
  }
  const found = ROUTES.find(([pattern]) => pattern.test(hash));
  if (!found) { location.replace("#/deployments"); return; }
  const args = hash.match(found[0]).slice(1).map(decodeURIComponent);
  const view = currentView = h("div", { class: "view" }, h("p", { class: "muted" }, "Loading…"));
  root.replaceChildren(view);
  try {
    const stop = await found[1](...args);
    if (typeof stop === "function") {
      if (currentView !== view) { stop(); return; } // navigated away while it loaded: its live feed is not wanted
      cleanup = stop;
    }
  } catch (error) {
    view.replaceChildren(failure(error));
  }
  if (currentView !== view) return;
  const heading = view.querySelector("h1");
  document.title = heading ? `${heading.textContent} · berth` : "berth console";
  root.focus({ preventScroll: true });
}

function failure(error) {
  if (error instanceof ApiError && error.status === 404) {
    return h("div", { class: "empty" }, h("h1", {}, "Not found"),
      h("p", {}, "No deployment of this name or id in your project (it may have been deleted)."),
      h("p", {}, h("a", { href: "#/deployments" }, "Back to the deployments")));
  }
  return h("div", { class: "empty" }, h("h1", {}, "Something went wrong"),
    h("p", { role: "alert" }, error.message),
    h("p", {}, "Check that berth is up (`berth up`), then ", h("a", { href: location.hash, onclick: () => setTimeout(route) }, "try again"), "."));
}

function setLive(on) {
  const badge = document.getElementById("live");
  badge.textContent = on ? "live" : "reconnecting…";
  badge.classList.toggle("on", on);
}

// --- login -----------------------------------------------------------------------------------------

async function loginPage() {
  const main = currentView; // this page's own view (see route)
  const tokenInput = h("input", { type: "password", id: "token", name: "token", autocomplete: "current-password", required: true, "aria-describedby": "token-help token-error" });
  const error = h("p", { class: "error", id: "token-error", role: "alert", hidden: true });
  const form = h("form", { class: "card narrow", onsubmit: async (event) => {
    event.preventDefault();
    session.signIn(tokenInput.value.trim());
    try {
      await api("GET", "/deployments?limit=1");
      location.hash = "#/deployments";
    } catch (failed) {
      session.signOut();
      error.hidden = false;
      error.textContent = failed.status === 401 ? "This token is not valid: copy it again (without spaces)." : failed.message;
      tokenInput.focus();
    }
  } },
    h("h1", {}, "Sign in to berth"),
    h("label", { for: "token" }, "API token"), tokenInput,
    h("p", { class: "help", id: "token-help" }, "The admin token is in <data dir>/token (`berth up` prints where, default .berth/token); a project's token comes from `berth projects create`. It is kept in this browser tab only, until you sign out or close it."),
    error, h("button", { class: "primary", type: "submit" }, "Sign in"));
  main.replaceChildren(form);
  tokenInput.focus();
}

// --- deployments list -------------------------------------------------------------------------------

function rowOf(d) {
  const s = d.status || {};
  const m = s.metrics;
  const model = d.spec.model ? `${d.spec.model.id} · ${d.spec.model.version}` : "–";
  return h("tr", { dataset: { id: d.deployment_id, name: d.name } },
    h("th", { scope: "row" }, h("a", { href: `#/d/${encodeURIComponent(d.slug)}` }, d.name)),
    h("td", {}, d.environment), h("td", {}, model),
    h("td", { class: "num replicas" }, `${s.ready_replicas ?? 0}/${s.desired_replicas ?? 0}`),
    h("td", {}, phaseBadge(s.phase || "Pending")),
    h("td", { class: "num" }, m ? format(m.request_rate, "/s") : "–"),
    h("td", { class: "num" }, m ? format(m.latency_p99, "s") : "–"));
}

async function listPage() {
  const main = currentView; // this page's own view (see route)
  const deployments = new Map();
  const params = new URLSearchParams(sessionStorage.getItem("berth.filters") || "");
  const env = h("select", { id: "env", "aria-label": "Environment" },
    [["", "All environments"], ["development", "Development"], ["staging", "Staging"], ["production", "Production"]]
      .map(([v, t]) => h("option", { value: v, selected: params.get("env") === v }, t)));
  const search = h("input", { type: "search", id: "search", placeholder: "Search by name", "aria-label": "Search by name", value: params.get("q") || "" });
  const body = h("tbody");
  const count = h("p", { class: "muted", role: "status" }, "Loading…");
  const table = h("table", { class: "list deployments-table" },
    h("caption", { class: "sr-only" }, "Deployments"),
    h("thead", {}, h("tr", {}, ["Name", "Environment", "Model", "Replicas (ready/desired)", "Phase", "Requests/s", "p99 latency"]
      .map((c, i) => h("th", { scope: "col", class: [3, 5, 6].includes(i) ? "num" : null }, c)))),
    body);
  const empty = h("div", { class: "empty", hidden: true });
  main.replaceChildren(
    h("div", { class: "page-head" }, h("h1", {}, "Deployments"), h("a", { class: "button primary", href: "#/create" }, "Create Deployment")),
    h("div", { class: "filters" }, env, search, count), table, empty);
  let scheduled = false;
  const render = () => {
    scheduled = false;
    const q = search.value.trim().toLowerCase();
    sessionStorage.setItem("berth.filters", new URLSearchParams({ env: env.value, q: search.value }).toString());
    const shown = [...deployments.values()]
      .filter((d) => (!env.value || d.environment === env.value) && (!q || d.name.toLowerCase().includes(q)))
      .sort((a, b) => a.name.localeCompare(b.name));
    body.replaceChildren(...shown.map(rowOf));
    table.hidden = !shown.length;
    empty.hidden = Boolean(shown.length);
    count.textContent = `${shown.length} of ${deployments.size} deployments`;
    if (!main.dataset.ready) {
      main.dataset.ready = "true";
      performance.mark("berth:list-ready"); // bench/bench_console.py: time to interactive
    }
    if (!deployments.size) {
      empty.replaceChildren(h("h2", {}, "No deployments yet"),
        h("p", {}, "Create one with the form (", h("a", { href: "#/create" }, "Create Deployment"), ") or from a spec file: ", h("code", {}, "berth apply -f examples/iris.yaml"), "."));
    } else if (!shown.length) {
      empty.replaceChildren(h("h2", {}, "No deployment matches"), h("p", {}, "Clear the search or choose another environment."));
    }
  };
  const schedule = () => { if (!scheduled) { scheduled = true; requestAnimationFrame(render); } };
  env.addEventListener("change", schedule);
  search.addEventListener("input", schedule);
  const load = async () => {
    const items = await all("/deployments");
    deployments.clear();
    for (const d of items) deployments.set(d.deployment_id, d);
    schedule();
  };
  // Subscribed first, then the list read: no change falls between the two. Read again on each
  // reconnection; read anyway when the feed cannot be had (the list still works, without live updates).
  let loaded = false;
  const reload = () => load().then(() => { loaded = true; }, (error) => { if (!loaded) main.replaceChildren(failure(error)); });
  return live((name, data) => {
    if (name === "deployment") deployments.set(data.deployment_id, data);
    if (name === "deleted") deployments.delete(data.id);
    schedule();
  }, reload, (on) => { setLive(on); if (!on && !loaded) reload(); });
}

// --- create -----------------------------------------------------------------------------------------

async function secretNames() {
  try { return (await api("GET", "/secrets")).names; } catch { return []; }
}

async function createPage() {
  const main = currentView; // this page's own view (see route)
  const form = deploymentForm(null, "create", await secretNames());
  const yaml = h("textarea", { id: "yaml", class: "yaml", rows: 24, spellcheck: "false", "aria-label": "Deployment spec (YAML)" });
  const yamlErrors = h("div", { class: "summary error-summary", role: "alert", hidden: true });
  const yamlPanel = h("div", { id: "panel-yaml", role: "tabpanel", "aria-labelledby": "tab-yaml", hidden: true },
    h("p", { class: "help" }, "The same spec `berth apply -f` reads. While this tab is open, Create Deployment submits this text."), yamlErrors, yaml);
  const formPanel = h("div", { id: "panel-form", role: "tabpanel", "aria-labelledby": "tab-form" }, form);
  let yamlEdited = false;
  yaml.addEventListener("input", () => { yamlEdited = true; });
  const tabs = tabList([["form", "Form", formPanel], ["yaml", "YAML", yamlPanel]], (which) => {
    if (which === "yaml" && !yamlEdited) yaml.value = yamlText(formSpec(form));
  });
  const submit = h("button", { type: "button", class: "primary", onclick: async () => {
    submit.disabled = true;
    try {
      const onYaml = !yamlPanel.hidden;
      const created = onYaml ? await api("POST", "/deployments", { yaml: yaml.value }) : await api("POST", "/deployments", { json: formSpec(form) });
      notify(`Deployment ${created.name} created.`);
      location.hash = `#/d/${encodeURIComponent(created.slug)}`;
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      const errors = error.errors.length ? error.errors : [{ field: "(spec)", rule: error.message }];
      if (!yamlPanel.hidden) {
        yamlErrors.replaceChildren(h("strong", {}, error.message), h("ul", {}, errors.map((e) => h("li", {}, `${e.field}: ${e.rule}`))));
        yamlErrors.hidden = false;
      } else showErrors(form, errors, error.message);
    } finally { submit.disabled = false; }
  } }, "Create Deployment");
  form.addEventListener("submit", (e) => { e.preventDefault(); submit.click(); });
  main.replaceChildren(h("h1", {}, "Create Deployment"), tabs, formPanel, yamlPanel,
    h("div", { class: "actions sticky" }, h("a", { class: "button", href: "#/deployments" }, "Cancel"), submit));
}

function tabList(tabs, onSelect) {
  const buttons = tabs.map(([id, label, panel], i) => h("button", {
    type: "button", role: "tab", id: `tab-${id}`, "aria-controls": panel.id, "aria-selected": String(i === 0), tabindex: i === 0 ? "0" : "-1",
    onclick: () => select(i),
    onkeydown: (e) => {
      if (e.key === "ArrowRight" || e.key === "ArrowLeft") { const n = (i + (e.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length; select(n); buttons[n].focus(); }
    },
  }, label));
  function select(n) {
    onSelect(tabs[n][0]);
    tabs.forEach(([, , panel], i) => {
      panel.hidden = i !== n;
      buttons[i].setAttribute("aria-selected", String(i === n));
      buttons[i].tabIndex = i === n ? 0 : -1;
    });
  }
  return h("div", { role: "tablist", class: "tabs" }, buttons);
}

// --- details ----------------------------------------------------------------------------------------

const yesNo = (v) => (v ? "Yes" : "No");
const STRATEGY_NAMES = { rolling: "Rolling Update", "blue-green": "Blue-Green", canary: "Canary" };
const ALGORITHM_NAMES = { "round-robin": "Round Robin", "least-connections": "Least Connections", "ip-hash": "IP Hash" };

function dl(rows) {
  return h("dl", { class: "facts" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "–")]));
}

function target(spec, metric) {
  const found = (spec.resources.autoscaling?.metrics || []).find((m) => m.metric === metric);
  return found ? `${found.value} %` : "–";
}

function panels(d) {
  const spec = d.spec, r = spec.resources, s = d.status, lb = spec.loadBalancer || {};
  const scaling = r.autoscaling || {};
  const strategy = spec.updateStrategy?.type || "rolling";
  const notInSpec = () => h("span", { class: "muted" }, "not part of berth's spec");
  return h("div", { class: "grid" },
    h("section", { class: "card" }, h("h2", {}, "Basic Information"), dl([
      ["Deployment Name", d.name], ["Description", spec.description || "–"],
      ["Model ID", spec.model?.id], ["Model Version", spec.model?.version],
      ["Environment", d.environment[0].toUpperCase() + d.environment.slice(1)],
      ["Deployment Strategy", STRATEGY_NAMES[strategy] + (strategy === "canary" ? ` (${spec.updateStrategy.canaryPercent ?? spec.updateStrategy.canarySteps?.[0] ?? 10} %)` : "")],
      ["Spec version", `v${d.spec_version}`], ["Updated", when(d.updated_at)]])),
    h("section", { class: "card" }, h("h2", {}, "Resource Configuration"), dl([
      ["CPU Cores", r.cpu ?? "–"], ["Memory (GB)", r.memory != null ? `${r.memory} GB` : "–"],
      ["GPU Count", r.gpuCount ?? 0], ["GPU Type", r.gpuType ?? "–"],
      ["Storage (GB)", notInSpec()], ["Network Bandwidth (Mbps)", notInSpec()],
      ["Image", spec.image], ["Ports", r.ports.join(", ")]])),
    h("section", { class: "card" }, h("h2", {}, "Scaling Configuration"), dl([
      ["Current Instances", h("span", { class: "current-instances" }, `${s.ready_replicas} ready of ${s.desired_replicas} desired (${s.desired_source})`)],
      ["Enable Auto-Scaling", yesNo(scaling.enabled)],
      ["Min Instances", scaling.enabled ? (scaling.minReplicas ?? r.replicas) : "–"], ["Max Instances", scaling.enabled ? scaling.maxReplicas : "–"],
      ["Target CPU Utilization (%)", target(spec, "cpu")], ["Target GPU usage for trigger scaling", target(spec, "gpu")],
      ["Target Memory Utilization (%)", target(spec, "memory")]])),
    h("section", { class: "card" }, h("h2", {}, "Load Balancer"), dl([
      ["Enable Load Balancer", yesNo(lb.enabled !== false)], ["Load Balancing Algorithm", ALGORITHM_NAMES[lb.algorithm || "round-robin"]],
      ["Health Check Path", lb.healthCheckPath || "–"], ["Health Check Interval (seconds)", lb.healthCheckIntervalSeconds ?? "–"],
      ["Sticky Sessions", yesNo(lb.stickySessions)]])));
}

function replicasTable(d) {
  const replicas = d.status.replicas || [];
  if (!replicas.length) {
    return h("p", { class: "muted" }, d.spec.enabled === false ? "Stopped: no replica runs. Start the deployment to run it again." : "No replica runs yet; they appear here as the scheduler starts them.");
  }
  return h("table", { class: "list replicas-table" },
    h("thead", {}, h("tr", {}, ["Replica", "Revision", "State", "Health", "Restarts", "Last probe"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, replicas.map((r) => {
      const probe = r.last_probe;
      const health = r.ready ? "ready" : r.started ? "not ready" : "starting";
      return h("tr", {}, h("th", { scope: "row" }, h("code", {}, r.replica_id)),
        h("td", {}, h("code", {}, r.revision_id.slice(0, 10)), r.revision_id === d.revision_id ? "" : h("span", { class: "tag" }, "previous")),
        h("td", {}, r.state), h("td", { class: `health ${r.ready ? "ok" : "bad"}` }, health + (r.live ? "" : r.started ? ", not live" : "")),
        h("td", { class: "num" }, r.restart_count, r.last_restart_reason ? h("span", { class: "muted" }, ` (${r.last_restart_reason})`) : ""),
        h("td", {}, probe ? `${probe.probe} ${probe.ok ? "passed" : "failed"}${probe.status_code ? ` (${probe.status_code})` : ""}${probe.error ? `: ${probe.error}` : ""}, ${when(probe.at)}` : "–"));
    })));
}

// A rollout in progress: replicas of the current revision and of the ones before it.
function rollout(d, history, reload) {
  const replicas = d.status.replicas || [];
  const current = replicas.filter((r) => r.revision_id === d.revision_id);
  const previous = replicas.filter((r) => r.revision_id !== d.revision_id);
  if (!previous.length) return null;
  const strategy = d.spec.updateStrategy?.type || "rolling";
  const prior = history.find((v) => v.spec_version < d.spec_version && v.revision_id !== d.revision_id);
  const ready = current.filter((r) => r.ready).length;
  const desired = d.status.desired_replicas || 1;
  const progress = h("progress", { max: desired, value: Math.min(ready, desired), "aria-label": "New replicas ready" });
  const buttons = [];
  if (strategy === "canary" || strategy === "blue-green") {
    buttons.push(h("button", { type: "button", class: "primary", id: "promote", onclick: async () => {
      await act(() => api("POST", `/deployments/${d.deployment_id}/promote`), strategy === "canary" ? "Canary promoted: it takes all traffic." : "Promoted: the old set stops.");
      reload();
    } }, "Promote"));
  }
  if (prior && strategy === "canary") {
    buttons.push(h("button", { type: "button", class: "danger", id: "abort", onclick: async () => {
      if (!(await confirmDialog("Abort the canary?", h("p", {}, `Version ${prior.spec_version} becomes current again (a new version with its spec); the canary's replicas stop.`), "Abort canary", true))) return;
      await act(() => api("POST", `/deployments/${d.deployment_id}/rollback`, { json: { spec_version: prior.spec_version } }), "Canary aborted.");
      reload();
    } }, "Abort"));
  }
  return h("section", { class: "card rollout", "aria-live": "polite" },
    h("h2", {}, `${STRATEGY_NAMES[strategy]} in progress`),
    h("p", {}, `New revision: ${ready} of ${current.length} replicas ready (${desired} desired); previous revision: ${previous.length} still running.`),
    progress, h("p", { class: "muted" }, d.status.reason || ""), h("div", { class: "actions" }, buttons));
}

async function act(call, message) {
  try {
    const answer = await call();
    notify(answer?.unchanged ? "Nothing to change: it already was so." : message);
    return answer;
  } catch (error) {
    notify(error.errors?.length ? error.errors.map((e) => `${e.field}: ${e.rule}`).join("; ") : error.message, "bad");
    throw error;
  }
}

const RANGES = [["15m", "15s", "15 min"], ["1h", "1m", "1 hour"], ["6h", "5m", "6 hours"], ["24h", "15m", "24 hours"], ["7d", "1h", "7 days"]];

async function metricsSection(d) {
  const charts = h("div", { class: "charts" });
  const picker = h("select", { id: "range", "aria-label": "Time range" }, RANGES.map(([w, , label]) => h("option", { value: w, selected: w === "1h" }, label)));
  const draw = async () => {
    const [window, step] = RANGES.find(([w]) => w === picker.value);
    let m;
    try { m = await optional(`/deployments/${d.deployment_id}/metrics?window=${window}&step=${step}`); } catch (error) {
      charts.replaceChildren(h("p", { class: "error" }, `The metrics could not be read: ${error.message}`));
      return;
    }
    if (!m) {
      charts.replaceChildren(h("div", { class: "empty small" }, h("p", {}, "No metrics history on this berth: GET /v1/deployments/{ref}/metrics answered 404 (the metrics service is not installed)."), h("p", { class: "muted" }, "The list's request rate and p99 appear once it is.")));
      return;
    }
    const s = m.series;
    const perReplica = (key) => (m.replicas || []).map((r) => ({ name: r.replica_id, points: r.series[key] || [] }));
    charts.replaceChildren(
      lineChart("Request rate", [{ name: "requests/s", points: s.request_rate }], "/s"),
      lineChart("Latency", [{ name: "p50", points: s.latency_p50 }, { name: "p95", points: s.latency_p95 }, { name: "p99", points: s.latency_p99 }], "s"),
      lineChart("Error rate", [{ name: "5xx / failed", points: s.error_rate }, { name: "4xx", points: s.client_error_rate }], "ratio"),
      lineChart("CPU per replica", perReplica("cpu_percent"), "%"),
      lineChart("Memory per replica", perReplica("memory_percent"), "%"),
      lineChart("Replicas", [{ name: "desired", points: s.replicas_desired }, { name: "ready", points: s.replicas_ready }], ""));
  };
  picker.addEventListener("change", draw);
  await draw();
  return h("section", { class: "card wide" }, h("div", { class: "page-head" }, h("h2", {}, "Metrics"), h("label", {}, "Time range ", picker)), charts);
}

function alertRows(items) {
  return h("table", { class: "list" },
    h("thead", {}, h("tr", {}, ["Deployment", "Rule", "State", "Since", "Value"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, items.map((a) => h("tr", {},
      h("td", {}, a.deployment || a.deployment_name || a.deployment_id || "–"),
      h("td", {}, a.name, a.metric ? h("span", { class: "muted" }, ` ${a.metric} ${a.op} ${a.threshold}${a.for && a.for !== "0s" ? ` for ${a.for}` : ""}`) : ""),
      h("td", {}, h("span", { class: `phase alert-${a.state}` }, a.state)), h("td", {}, when(a.since)), h("td", { class: "num" }, a.value ?? "–")))));
}

const itemsOf = (answer) => (Array.isArray(answer) ? answer : answer?.items || answer?.alerts || answer?.rules || []);

async function alertsSection(d) {
  const answer = await optional(`/deployments/${d.deployment_id}/alerts`).catch(() => null);
  const body = answer === null
    ? h("p", { class: "muted" }, "No alerting on this berth (GET …/alerts answered 404): no alerts configured.")
    : itemsOf(answer).length ? alertRows(itemsOf(answer)) : h("p", { class: "muted" }, "No alerts configured: add `alerts:` rules to the spec (Edit → YAML) to be told when a metric crosses a threshold.");
  return h("section", { class: "card" }, h("h2", {}, "Alerts"), body);
}

function historySection(d, history) {
  return h("section", { class: "card wide" }, h("h2", {}, "History"),
    h("ol", { class: "history" }, history.map((v) => h("li", {},
      h("div", { class: "version-head" }, h("strong", {}, `v${v.spec_version}`), ` ${when(v.created_at)} · revision `, h("code", {}, v.revision_id.slice(0, 10)),
        v.spec_version === d.spec_version ? h("span", { class: "tag" }, "current") : h("a", { class: "button small", href: `#/d/${encodeURIComponent(d.slug)}/rollback?to=${v.spec_version}` }, `Roll back to v${v.spec_version}`),
        v.rolled_back_at ? h("span", { class: "tag bad" }, `rolled back: ${v.rolled_back_reason}`) : ""),
      v.changes ? changesTable(v.changes) : h("p", { class: "muted" }, "First version.")))));
}

function show(value) { return value === null || value === undefined ? "–" : typeof value === "object" ? JSON.stringify(value) : String(value); }

const EFFECTS = { live: "applies live", replace: "replaces replicas", refused: "refused" };
function changesTable(changes) {
  if (!changes.length) return h("p", { class: "muted" }, "No field changed.");
  return h("table", { class: "list changes" },
    h("thead", {}, h("tr", {}, ["Field", "Before", "After", "Effect"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, changes.map((c) => h("tr", { class: `effect-${c.effect}` }, h("td", {}, h("code", {}, c.field)),
      h("td", {}, show(c.before)), h("td", {}, show(c.after)), h("td", {}, h("span", { class: `tag ${c.effect}` }, EFFECTS[c.effect]), c.note ? h("span", { class: "muted" }, ` ${c.note}`) : "")))));
}

async function aliasesSection(d) {
  const aliases = (await api("GET", `/deployments/${d.deployment_id}/aliases`)).items;
  return h("section", { class: "card" }, h("h2", {}, "Aliases"), aliases.length
    ? h("table", { class: "list" }, h("thead", {}, h("tr", {}, ["Alias", "Version", "Endpoint"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, aliases.map((a) => h("tr", {}, h("td", {}, a.alias), h("td", {}, `v${a.spec_version}`), h("td", {}, h("code", {}, a.endpoint))))))
    : h("p", { class: "muted" }, "No aliases. `berth aliases set <deployment> <alias> <version>` gives a version a name of its own endpoint."));
}

async function detailsPage(ref) {
  const main = currentView; // this page's own view (see route)
  let d = await api("GET", `/deployments/${encodeURIComponent(ref)}`);
  let history = (await api("GET", `/deployments/${d.deployment_id}/history?diff=true&limit=50`)).items;
  const head = h("div");
  const status = h("div");
  const historyBox = h("div");
  const renderHead = () => {
    const slug = encodeURIComponent(d.slug);
    const stopped = d.spec.enabled === false;
    head.replaceChildren(
      h("div", { class: "page-head start" }, h("h1", {}, d.name), phaseBadge(d.status.phase)),
      h("p", { class: "reason" }, d.status.reason || ""),
      h("p", {}, "Endpoint: ", h("code", { id: "endpoint" }, d.endpoint)),
      h("div", { class: "toolbar", role: "toolbar", "aria-label": "Actions" },
        h("a", { class: "button", href: `#/d/${slug}/edit` }, "Edit"),
        h("a", { class: "button", href: `#/d/${slug}/update-model` }, "Update Model"),
        h("a", { class: "button", href: `#/d/${slug}/scale` }, "Scale"),
        stopped
          ? h("button", { type: "button", id: "start", onclick: async () => { d = await act(() => api("POST", `/deployments/${d.deployment_id}/start`), "Starting: it resumes with its previous configuration."); renderAll(); } }, "Start")
          : h("button", { type: "button", id: "stop", onclick: async () => {
            const ok = await confirmDialog(`Stop ${d.name}?`, h("div", {}, h("p", {}, "All instances will shut down and the endpoint will become unavailable until you start it again."), h("p", { class: "muted" }, "Use it for a maintenance window, cost optimization or testing in isolation.")), "Stop deployment", true);
            if (ok) { d = await act(() => api("POST", `/deployments/${d.deployment_id}/stop`), "Stopping: every instance shuts down."); renderAll(); }
          } }, "Stop"),
        h("a", { class: "button", href: `#/d/${slug}/rollback` }, "Rollback"),
        h("a", { class: "button", href: `#/d/${slug}/logs` }, "Logs"),
        h("a", { class: "button danger", href: `#/d/${slug}/delete` }, "Delete")));
  };
  const reloadHistory = async () => {
    history = (await api("GET", `/deployments/${d.deployment_id}/history?diff=true&limit=50`)).items;
    historyBox.replaceChildren(historySection(d, history));
  };
  const reload = async () => { d = await api("GET", `/deployments/${d.deployment_id}`); await reloadHistory(); renderAll(); };
  const renderAll = () => {
    renderHead();
    status.replaceChildren(rollout(d, history, reload) || "", panels(d), h("section", { class: "card wide" }, h("h2", {}, "Replicas"), replicasTable(d)));
  };
  renderAll();
  historyBox.replaceChildren(historySection(d, history));
  const [metrics, alerts, aliases] = await Promise.all([metricsSection(d), alertsSection(d), aliasesSection(d)]);
  main.replaceChildren(head, status, metrics, h("div", { class: "grid" }, alerts, aliases), historyBox);
  main.dataset.ready = "true";
  return live(async (name, data) => {
    if (name === "deleted" && data.id === d.deployment_id) { notify(`${d.name} was deleted.`); location.hash = "#/deployments"; return; }
    if (name !== "deployment" || data.deployment_id !== d.deployment_id) return;
    const newVersion = data.spec_version !== d.spec_version;
    d = data;
    if (newVersion) await reloadHistory();
    renderAll();
  }, () => reload().catch(() => {}), setLive);
}

// --- edit -------------------------------------------------------------------------------------------

// Review (dry-run verdict) then save, for Edit and Update Model.
function reviewAndSave(d, makeSpec, onSaved, saveLabel) {
  const verdict = h("div", { class: "verdict", "aria-live": "polite" });
  let reviewed = null;
  const save = h("button", { type: "button", class: "primary", id: "save", disabled: true, onclick: async () => {
    save.disabled = true;
    try {
      const updated = await api("PUT", `/deployments/${d.deployment_id}`, { json: reviewed, headers: { "If-Match": `"${d.spec_id}"` } });
      onSaved(updated);
    } catch (error) { onError(error); }
  } }, saveLabel);
  let onError = () => {};
  const review = h("button", { type: "button", id: "review", onclick: async () => {
    const spec = makeSpec();
    if (!spec) return;
    try {
      const answer = await api("PUT", `/deployments/${d.deployment_id}?dryRun=true`, { json: spec, headers: { "If-Match": `"${d.spec_id}"` } });
      reviewed = spec;
      verdict.replaceChildren(h("h2", {}, "Before saving"),
        ...(answer.unchanged ? [h("p", {}, "No change: this is the current spec.")] : [
          h("p", { class: answer.replaces_replicas ? "warn" : "ok", id: "rollout-sentence" }, answer.rollout),
          changesTable(answer.changes)]));
      save.disabled = answer.unchanged;
      save.focus();
    } catch (error) { onError(error); }
  } }, "Review changes");
  return { verdict, review, save, setOnError: (f) => { onError = f; }, invalidate: () => { reviewed = null; save.disabled = true; verdict.replaceChildren(); } };
}

function staleOr(error, show) {
  if (error.status === 412) notify("The deployment changed meanwhile: reload the page to edit its newest version.", "bad");
  else show(error);
}

async function editPage(ref) {
  const main = currentView; // this page's own view (see route)
  const d = await api("GET", `/deployments/${encodeURIComponent(ref)}`);
  const form = deploymentForm(d.spec, "edit", await secretNames());
  const flow = reviewAndSave(d, () => { clearErrors(form); return formSpec(form, d.spec); }, (updated) => {
    notify(`${updated.name} updated to v${updated.spec_version}.`);
    location.hash = `#/d/${encodeURIComponent(d.slug)}`;
  }, "Update Deployment");
  flow.setOnError((error) => staleOr(error, (e) => showErrors(form, e.errors.length ? e.errors : [{ field: "(spec)", rule: e.message }], e.message)));
  form.addEventListener("input", flow.invalidate);
  form.addEventListener("submit", (e) => { e.preventDefault(); flow.review.click(); });
  main.replaceChildren(h("h1", {}, `Edit ${d.name}`),
    h("p", { class: "note" }, "Fields marked ⚠ replace the replicas (a restart through the update strategy); the others apply live. Name and model are locked: use Update Model for a new model version. Review the changes before saving."),
    form, flow.verdict,
    h("div", { class: "actions sticky" }, h("a", { class: "button", href: `#/d/${encodeURIComponent(d.slug)}` }, "Cancel"), flow.review, flow.save));
}

// --- update model -----------------------------------------------------------------------------------

const STRATEGY_HELP = {
  rolling: ["Rolling Update (Recommended)", "Gradually replaces old instances · zero downtime · automatic rollback on failure"],
  "blue-green": ["Blue-Green", "Deploys the new version alongside the old · switches traffic all at once · quick rollback possible"],
  canary: ["Canary", "Routes a small % of traffic to the new version · monitor performance · promote when it does well"],
};

async function updateModelPage(ref) {
  const main = currentView; // this page's own view (see route)
  const d = await api("GET", `/deployments/${encodeURIComponent(ref)}`);
  const current = d.spec.updateStrategy?.type || "rolling";
  const version = h("input", { type: "text", id: "model-version", required: true, value: d.spec.model?.version || "", "aria-describedby": "model-version-help model-version-error" });
  const versionError = h("p", { class: "error", id: "model-version-error", role: "alert", hidden: true });
  const percent = h("input", { type: "number", id: "canary-percent", min: 1, max: 99, value: d.spec.updateStrategy?.canaryPercent ?? 10, "aria-describedby": "canary-help" });
  const radios = Object.entries(STRATEGY_HELP).map(([value, [label, help]]) => h("div", { class: "field check" },
    h("input", { type: "radio", name: "strategy", id: `strategy-${value}`, value, checked: value === current, "aria-describedby": `strategy-${value}-help` }),
    h("label", { for: `strategy-${value}` }, label), h("p", { class: "help", id: `strategy-${value}-help` }, help)));
  const percentField = h("div", { class: "field" }, h("label", { for: "canary-percent" }, "Canary traffic (%)"), percent, h("p", { class: "help", id: "canary-help" }, "Share of requests the new version takes first (1-99)."));
  const strategy = () => main.querySelector("input[name=strategy]:checked").value;
  const flow = reviewAndSave(d, () => {
    versionError.hidden = true;
    const spec = structuredClone(d.spec);
    spec.model = { ...(spec.model || { id: d.slug }), version: version.value.trim() };
    const type = strategy();
    const kept = (spec.updateStrategy?.type || "rolling") === type ? spec.updateStrategy : {};
    spec.updateStrategy = { ...kept, type };
    if (type === "canary") spec.updateStrategy.canaryPercent = Number(percent.value);
    if (type === "canary" && spec.updateStrategy.canarySteps) delete spec.updateStrategy.canaryPercent;
    return spec;
  }, (updated) => {
    notify(`Updating ${updated.name} to model version ${updated.spec.model.version} (${STRATEGY_NAMES[strategy()]}).`);
    location.hash = `#/d/${encodeURIComponent(d.slug)}`;
  }, "Update");
  flow.setOnError((error) => staleOr(error, (e) => {
    versionError.hidden = false;
    versionError.textContent = e.errors.length ? e.errors.map((x) => `${x.field}: ${x.rule}`).join("; ") : e.message;
  }));
  const form = h("form", { class: "spec-form", onsubmit: (e) => { e.preventDefault(); flow.review.click(); }, oninput: () => { percentField.hidden = strategy() !== "canary"; flow.invalidate(); } },
    h("fieldset", {}, h("legend", {}, "Model"),
      h("p", {}, `Model ID: ${d.spec.model?.id ?? "–"} · running version ${d.spec.model?.version ?? "–"}`),
      h("div", { class: "field" }, h("label", { for: "model-version" }, "New model version"), version, h("p", { class: "help", id: "model-version-help" }, "Version of the model to deploy"), versionError)),
    h("fieldset", {}, h("legend", {}, "Update strategy"), radios, percentField));
  percentField.hidden = current !== "canary";
  main.replaceChildren(h("h1", {}, `Update Model: ${d.name}`), form, flow.verdict,
    h("div", { class: "actions sticky" }, h("a", { class: "button", href: `#/d/${encodeURIComponent(d.slug)}` }, "Cancel"), flow.review, flow.save),
    h("p", { class: "muted" }, "The rollout's progress (and Promote / Abort for a canary) shows on the deployment's page."));
}

// --- scale, rollback, delete --------------------------------------------------------------------------

async function scalePage(ref) {
  const main = currentView; // this page's own view (see route)
  const d = await api("GET", `/deployments/${encodeURIComponent(ref)}`);
  const bounds = d.spec.resources.autoscaling?.enabled ? ` Auto-scaling is on (${d.spec.resources.autoscaling.minReplicas ?? d.spec.resources.replicas}-${d.spec.resources.autoscaling.maxReplicas}): the count must be within its bounds, and the autoscaler moves it later.` : "";
  const count = h("input", { type: "number", id: "replicas", min: 0, max: 1000, step: 1, value: d.status.desired_replicas, "aria-describedby": "replicas-help replicas-error" });
  const error = h("p", { class: "error", id: "replicas-error", role: "alert", hidden: true });
  const form = h("form", { class: "card narrow", onsubmit: async (e) => {
    e.preventDefault();
    try {
      await api("POST", `/deployments/${d.deployment_id}/scale`, { json: { replicas: Number(count.value) } });
      notify(`Scaling ${d.name} to ${count.value} replicas.`);
      location.hash = `#/d/${encodeURIComponent(d.slug)}`;
    } catch (failed) {
      error.hidden = false;
      error.textContent = failed.errors.length ? failed.errors.map((x) => x.rule).join("; ") : failed.message;
    }
  } },
    h("h1", {}, `Scale ${d.name}`),
    h("p", {}, `Now: ${d.status.ready_replicas} ready of ${d.status.desired_replicas} desired.`),
    h("label", { for: "replicas" }, "Replicas"), count,
    h("p", { class: "help", id: "replicas-help" }, `Instances to run (0 stops every replica but keeps the deployment).${bounds} A later spec version with another resources.replicas replaces this decision.`),
    error, h("div", { class: "actions" }, h("a", { class: "button", href: `#/d/${encodeURIComponent(d.slug)}` }, "Cancel"), h("button", { class: "primary", type: "submit" }, "Apply")));
  main.replaceChildren(form);
  count.focus();
}

async function rollbackPage(ref) {
  const main = currentView; // this page's own view (see route)
  const d = await api("GET", `/deployments/${encodeURIComponent(ref)}`);
  const history = (await api("GET", `/deployments/${d.deployment_id}/history?limit=100`)).items.filter((v) => v.spec_version !== d.spec_version);
  if (!history.length) {
    main.replaceChildren(h("div", { class: "empty" }, h("h1", {}, `Roll back ${d.name}`), h("p", {}, "There is no earlier version to roll back to."), h("a", { href: `#/d/${encodeURIComponent(d.slug)}` }, "Back")));
    return;
  }
  const wanted = Number(new URLSearchParams(location.hash.split("?")[1] || "").get("to"));
  const choice = h("select", { id: "version" }, history.map((v) => h("option", { value: v.spec_version, selected: v.spec_version === wanted },
    `v${v.spec_version} · ${when(v.created_at)} · model ${v.spec.model?.version ?? "–"}`)));
  const preview = h("div", { "aria-live": "polite" });
  const showPreview = async () => {
    const chosen = history.find((v) => v.spec_version === Number(choice.value));
    const answer = await api("PUT", `/deployments/${d.deployment_id}?dryRun=true`, { json: chosen.spec, headers: { "If-Match": `"${d.spec_id}"` } });
    preview.replaceChildren(h("p", { class: answer.replaces_replicas ? "warn" : "ok" }, answer.rollout), changesTable(answer.changes));
  };
  choice.addEventListener("change", showPreview);
  const form = h("form", { class: "card", onsubmit: async (e) => {
    e.preventDefault();
    const updated = await act(() => api("POST", `/deployments/${d.deployment_id}/rollback`, { json: { spec_version: Number(choice.value) } }), `Rolled back to the spec of v${choice.value}.`);
    if (updated) location.hash = `#/d/${encodeURIComponent(d.slug)}`;
  } },
    h("h1", {}, `Roll back ${d.name}`),
    h("p", {}, `Current: v${d.spec_version}. Rolling back makes a new version with the chosen version's spec.`),
    h("label", { for: "version" }, "Version to roll back to"), choice, preview,
    h("div", { class: "actions" }, h("a", { class: "button", href: `#/d/${encodeURIComponent(d.slug)}` }, "Cancel"), h("button", { class: "primary", type: "submit", id: "do-rollback" }, "Roll back")));
  main.replaceChildren(form);
  await showPreview();
}

async function deletePage(ref) {
  const main = currentView; // this page's own view (see route)
  const d = await api("GET", `/deployments/${encodeURIComponent(ref)}`);
  const typed = h("input", { type: "text", id: "confirm-name", autocomplete: "off", "aria-describedby": "confirm-help" });
  const button = h("button", { class: "danger", type: "submit", disabled: true }, "Delete deployment");
  typed.addEventListener("input", () => { button.disabled = typed.value !== d.name; });
  const form = h("form", { class: "card narrow", onsubmit: async (e) => {
    e.preventDefault();
    if (typed.value !== d.name) return;
    await act(() => api("DELETE", `/deployments/${d.deployment_id}`), `${d.name} deleted.`);
    location.hash = "#/deployments";
  } },
    h("h1", {}, `Delete ${d.name}`),
    h("div", { class: "warning", role: "note" }, h("strong", {}, "Deleting a deployment will:"),
      h("ul", {}, h("li", {}, "Shut down all instances"), h("li", {}, "Remove the endpoint"), h("li", {}, "Delete deployment configuration"), h("li", {}, h("strong", {}, "This action cannot be undone!")))),
    h("p", {}, h("strong", {}, "Before deleting:")),
    h("ul", {}, h("li", {}, "Stop sending traffic to the endpoint (", h("code", {}, d.endpoint), ")"), h("li", {}, "Update client applications"),
      h("li", {}, "Export logs if needed (", h("a", { href: `#/d/${encodeURIComponent(d.slug)}/logs` }, "Logs"), " → Download)"), h("li", {}, "Verify you have the correct deployment")),
    h("label", { for: "confirm-name" }, `Type the deployment's name (${d.name}) to confirm`), typed,
    h("p", { class: "help", id: "confirm-help" }, "The Delete button is enabled once the name matches exactly."),
    h("div", { class: "actions" }, h("a", { class: "button", href: `#/d/${encodeURIComponent(d.slug)}` }, "Cancel"), button));
  main.replaceChildren(form);
  typed.focus();
}

// --- logs -------------------------------------------------------------------------------------------

async function logsPage(ref) {
  const main = currentView; // this page's own view (see route)
  const d = await api("GET", `/deployments/${encodeURIComponent(ref)}`);
  const replica = h("select", { id: "replica", "aria-label": "Replica" }, h("option", { value: "" }, "All replicas"),
    (d.status.replicas || []).map((r) => h("option", { value: r.replica_id }, r.replica_id)));
  const search = h("input", { type: "search", id: "log-search", placeholder: "Search the lines", "aria-label": "Search the lines" });
  const follow = h("input", { type: "checkbox", id: "follow", checked: true });
  const out = h("pre", { class: "logs", tabindex: "0", "aria-label": "Log lines", "aria-live": "off" });
  const status = h("p", { class: "muted", role: "status" });
  let lines = [], cursor = null, timer = null, stopped = false;
  const render = () => {
    const q = search.value.toLowerCase();
    const shown = q ? lines.filter((l) => l.line.toLowerCase().includes(q)) : lines;
    out.replaceChildren(...shown.slice(-2000).map((l) => h("div", {}, h("span", { class: "muted" }, `${l.replica_id} `), l.line)));
    status.textContent = `${shown.length} of ${lines.length} lines${follow.checked ? " · following" : ""}`;
    if (follow.checked) out.scrollTop = out.scrollHeight;
  };
  const poll = async () => {
    if (stopped) return;
    try {
      const query = new URLSearchParams({ tail: cursor ? "0" : "500" });
      if (replica.value) query.set("replica", replica.value);
      if (cursor) query.set("since", typeof cursor === "string" ? cursor : JSON.stringify(cursor));
      const page = await api("GET", `/deployments/${d.deployment_id}/logs?${query}`);
      lines.push(...page.lines);
      if (lines.length > 20000) lines = lines.slice(-20000);
      cursor = page.next ?? cursor;
      render();
    } catch (error) {
      status.textContent = error.status === 503 ? "The scheduler does not answer log requests right now; retrying." : error.message;
    }
    if (follow.checked && !stopped) timer = setTimeout(poll, 1000);
  };
  replica.addEventListener("change", () => { lines = []; cursor = null; clearTimeout(timer); poll(); });
  search.addEventListener("input", render);
  follow.addEventListener("change", () => { clearTimeout(timer); if (follow.checked) poll(); else render(); });
  const download = h("button", { type: "button", onclick: () => {
    const blob = new Blob([lines.map((l) => `${l.replica_id} ${l.line}`).join("\n")], { type: "text/plain" });
    const link = h("a", { href: URL.createObjectURL(blob), download: `${d.slug}.log` });
    link.click();
    URL.revokeObjectURL(link.href);
  } }, "Download");
  main.replaceChildren(h("div", { class: "page-head" }, h("h1", {}, `Logs: ${d.name}`), h("a", { class: "button", href: `#/d/${encodeURIComponent(d.slug)}` }, "Back to details")),
    h("div", { class: "filters" }, replica, search, h("label", { class: "check" }, follow, " Follow"), download), status, out);
  await poll();
  return () => { stopped = true; clearTimeout(timer); };
}

// --- alerts -----------------------------------------------------------------------------------------

async function alertsPage() {
  const main = currentView; // this page's own view (see route)
  const state = h("select", { id: "alert-state", "aria-label": "State" }, [["", "Active (pending or firing)"], ["firing", "Firing"], ["pending", "Pending"], ["resolved", "Resolved"], ["inactive", "Inactive"]].map(([v, t]) => h("option", { value: v }, t)));
  const box = h("div");
  const load = async () => {
    const answer = await optional(`/alerts${state.value ? `?state=${state.value}` : ""}`);
    if (answer === null) {
      box.replaceChildren(h("div", { class: "empty" }, h("h2", {}, "No alerting on this berth"), h("p", {}, "GET /v1/alerts answered 404: the alerting service is not installed, so no alerts are configured."), h("p", { class: "muted" }, "Once it is, add `alerts:` rules to a deployment's spec; firing alerts show here.")));
      return;
    }
    const items = itemsOf(answer);
    box.replaceChildren(items.length ? alertRows(items) : h("div", { class: "empty" }, h("h2", {}, state.value ? `No ${state.value} alerts` : "No active alerts"), h("p", {}, "Nothing is pending or firing. Alerts come from `alerts:` rules (metric, op, threshold, for) in a deployment's spec (`berth apply`); each deployment's page lists its rules.")));
  };
  state.addEventListener("change", load);
  main.replaceChildren(h("div", { class: "page-head" }, h("h1", {}, "Alerts"), state), box);
  await load();
  const timer = setInterval(() => load().catch(() => {}), 10000);
  return () => clearInterval(timer);
}

// --- start ------------------------------------------------------------------------------------------

document.getElementById("sign-out").addEventListener("click", () => { session.signOut(); location.hash = "#/login"; });
window.addEventListener("berth:signed-out", () => { if (location.hash !== "#/login") location.hash = "#/login"; });
window.addEventListener("hashchange", route);
route();
