// Outrider tenant portal: one ES module, no framework. Every value that
// comes from the API is put on the page as text (textContent, attribute
// properties), never as HTML.

const S = JSON.parse(document.getElementById("portal-settings").textContent);
const TOKEN_KEY = "outrider-portal-token";
const THEME_KEY = "outrider-portal-theme";
const $main = document.getElementById("main");

// ---- session -------------------------------------------------------------

function takeTokenFromUrl() {
  const url = new URL(location.href);
  const token = url.searchParams.get("token");
  const theme = url.searchParams.get("theme");
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  if (theme === "light" || theme === "dark") sessionStorage.setItem(THEME_KEY, theme);
  if (token || theme) {
    url.searchParams.delete("token");
    url.searchParams.delete("theme");
    history.replaceState(null, "", url.pathname + (url.search || "") + url.hash);
  }
}

function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
  } catch {
    return null;
  }
}

/** The session is gone: back to the operator's app for a new token. */
function leave() {
  sessionStorage.removeItem(TOKEN_KEY);
  const to = S.REFRESH_URL || S.REFERER_URL;
  if (to) {
    location.replace(to);
    return;
  }
  $main.replaceChildren(
    h("h1", {}, "Your session has ended"),
    h("p", { className: "muted" }, "Open the portal again from the application that sent you here."),
  );
}

let TOKEN = null;
let TENANT = null;

// ---- helpers -------------------------------------------------------------

function h(tag, props, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k in el && k !== "list" && !k.includes("-")) el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : String(kid));
  }
  return el;
}
const svg = (tag, attrs, ...kids) => {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const kid of kids.flat()) if (kid) el.append(kid instanceof Node ? kid : String(kid));
  return el;
};

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `request failed (${status})`);
    this.status = status;
    this.data = (body && Array.isArray(body.data) && body.data) || [];
  }
}

async function api(path, { method = "GET", body } = {}) {
  const res = await fetch("/api/v1" + path, {
    method,
    headers: Object.assign({ authorization: "Bearer " + TOKEN }, body ? { "content-type": "application/json" } : {}),
    body: body ? JSON.stringify(body) : undefined,
  });
  if (res.status === 401) {
    leave();
    throw new ApiError(401, { message: "session ended" });
  }
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!res.ok) throw new ApiError(res.status, json);
  return json;
}

const enc = encodeURIComponent;
const tpath = (rest = "") => `/tenants/${enc(TENANT)}${rest}`;
const capital = (s) => (s ? s[0].toUpperCase() + s.slice(1) : s);

function errorBox(err) {
  if (!err) return null;
  const items = err.data && err.data.length ? err.data : [];
  return h(
    "div",
    { className: "errors", role: "alert" },
    h("strong", {}, capital(err.message || String(err))),
    items.length ? h("ul", {}, items.map((m) => h("li", {}, capital(String(m))))) : null,
  );
}

function toast(text) {
  const t = h("div", { className: "toast", role: "status" }, text);
  document.body.append(t);
  setTimeout(() => t.remove(), 3000);
}

function time(s) {
  if (!s) return "";
  const d = new Date(s);
  return isNaN(d) ? s : d.toLocaleString();
}

let TYPES = null;
async function types() {
  if (!TYPES) TYPES = await api("/destination-types");
  return TYPES;
}
const typeOf = (kind) => (TYPES || []).find((t) => t.type === kind);
function typeIcon(t) {
  if (!t || !t.icon) return null;
  return h("img", { className: "icon", alt: "", src: "data:image/svg+xml," + enc(t.icon) });
}

function statusBadge(d) {
  return d.disabled_at
    ? h("span", { className: "badge off" }, "Disabled")
    : h("span", { className: "badge ok" }, "Enabled");
}

function isoAgo(ms) {
  return new Date(Date.now() - ms).toISOString();
}

// ---- theme and branding --------------------------------------------------

function applyTheme() {
  const chosen =
    S.FORCE_THEME ||
    sessionStorage.getItem(THEME_KEY) ||
    (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light");
  document.documentElement.dataset.theme = chosen;
  const brand = document.getElementById("brand");
  const logo = chosen === "dark" ? S.LOGO_DARK || S.LOGO : S.LOGO;
  brand.replaceChildren(
    ...[
      logo ? h("img", { src: logo, alt: S.ORGANIZATION_NAME || "Logo" }) : null,
      h("span", {}, S.ORGANIZATION_NAME ? S.ORGANIZATION_NAME : "Event destinations"),
    ].filter(Boolean),
  );
  document.getElementById("theme-toggle").hidden = !!S.FORCE_THEME;
}

function brand() {
  if (S.BRAND_COLOR) {
    document.documentElement.style.setProperty("--brand", S.BRAND_COLOR);
    document.documentElement.style.setProperty("--brand-text", readableOn(S.BRAND_COLOR));
  }
  document.getElementById("theme-toggle").addEventListener("click", () => {
    const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
    sessionStorage.setItem(THEME_KEY, next);
    applyTheme();
  });
  applyTheme();
  document.getElementById("footer").replaceChildren(
    S.DISABLE_OUTPOST_BRANDING ? "" : h("span", {}, "Powered by Outrider"),
  );
}

/** Black or white text, whichever contrasts more with a hex colour. */
function readableOn(hex) {
  let x = hex.slice(1);
  if (x.length <= 4) x = [...x].map((c) => c + c).join("");
  const [r, g, b] = [0, 2, 4].map((i) => parseInt(x.slice(i, i + 2), 16) / 255);
  const lin = (c) => (c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4);
  const L = 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
  return (L + 0.05) / 0.05 > 1.05 / (L + 0.05) ? "#000000" : "#ffffff";
}

// ---- router --------------------------------------------------------------

let stopPage = () => {};
function route() {
  stopPage();
  stopPage = () => {};
  const hash = location.hash.startsWith("#/") ? location.hash.slice(2) : "";
  const parts = hash.split("?")[0].split("/").filter(Boolean).map(decodeURIComponent);
  let page;
  if (parts.length === 0) page = listPage();
  else if (parts[0] === "new") page = wizardPage();
  else if (parts[0] === "d" && parts[1]) {
    const tab = parts[2] || "overview";
    if (tab === "log" && parts[3]) page = attemptPage(parts[1], parts[3]);
    else page = destinationPage(parts[1], tab);
  } else page = Promise.resolve(h("p", {}, "Page not found. ", h("a", { href: "#/" }, "Back to destinations")));
  page
    .then((el) => {
      if (!el) return;
      $main.replaceChildren(el);
      // For the browser test's first-load figure.
      if (el.dataset.page) performance.mark(`portal-${el.dataset.page}-rendered`);
    })
    .catch((e) => {
      if (e instanceof ApiError && e.status === 401) return;
      $main.replaceChildren(errorBox(e), h("a", { href: "#/" }, "Back to destinations"));
    });
}

// ---- destinations list ---------------------------------------------------

async function listPage() {
  const metrics = api(
    `/metrics/attempts?time[start]=${enc(isoAgo(864e5))}&time[end]=${enc(new Date(Date.now() + 6e4).toISOString())}` +
      "&measures=successful_count&measures=failed_count&dimensions=destination_id",
  ).catch((e) => {
    if (e.status === 401) throw e;
    return { data: [] };
  });
  const [dests, , m] = await Promise.all([api(tpath("/destinations")), types(), metrics]);
  const counts = {};
  for (const row of m.data || []) counts[row.dimensions.destination_id] = row.metrics;
  const body = dests.length
    ? h(
        "table",
        { id: "destinations" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            h("th", {}, "Type"),
            h("th", {}, "Target"),
            h("th", { className: "hide-narrow" }, "Topics"),
            h("th", {}, "Status"),
            h("th", {}, "Last 24 hours"),
          ),
        ),
        h(
          "tbody",
          {},
          dests.map((d) => {
            const t = typeOf(d.type);
            const c = counts[d.id] || {};
            const ok = c.successful_count || 0;
            const bad = c.failed_count || 0;
            return h(
              "tr",
              { className: "link", dataset: { id: d.id }, onclick: () => (location.hash = `#/d/${enc(d.id)}`) },
              h("td", {}, typeIcon(t), t ? t.label : d.type),
              h("td", {}, h("a", { href: `#/d/${enc(d.id)}`, className: "mono" }, d.target || d.id)),
              h("td", { className: "hide-narrow" }, d.topics.join(", ")),
              h("td", {}, statusBadge(d)),
              h(
                "td",
                {},
                h("span", { className: "badge ok", title: "Successful attempts" }, `✓ ${ok}`),
                " ",
                h("span", { className: bad ? "badge bad" : "badge off", title: "Failed attempts" }, `✗ ${bad}`),
              ),
            );
          }),
        ),
      )
    : h("div", { className: "panel" }, h("p", {}, "No destinations yet. Add one to start receiving events."));
  const page = h(
    "section",
    { dataset: { page: "list" } },
    h("div", { className: "row spread" }, h("h1", {}, "Event destinations"), h("a", { className: "button primary", href: "#/new" }, "Add destination")),
    body,
  );
  return page;
}

// ---- forms shared by the wizard and the settings tab ---------------------

/** A field of a destination type, as an input bound to `values`. */
function fieldInput(section, f, values, opts = {}) {
  const id = `f-${section}-${f.key}`;
  const help = f.description ? h("div", { className: "help", id: id + "-help" }, f.description) : null;
  const current = values[f.key] ?? "";
  let input;
  if (f.type === "checkbox") {
    input = h("input", {
      type: "checkbox",
      id,
      checked: String(current || f.default || "") === "true",
      onchange: (e) => (values[f.key] = e.target.checked ? "true" : "false"),
    });
    if (values[f.key] === undefined && f.default) values[f.key] = f.default;
    return h("div", { className: "field", dataset: { key: `${section}.${f.key}` } }, h("label", { className: "check", htmlFor: id }, input, f.label), help);
  }
  if (f.type === "select") {
    input = h(
      "select",
      { id, required: !!f.required, onchange: (e) => (values[f.key] = e.target.value) },
      h("option", { value: "" }, "Choose…"),
      (f.options || []).map((o) => h("option", { value: o.value, selected: o.value === (current || f.default) }, o.label)),
    );
    if (values[f.key] === undefined && f.default) values[f.key] = f.default;
  } else if (f.key === "custom_headers") {
    return headersEditor(id, f, values);
  } else {
    input = h("input", {
      type: f.sensitive ? "password" : "text",
      id,
      autocomplete: "off",
      required: !!f.required && !opts.keepBlank,
      value: opts.keepBlank ? "" : current,
      placeholder: opts.keepBlank ? "Unchanged" : f.default || "",
      oninput: (e) => (values[f.key] = e.target.value),
    });
    if (f.pattern) input.dataset.pattern = f.pattern;
  }
  if (help) input.setAttribute("aria-describedby", help.id);
  return h(
    "div",
    { className: "field", dataset: { key: `${section}.${f.key}` } },
    h("label", { htmlFor: id }, f.label, f.required ? h("span", { "aria-hidden": "true" }, " *") : null),
    input,
    help,
  );
}

/** Webhook custom headers: rows of name and value, stored as a JSON object. */
function headersEditor(id, f, values) {
  let rows = [];
  try {
    rows = Object.entries(JSON.parse(values.custom_headers || "{}"));
  } catch {
    rows = [];
  }
  const list = h("div", {});
  const sync = () => {
    const o = {};
    for (const [k, v] of rows) if (k) o[k] = v;
    values.custom_headers = Object.keys(o).length ? JSON.stringify(o) : "";
  };
  const draw = () => {
    list.replaceChildren(
      ...rows.map((r, i) =>
        h(
          "div",
          { className: "kv" },
          h("input", { type: "text", value: r[0], placeholder: "Header name", "aria-label": `Header ${i + 1} name`, oninput: (e) => ((r[0] = e.target.value), sync()) }),
          h("input", { type: "text", value: r[1], placeholder: "Header value", "aria-label": `Header ${i + 1} value`, oninput: (e) => ((r[1] = e.target.value), sync()) }),
          h("button", { type: "button", className: "ghost", "aria-label": `Remove header ${i + 1}`, onclick: () => (rows.splice(i, 1), sync(), draw()) }, "✕"),
        ),
      ),
    );
  };
  draw();
  return h(
    "div",
    { className: "field", dataset: { key: "config.custom_headers" } },
    h("label", { id }, f.label || "Custom headers"),
    list,
    h("button", { type: "button", onclick: () => (rows.push(["", ""]), draw()) }, "Add header"),
    f.description ? h("div", { className: "help" }, f.description) : null,
  );
}

function visibleFields(t) {
  return (t.config_fields || []).filter((f) => f.key !== "custom_headers" || S.ENABLE_WEBHOOK_CUSTOM_HEADERS);
}

/** Marks the fields an API error names (`config.url is required`). */
function markInvalid(form, err) {
  form.querySelectorAll(".field.invalid").forEach((el) => el.classList.remove("invalid"));
  for (const msg of err.data || []) {
    const key = String(msg).split(" ")[0];
    const el = form.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (el) {
      el.classList.add("invalid");
      el.querySelector("input,select,textarea")?.setAttribute("aria-invalid", "true");
    }
  }
}

/** A form's submit handler: the submit button is off while `work` runs;
 *  an API error is shown above the form and on the fields it names. */
function submitting(work) {
  return async (e) => {
    e.preventDefault();
    const form = e.target;
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      await work();
    } catch (ex) {
      button.disabled = false;
      if (ex.status === 401) return;
      form.querySelector(".errors")?.remove();
      form.prepend(errorBox(ex));
      markInvalid(form, ex);
      form.querySelector(".errors")?.scrollIntoView({ block: "nearest" });
    }
  };
}

function topicsPicker(selected) {
  const wrap = h("fieldset", { className: "field", dataset: { key: "topics" } }, h("legend", {}, "Topics"));
  if (S.TOPICS && S.TOPICS.length) {
    const all = h("input", {
      type: "checkbox",
      id: "topic-all",
      checked: selected.includes("*"),
      onchange: (e) => {
        set("*", e.target.checked);
        wrap.querySelectorAll("input[data-topic]").forEach((c) => (c.disabled = e.target.checked));
      },
    });
    const set = (t, on) => {
      const i = selected.indexOf(t);
      if (on && i < 0) selected.push(t);
      if (!on && i >= 0) selected.splice(i, 1);
    };
    wrap.append(h("label", { className: "check", htmlFor: "topic-all" }, all, "All topics (*)"));
    S.TOPICS.forEach((t, i) => {
      const id = `topic-${i}`;
      wrap.append(
        h(
          "label",
          { className: "check", htmlFor: id },
          h("input", {
            type: "checkbox",
            id,
            dataset: { topic: t },
            checked: selected.includes(t),
            disabled: selected.includes("*"),
            onchange: (e) => set(t, e.target.checked),
          }),
          t,
        ),
      );
    });
  } else {
    const input = h("input", {
      type: "text",
      id: "topics-text",
      value: selected.join(", "),
      "aria-describedby": "topics-help",
      oninput: (e) => {
        selected.splice(0, selected.length, ...e.target.value.split(",").map((s) => s.trim()).filter(Boolean));
      },
    });
    wrap.append(h("label", { htmlFor: "topics-text" }, "Topics, comma-separated"), input, h("div", { className: "help", id: "topics-help" }, "Use * for every topic."));
  }
  return wrap;
}

function filterEditor(state) {
  if (!S.ENABLE_DESTINATION_FILTER) return null;
  return h(
    "div",
    { className: "field", dataset: { key: "filter" } },
    h("label", { htmlFor: "filter" }, "Filter (JSON, optional)"),
    h("textarea", {
      id: "filter",
      "aria-describedby": "filter-help",
      value: state.filter ? JSON.stringify(state.filter, null, 2) : "",
      oninput: (e) => (state.filterText = e.target.value),
    }),
    h("div", { className: "help", id: "filter-help" }, 'Only events matching it are delivered, e.g. {"data": {"amount": {"$gte": 100}}}.'),
  );
}

function readFilter(state) {
  if (state.filterText === undefined) return undefined;
  if (!state.filterText.trim()) return null;
  try {
    return JSON.parse(state.filterText);
  } catch {
    throw new ApiError(422, { message: "validation error", data: ["filter is not valid JSON"] });
  }
}

// ---- create wizard -------------------------------------------------------

async function wizardPage() {
  const all = await types();
  const st = { step: 1, type: null, topics: ["*"], config: {}, credentials: {} };
  const root = h("section", {});
  const draw = (err) => {
    const steps = h(
      "ol",
      { className: "steps", "aria-label": "Steps" },
      ["Type", "Topics", "Configuration"].map((n, i) => h("li", { className: st.step === i + 1 ? "now" : "", "aria-current": st.step === i + 1 ? "step" : null }, n)),
    );
    let body;
    if (st.step === 1) {
      body = h(
        "div",
        { className: "grid", role: "group", "aria-label": "Destination type" },
        all.map((t) =>
          h(
            "button",
            {
              type: "button",
              dataset: { type: t.type },
              "aria-pressed": st.type === t.type ? "true" : "false",
              onclick: () => {
                st.type = t.type;
                st.config = {};
                st.credentials = {};
                st.step = 2;
                draw();
              },
            },
            h("strong", {}, typeIcon(t), t.label),
            h("span", { className: "muted" }, t.description),
          ),
        ),
      );
    } else if (st.step === 2) {
      body = h(
        "form",
        {
          onsubmit: (e) => {
            e.preventDefault();
            if (!st.topics.length) return draw(new ApiError(422, { message: "Pick at least one topic" }));
            st.step = 3;
            draw();
          },
        },
        err ? errorBox(err) : null,
        topicsPicker(st.topics),
        h("div", { className: "row" }, h("button", { type: "button", onclick: () => ((st.step = 1), draw()) }, "Back"), h("button", { type: "submit", className: "primary" }, "Next")),
      );
    } else {
      const t = typeOf(st.type);
      const form = h(
        "form",
        {
          id: "config-form",
          onsubmit: submitting(async () => {
            const body = { type: st.type, topics: st.topics, config: clean(st.config), credentials: clean(st.credentials) };
            const f = readFilter(st);
            if (f) body.filter = f;
            const d = await api(tpath("/destinations"), { method: "POST", body });
            toast("Destination created");
            location.hash = `#/d/${enc(d.id)}`;
          }),
        },
        t.instructions ? h("div", { className: "panel" }, h("h2", {}, t.label), h("p", {}, withCode(t.instructions))) : null,
        h("h2", {}, "Configuration"),
        visibleFields(t).map((f) => fieldInput("config", f, st.config)),
        (t.credential_fields || []).length ? h("h2", {}, "Credentials") : null,
        (t.credential_fields || []).map((f) => fieldInput("credentials", f, st.credentials)),
        filterEditor(st),
        h("div", { className: "row" }, h("button", { type: "button", onclick: () => ((st.step = 2), draw()) }, "Back"), h("button", { type: "submit", className: "primary" }, "Create destination")),
      );
      body = form;
    }
    root.replaceChildren(h("h1", {}, "Add a destination"), steps, body);
    root.querySelector("input,button.primary,[data-type]")?.focus();
  };
  draw();
  return root;
}

/** Text with `backtick` spans shown as code, everything else as text. */
function withCode(text) {
  return String(text)
    .split("`")
    .map((part, i) => (i % 2 ? h("code", {}, part) : part));
}

function clean(values) {
  const o = {};
  for (const [k, v] of Object.entries(values)) if (v !== undefined && v !== "") o[k] = v;
  return o;
}

// ---- destination detail --------------------------------------------------

async function destinationPage(id, tab) {
  const [d] = await Promise.all([api(tpath(`/destinations/${enc(id)}`)), types()]);
  const t = typeOf(d.type);
  const tabs = [
    ["overview", "Overview"],
    ["settings", "Settings"],
    ["log", "Event deliveries"],
  ];
  const head = h(
    "div",
    {},
    h("p", {}, h("a", { href: "#/" }, "← Destinations")),
    h("div", { className: "row spread" }, h("h1", {}, typeIcon(t), `${t ? t.label : d.type}: `, h("span", { className: "mono" }, d.target || d.id)), statusBadge(d)),
    actions(d),
    h(
      "nav",
      { className: "tabs", "aria-label": "Destination" },
      tabs.map(([k, label]) => h("a", { href: `#/d/${enc(id)}/${k}`, "aria-current": tab === k ? "page" : null }, label)),
    ),
  );
  let body;
  if (tab === "settings") body = settingsTab(d, t);
  else if (tab === "log") body = logTab(d);
  else body = overviewTab(d, t);
  return h("section", {}, head, await body);
}

function actions(d) {
  const topics = d.topics.includes("*") ? (S.TOPICS && S.TOPICS.length ? S.TOPICS : []) : d.topics;
  const topicInput = topics.length
    ? h("select", { id: "test-topic", "aria-label": "Topic of the test event" }, topics.map((tp) => h("option", { value: tp }, tp)))
    : h("input", { id: "test-topic", type: "text", value: "test", "aria-label": "Topic of the test event", size: 12 });
  const run = (label, fn) => async (e) => {
    e.target.disabled = true;
    try {
      await fn();
    } catch (ex) {
      if (ex.status !== 401) alert(capital(ex.message) + (ex.data.length ? "\n" + ex.data.join("\n") : ""));
    } finally {
      e.target.disabled = false;
    }
  };
  return h(
    "div",
    { className: "row", id: "actions" },
    h(
      "button",
      {
        type: "button",
        id: "toggle",
        onclick: run("toggle", async () => {
          await api(tpath(`/destinations/${enc(d.id)}/${d.disabled_at ? "enable" : "disable"}`), { method: "PUT" });
          toast(d.disabled_at ? "Destination enabled" : "Destination disabled");
          route();
        }),
      },
      d.disabled_at ? "Enable" : "Disable",
    ),
    topicInput,
    h(
      "button",
      {
        type: "button",
        id: "send-test",
        disabled: !!d.disabled_at,
        onclick: run("test", async () => {
          const topic = document.getElementById("test-topic").value;
          const r = await api(tpath(`/destinations/${enc(d.id)}/test`), { method: "POST", body: { topic } });
          toast(`Test event ${r.id} sent`);
        }),
      },
      "Send test event",
    ),
    h(
      "button",
      {
        type: "button",
        className: "danger",
        id: "delete",
        onclick: run("delete", async () => {
          if (!confirm("Delete this destination? Events will no longer be delivered to it.")) return;
          await api(tpath(`/destinations/${enc(d.id)}`), { method: "DELETE" });
          toast("Destination deleted");
          location.hash = "#/";
        }),
      },
      "Delete",
    ),
  );
}

async function overviewTab(d, t) {
  const facts = h(
    "dl",
    { className: "facts" },
    h("dt", {}, "ID"),
    h("dd", { className: "mono" }, d.id),
    h("dt", {}, "Type"),
    h("dd", {}, t ? t.label : d.type),
    h("dt", {}, "Target"),
    h("dd", { className: "mono" }, d.target_url ? h("a", { href: d.target_url, rel: "noreferrer noopener", target: "_blank" }, d.target) : d.target),
    h("dt", {}, "Topics"),
    h("dd", {}, d.topics.join(", ")),
    h("dt", {}, "Created"),
    h("dd", {}, time(d.created_at)),
    d.disabled_at ? [h("dt", {}, "Disabled"), h("dd", {}, time(d.disabled_at))] : null,
    d.filter ? [h("dt", {}, "Filter"), h("dd", {}, h("pre", {}, JSON.stringify(d.filter, null, 2)))] : null,
  );
  const range = h(
    "select",
    { id: "range", "aria-label": "Time range of the charts" },
    h("option", { value: "24h" }, "Last 24 hours"),
    h("option", { value: "7d" }, "Last 7 days"),
    h("option", { value: "30d" }, "Last 30 days"),
  );
  const charts = h("div", { className: "charts", id: "charts" });
  const load = () => drawCharts(d, range.value, charts).catch((e) => charts.replaceChildren(errorBox(e)));
  range.addEventListener("change", load);
  await load();
  return h(
    "div",
    {},
    h("div", { className: "panel" }, facts),
    h("div", { className: "row spread" }, h("h2", {}, "Activity"), range),
    charts,
    d.type === "webhook" ? signatureSection(d) : null,
  );
}

const RANGES = { "24h": [864e5, "1h"], "7d": [7 * 864e5, "1d"], "30d": [30 * 864e5, "1d"] };

async function drawCharts(d, range, box) {
  const [span, gran] = RANGES[range];
  const end = new Date(Date.now() + 6e4);
  const start = new Date(end - span);
  const q = `time[start]=${enc(start.toISOString())}&time[end]=${enc(end.toISOString())}&filters[destination_id]=${enc(d.id)}`;
  const [events, attempts, codes, total] = await Promise.all([
    api(`/metrics/events?${q}&granularity=${gran}&measures=count`),
    api(`/metrics/attempts?${q}&granularity=${gran}&measures=successful_count&measures=failed_count`),
    api(`/metrics/attempts?${q}&measures=count&dimensions=code`),
    api(`/metrics/attempts?${q}&measures=count&measures=error_rate`),
  ]);
  const tot = (total.data[0] || {}).metrics || {};
  const rate = tot.count ? `${(100 * (tot.error_rate || 0)).toFixed(1)} %` : "—";
  const ev = (events.data || []).map((r) => ({ label: r.time_bucket, a: r.metrics.count || 0 }));
  const at = (attempts.data || []).map((r) => ({ label: r.time_bucket, a: r.metrics.successful_count || 0, b: r.metrics.failed_count || 0 }));
  const byCode = (codes.data || [])
    .map((r) => ({ label: r.dimensions.code || "none", a: r.metrics.count || 0 }))
    .sort((x, y) => y.a - x.a)
    .slice(0, 8);
  box.replaceChildren(
    chart("Events", bars(ev, "bar"), `${ev.reduce((s, r) => s + r.a, 0)} events`),
    chart("Successes and failures", bars(at, "bar-ok", "bar-bad"), `${at.reduce((s, r) => s + r.a, 0)} successful, ${at.reduce((s, r) => s + r.b, 0)} failed`),
    chart("Error rate", h("div", { className: "big", id: "error-rate" }, rate), `of ${tot.count || 0} attempts`),
    chart("By status code", hbars(byCode), byCode.length ? "" : "No attempts in this range"),
  );
}

function chart(title, body, legend) {
  return h("figure", { className: "chart panel" }, h("h3", {}, title), body, h("figcaption", { className: "legend" }, legend));
}

/** Stacked bars over time buckets: `a` (bottom) and optional `b`. */
function bars(rows, clsA, clsB) {
  const W = 300;
  const H = 120;
  const max = Math.max(1, ...rows.map((r) => r.a + (r.b || 0)));
  const w = rows.length ? W / rows.length : W;
  const s = svg("svg", { viewBox: `0 0 ${W} ${H + 14}`, role: "img", "aria-label": rows.map((r) => `${r.label}: ${r.a}${clsB ? ` ok, ${r.b} failed` : ""}`).join("; ") || "no data" });
  s.append(svg("line", { x1: 0, y1: H, x2: W, y2: H, class: "axis" }));
  rows.forEach((r, i) => {
    const ha = (r.a / max) * H;
    const hb = ((r.b || 0) / max) * H;
    const x = i * w + w * 0.15;
    const bw = Math.max(1, w * 0.7);
    const title = svg("title", {}, `${new Date(r.label).toLocaleString()}: ${r.a}${clsB ? ` successful, ${r.b} failed` : ""}`);
    if (ha) s.append(svg("rect", { x, y: H - ha, width: bw, height: ha, class: clsA }, title));
    if (hb) s.append(svg("rect", { x, y: H - ha - hb, width: bw, height: hb, class: clsB }, title.cloneNode(true)));
  });
  if (rows.length) {
    s.append(svg("text", { x: 0, y: H + 12 }, new Date(rows[0].label).toLocaleDateString()));
    s.append(svg("text", { x: W, y: H + 12, "text-anchor": "end" }, new Date(rows[rows.length - 1].label).toLocaleDateString()));
  }
  return s;
}

function hbars(rows) {
  const max = Math.max(1, ...rows.map((r) => r.a));
  const rowH = 16;
  const s = svg("svg", { viewBox: `0 0 300 ${Math.max(1, rows.length) * rowH}`, role: "img", "aria-label": rows.map((r) => `${r.label}: ${r.a}`).join("; ") || "no data" });
  rows.forEach((r, i) => {
    const ok = /^2/.test(r.label);
    s.append(svg("text", { x: 0, y: i * rowH + 11 }, r.label));
    s.append(svg("rect", { x: 50, y: i * rowH + 2, width: Math.max(1, (r.a / max) * 200), height: rowH - 5, class: ok ? "bar-ok" : "bar-bad" }));
    s.append(svg("text", { x: 255, y: i * rowH + 11 }, String(r.a)));
  });
  return s;
}

// ---- signature verification snippets -------------------------------------

function signatureSection(d) {
  const sig = S.SIGNATURE || {};
  if (sig.mode === "default" && !sig.header) return null;
  const langs = snippets(sig);
  const pre = h("pre", { id: "snippet", className: "mono", tabindex: "0" });
  const pick = h(
    "select",
    { id: "snippet-lang", "aria-label": "Language", onchange: (e) => (pre.textContent = langs[e.target.value]) },
    Object.keys(langs).map((k) => h("option", { value: k }, k)),
  );
  pre.textContent = langs[Object.keys(langs)[0]];
  return h(
    "div",
    {},
    h("h2", {}, "Verify our signatures"),
    h(
      "p",
      {},
      "Each request carries the header ",
      h("code", {}, sig.header),
      ". Compare it with this signature, computed with the destination's secret (Settings tab), before trusting the body.",
    ),
    pick,
    pre,
    h("button", { type: "button", onclick: () => navigator.clipboard?.writeText(pre.textContent).then(() => toast("Copied")) }, "Copy"),
  );
}

/** Code that recomputes the signature, from the deployment's templates. */
function snippets(sig) {
  if (sig.mode === "standard") {
    return {
      "Node.js": `// Standard Webhooks: npm install standardwebhooks
import { Webhook } from "standardwebhooks";
const wh = new Webhook(process.env.WEBHOOK_SECRET); // whsec_...
// headers: ${sig.id_header}, ${sig.timestamp_header}, ${sig.header}
const payload = wh.verify(rawBody, headers); // throws when invalid`,
      Python: `# Standard Webhooks: pip install standardwebhooks
from standardwebhooks.webhooks import Webhook
wh = Webhook(os.environ["WEBHOOK_SECRET"])  # whsec_...
payload = wh.verify(raw_body, headers)  # raises when invalid`,
    };
  }
  // The signed content: the template's parts joined, each a variable the
  // receiver reads from the request or a literal.
  const parts = [];
  const re = /\{\{\s*(\.[A-Za-z.]+)\s*\}\}/g;
  let last = 0;
  let m;
  const tpl = sig.content_template || "{{.Body}}";
  while ((m = re.exec(tpl))) {
    if (m.index > last) parts.push({ lit: tpl.slice(last, m.index) });
    parts.push({ v: m[1] });
    last = re.lastIndex;
  }
  if (last < tpl.length) parts.push({ lit: tpl.slice(last) });
  const src = {
    ".Body": { js: "rawBody", py: "raw_body.decode()", go: "string(rawBody)" },
    ".EventID": { js: `req.headers["${sig.event_id_header}"]`, py: `headers["${sig.event_id_header}"]`, go: `r.Header.Get("${sig.event_id_header}")` },
    ".Topic": { js: `req.headers["${sig.topic_header}"]`, py: `headers["${sig.topic_header}"]`, go: `r.Header.Get("${sig.topic_header}")` },
    ".Timestamp.Unix": { js: `req.headers["${sig.timestamp_header}"]`, py: `headers["${sig.timestamp_header}"]`, go: `r.Header.Get("${sig.timestamp_header}")` },
  };
  // A template built from something this page cannot rebuild (another
  // variable, a function): say so rather than show code that never matches.
  const unknown = parts
    .filter((p) => (p.v !== undefined && !src[p.v]) || (p.lit !== undefined && p.lit.includes("{{")))
    .map((p) => (p.v !== undefined ? `{{${p.v}}}` : p.lit));
  if (unknown.length) {
    const note = `This deployment signs "${tpl}" (${unknown.join(", ")} cannot be rebuilt here): ask the operator how to verify it.`;
    return { "Node.js": note, Python: note, Go: note };
  }
  const join = (lang, sep) =>
    parts.map((p) => (p.lit !== undefined ? JSON.stringify(p.lit) : src[p.v][lang])).join(sep);
  // The header template puts the signatures after a prefix (`v0=`); more
  // than one is sent while a rotated secret still signs.
  const ht = sig.header_template || 'v0={{.Signatures | join ","}}';
  const pm = /^(.*?)\{\{\s*\.Signatures\s*\|\s*join\s*"([^"]*)"\s*\}\}/.exec(ht);
  const prefix = pm ? pm[1].replace(/.*[, ]/, "") : "v0=";
  const sep = pm ? pm[2] || "," : ",";
  const alg = sig.algorithm || "sha256";
  const b64 = sig.encoding === "base64";
  return {
    "Node.js": `import { createHmac, timingSafeEqual } from "node:crypto";

// rawBody: the request body as a string, before any JSON parsing.
function verify(req, rawBody, secret) {
  const content = ${join("js", " + ")};
  const expected = createHmac("${alg}", secret).update(content).digest("${b64 ? "base64" : "hex"}");
  const header = String(req.headers["${sig.header}"] || "");
  const given = header.slice(header.indexOf("${prefix}") + ${prefix.length}).split(${JSON.stringify(sep)});
  return given.some((s) => s.length === expected.length &&
    timingSafeEqual(Buffer.from(s), Buffer.from(expected)));
}`,
    Python: `import hmac, hashlib${b64 ? ", base64" : ""}

def verify(headers, raw_body: bytes, secret: str) -> bool:
    content = ${parts.map((p) => (p.lit !== undefined ? JSON.stringify(p.lit) : src[p.v].py)).join(" + ")}
    mac = hmac.new(secret.encode(), content.encode(), hashlib.${alg})
    expected = ${b64 ? "base64.b64encode(mac.digest()).decode()" : "mac.hexdigest()"}
    header = headers.get("${sig.header}", "")
    given = header[header.find("${prefix}") + ${prefix.length}:].split(${JSON.stringify(sep)})
    return any(hmac.compare_digest(s, expected) for s in given)`,
    Go: `import (
\t"crypto/hmac"
\t"crypto/${alg}"
\t"encoding/${b64 ? "base64" : "hex"}"
\t"net/http"
\t"strings"
)

func verify(r *http.Request, rawBody []byte, secret string) bool {
\tcontent := ${join("go", " + ")}
\tmac := hmac.New(${alg}.New, []byte(secret))
\tmac.Write([]byte(content))
\texpected := ${b64 ? "base64.StdEncoding.EncodeToString" : "hex.EncodeToString"}(mac.Sum(nil))
\theader := r.Header.Get("${sig.header}")
\tgiven := header[strings.Index(header, "${prefix}")+${prefix.length}:]
\tfor _, s := range strings.Split(given, ${JSON.stringify(sep)}) {
\t\tif hmac.Equal([]byte(s), []byte(expected)) {
\t\t\treturn true
\t\t}
\t}
\treturn false
}`,
  };
}

// ---- settings ------------------------------------------------------------

async function settingsTab(d, t) {
  const st = { topics: [...d.topics], config: { ...d.config }, credentials: {}, filter: d.filter };
  const form = h(
    "form",
    {
      id: "settings-form",
      onsubmit: submitting(async () => {
        const body = { topics: st.topics, config: st.config };
        const creds = clean(st.credentials);
        if (Object.keys(creds).length) body.credentials = creds;
        const f = readFilter(st);
        if (f !== undefined) body.filter = f || {};
        await api(tpath(`/destinations/${enc(d.id)}`), { method: "PATCH", body });
        toast("Saved");
        route();
      }),
    },
    topicsPicker(st.topics),
    visibleFields(t).map((f) => fieldInput("config", f, st.config)),
    (t.credential_fields || []).length ? h("h2", {}, "Credentials") : null,
    // Credentials start blank ("unchanged"): only what is typed is sent.
    (t.credential_fields || []).map((f) => fieldInput("credentials", f, {}, { keepBlank: true })),
    filterEditor(st),
    h("button", { type: "submit", className: "primary" }, "Save"),
  );
  // Sensitive inputs start blank; typing sets them in `st.credentials`.
  form.querySelectorAll('[data-key^="credentials."] input').forEach((input) => {
    const key = input.closest(".field").dataset.key.slice("credentials.".length);
    input.addEventListener("input", (e) => (st.credentials[key] = e.target.value));
  });
  const secret = d.type === "webhook" && d.credentials.secret ? secretPanel(d) : null;
  return h("div", {}, secret, form);
}

function secretPanel(d) {
  const value = h("code", { id: "secret", className: "mono" }, "•".repeat(24));
  let shown = false;
  return h(
    "div",
    { className: "panel" },
    h("h2", {}, "Signing secret"),
    h("p", {}, value),
    d.credentials.previous_secret_invalid_at ? h("p", { className: "muted" }, `The previous secret signs too until ${time(d.credentials.previous_secret_invalid_at)}.`) : null,
    h(
      "div",
      { className: "row" },
      h("button", { type: "button", onclick: (e) => ((shown = !shown), (value.textContent = shown ? d.credentials.secret : "•".repeat(24)), (e.target.textContent = shown ? "Hide" : "Reveal")) }, "Reveal"),
      h(
        "button",
        {
          type: "button",
          id: "rotate",
          onclick: async () => {
            if (!confirm("Rotate the signing secret? The current one keeps signing for 24 hours.")) return;
            try {
              await api(tpath(`/destinations/${enc(d.id)}`), { method: "PATCH", body: { credentials: { rotate_secret: "true" } } });
              toast("Secret rotated");
              route();
            } catch (ex) {
              if (ex.status !== 401) alert(capital(ex.message));
            }
          },
        },
        "Rotate secret",
      ),
    ),
  );
}

// ---- delivery log --------------------------------------------------------

const LOG_RANGES = { "1h": 36e5, "24h": 864e5, "7d": 7 * 864e5, "30d": 30 * 864e5, all: 0 };

async function logTab(d) {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const st = {
    range: params.get("range") || "24h",
    status: params.get("status") || "",
    topic: params.get("topic") || "",
    cursor: null,
    live: params.get("live") !== "0",
  };
  const table = h("div", { id: "log", "aria-live": "polite" });
  const pager = h("div", { className: "pager" });
  const load = async () => {
    let q = `?include=event&limit=25`;
    if (LOG_RANGES[st.range]) q += `&time[gte]=${enc(isoAgo(LOG_RANGES[st.range]))}`;
    if (st.status) q += `&status=${st.status}`;
    if (st.topic) q += `&topic=${enc(st.topic)}`;
    if (st.cursor) q += `&${st.cursor[0]}=${enc(st.cursor[1])}`;
    const page = await api(tpath(`/destinations/${enc(d.id)}/attempts${q}`));
    drawLog(d, page, table);
    pager.replaceChildren(
      h("button", { type: "button", disabled: !page.pagination.prev, onclick: () => ((st.cursor = ["prev", page.pagination.prev]), load()) }, "Newer"),
      h("button", { type: "button", disabled: !page.pagination.next, onclick: () => ((st.cursor = ["next", page.pagination.next]), load()) }, "Older"),
    );
  };
  const changed = () => {
    st.cursor = null;
    load().catch((e) => table.replaceChildren(errorBox(e)));
  };
  const sel = (id, label, value, opts, key) =>
    h(
      "label",
      { htmlFor: id },
      label,
      " ",
      h(
        "select",
        { id, onchange: (e) => ((st[key] = e.target.value), changed()) },
        opts.map(([v, l]) => h("option", { value: v, selected: v === value }, l)),
      ),
    );
  const topics = d.topics.includes("*") ? S.TOPICS || [] : d.topics;
  const filters = h(
    "div",
    { className: "row", id: "log-filters" },
    sel("log-range", "Time", st.range, [["1h", "Last hour"], ["24h", "Last 24 hours"], ["7d", "Last 7 days"], ["30d", "Last 30 days"], ["all", "All"]], "range"),
    sel("log-status", "Status", st.status, [["", "All"], ["success", "Successful"], ["failed", "Failed"]], "status"),
    topics.length
      ? sel("log-topic", "Topic", st.topic, [["", "All"], ...topics.map((t) => [t, t])], "topic")
      : h("label", { htmlFor: "log-topic" }, "Topic ", h("input", { id: "log-topic", type: "text", size: 12, value: st.topic, onchange: (e) => ((st.topic = e.target.value.trim()), changed()) })),
    h("label", { className: "check", htmlFor: "log-live" }, h("input", { type: "checkbox", id: "log-live", checked: st.live, onchange: (e) => (st.live = e.target.checked) }), "Live"),
  );
  await load();
  // Live: the newest page again every 2 seconds while it is shown and the
  // tab is visible; never faster than once a second.
  const timer = setInterval(() => {
    if (st.live && !st.cursor && !document.hidden) load().catch(() => {});
  }, 2000);
  stopPage = () => clearInterval(timer);
  return h("div", {}, filters, table, pager);
}

function drawLog(d, page, box) {
  if (!page.models.length) {
    box.replaceChildren(h("p", { className: "muted" }, "No deliveries match these filters yet."));
    return;
  }
  box.replaceChildren(
    h(
      "table",
      { id: "attempts" },
      h("thead", {}, h("tr", {}, h("th", {}, "Time"), h("th", {}, "Status"), h("th", {}, "Topic"), h("th", { className: "hide-narrow" }, "Event"), h("th", { className: "hide-narrow" }, "Attempt"))),
      h(
        "tbody",
        {},
        page.models.map((a) =>
          h(
            "tr",
            { className: "link", dataset: { id: a.id }, onclick: () => (location.hash = `#/d/${enc(d.id)}/log/${enc(a.id)}`) },
            h("td", {}, h("a", { href: `#/d/${enc(d.id)}/log/${enc(a.id)}` }, time(a.time))),
            h("td", {}, attemptBadge(a)),
            h("td", {}, (a.event && a.event.topic) || ""),
            h("td", { className: "mono hide-narrow" }, a.event_id),
            h("td", { className: "hide-narrow" }, `#${a.attempt_number}${a.manual ? " (manual)" : ""}`),
          ),
        ),
      ),
    ),
  );
}

function attemptBadge(a) {
  const ok = a.status === "success";
  return h("span", { className: ok ? "badge ok" : "badge bad" }, `${ok ? "Success" : "Failed"}${a.code ? " · " + a.code : ""}`);
}

async function attemptPage(destId, attemptId) {
  const a = await api(tpath(`/destinations/${enc(destId)}/attempts/${enc(attemptId)}?include=event.data&include=response_data`));
  const ev = a.event || {};
  const resp = a.response_data || {};
  const body = resp.body !== undefined ? (typeof resp.body === "string" ? resp.body : JSON.stringify(resp.body, null, 2)) : "";
  return h(
    "section",
    { id: "attempt" },
    h("p", {}, h("a", { href: `#/d/${enc(destId)}/log` }, "← Event deliveries")),
    h("div", { className: "row spread" }, h("h1", {}, "Delivery attempt"), attemptBadge(a)),
    h(
      "dl",
      { className: "facts panel" },
      h("dt", {}, "Attempt"),
      h("dd", { className: "mono" }, a.id),
      h("dt", {}, "Time"),
      h("dd", {}, time(a.time)),
      h("dt", {}, "Event"),
      h("dd", { className: "mono" }, a.event_id),
      h("dt", {}, "Topic"),
      h("dd", {}, ev.topic || ""),
      h("dt", {}, "Attempt number"),
      h("dd", {}, `${a.attempt_number}${a.manual ? " (manual retry)" : ""}`),
      h("dt", {}, "Response status"),
      h("dd", {}, a.code || "none"),
    ),
    h(
      "div",
      { className: "row" },
      h(
        "button",
        {
          type: "button",
          className: "primary",
          id: "retry",
          onclick: async (e) => {
            e.target.disabled = true;
            try {
              await api("/retry", { method: "POST", body: { event_id: a.event_id, destination_id: destId } });
              toast("Retry queued: it will appear in the log");
            } catch (ex) {
              if (ex.status !== 401) alert(capital(ex.message));
            } finally {
              e.target.disabled = false;
            }
          },
        },
        "Retry",
      ),
    ),
    h("h2", {}, "Request data"),
    h("pre", { id: "event-data", tabindex: "0" }, JSON.stringify(ev.data ?? null, null, 2)),
    ev.metadata && Object.keys(ev.metadata).length ? [h("h2", {}, "Metadata"), h("pre", { tabindex: "0" }, JSON.stringify(ev.metadata, null, 2))] : null,
    h("h2", {}, "Response"),
    h("pre", { id: "response-body", tabindex: "0" }, body || "(no body)"),
  );
}

// ---- start ---------------------------------------------------------------

function start() {
  takeTokenFromUrl();
  brand();
  TOKEN = sessionStorage.getItem(TOKEN_KEY);
  const c = TOKEN && claims(TOKEN);
  if (!c || !c.sub || (c.exp && c.exp * 1000 <= Date.now())) return leave();
  TENANT = c.sub;
  document.getElementById("tenant").textContent = TENANT;
  // Sessions end when the token does: leave at that moment, not at the
  // next failed call.
  if (c.exp) setTimeout(leave, Math.min(c.exp * 1000 - Date.now(), 2 ** 31 - 1));
  addEventListener("hashchange", () => {
    route();
    $main.focus({ preventScroll: true });
  });
  route();
}

start();
