// tagstream console: a client of the /v1 API, in plain JavaScript (no build step, no CDN).
// Every piece of data is put in the page with textContent (never innerHTML): user ids, tag
// values and descriptions are data, not markup.
"use strict";

const TOKEN_KEY = "tagstream.token";
const numbers = new Intl.NumberFormat();
let zone = "UTC";
let timeFormat = makeTimeFormat(zone);
// Each view render gets a number; answers that arrive for an older render are dropped.
let renderId = 0;

function makeTimeFormat(timeZone) {
  return new Intl.DateTimeFormat("en-CA", {
    timeZone, year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", hourCycle: "h23",
  });
}

function fmtNum(n) { return numbers.format(n); }
function count(n, one, many) { return `${fmtNum(n)} ${n === 1 ? one : many}`; }
function fmtTime(ms) { return timeFormat.format(new Date(ms)).replace(",", ""); }

// h("tag", {attr: value, onclick: fn}, child...) builds an element; strings become text nodes.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) el.append(c);
  return el;
}

function status(text) {
  const s = document.getElementById("status");
  s.textContent = text;
  if (text) setTimeout(() => { if (s.textContent === text) s.textContent = ""; }, 4000);
}

// ---------------------------------------------------------------------------------------
// The API, with the bearer token asked for once and kept in sessionStorage.

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

let tokenPrompt = null;

// Opens the token dialog (once for every request waiting on it); resolves when a token is given.
function askToken(message) {
  if (tokenPrompt) return tokenPrompt;
  const dialog = document.getElementById("token-dialog");
  const form = document.getElementById("token-form");
  const input = document.getElementById("token-input");
  const error = document.getElementById("token-error");
  error.hidden = !message;
  error.textContent = message || "";
  input.value = "";
  tokenPrompt = new Promise((resolve) => {
    const done = (event) => {
      event.preventDefault();
      const token = input.value.trim();
      if (!token) return;
      form.removeEventListener("submit", done);
      sessionStorage.setItem(TOKEN_KEY, token);
      dialog.close();
      tokenPrompt = null;
      resolve();
    };
    form.addEventListener("submit", done);
  });
  // A dialog dismissed with Escape would leave the page without data: keep it up.
  dialog.addEventListener("cancel", (e) => e.preventDefault(), { once: true });
  if (!dialog.open) dialog.showModal();
  input.focus();
  return tokenPrompt;
}

async function request(method, path, body) {
  for (;;) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = {};
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401) {
      let message = null;
      if (token) {
        sessionStorage.removeItem(TOKEN_KEY);
        const answer = await response.json().catch(() => ({}));
        message = `The server refused this token (401): ${answer.error || "unauthorized"}`;
      }
      await askToken(message);
      continue;
    }
    return response;
  }
}

async function api(method, path, body) {
  const response = await request(method, path, body);
  const text = await response.text();
  let value = null;
  try { value = text ? JSON.parse(text) : null; } catch (_) { value = { error: text }; }
  if (!response.ok) throw new ApiError(response.status, value);
  return value;
}

// Downloads an NDJSON export: fetched with the token (a plain link could not send it).
async function download(method, path, body, filename) {
  status("Exporting…");
  const response = await request(method, path, body);
  if (!response.ok) {
    const answer = await response.json().catch(() => ({}));
    status(`Export failed: ${answer.error || response.status}`);
    return;
  }
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  status(`Exported ${filename}`);
}

function errorBox(e) {
  return h("p", { class: "error", role: "alert" }, e instanceof ApiError ? `${e.message} (HTTP ${e.status})` : String(e));
}

// ---------------------------------------------------------------------------------------
// Charts: inline SVG step lines (a segment's size holds until its next point).

function stepPath(points, x, y) {
  let d = "";
  points.forEach((p, i) => {
    const px = x(p.ts).toFixed(1), py = y(p.size).toFixed(1);
    if (i === 0) d += `M${px},${py}`;
    else d += `H${px}V${py}`;
  });
  return d;
}

// At most `max` points: every k-th one, keeping the last (sizes between are step values).
function thin(points, max) {
  if (points.length <= max) return points;
  const k = Math.ceil(points.length / max);
  const out = points.filter((_, i) => i % k === 0);
  if (out[out.length - 1] !== points[points.length - 1]) out.push(points[points.length - 1]);
  return out;
}

function sparkline(points) {
  const w = 120, hgt = 26;
  const el = svg("svg", { class: "spark", width: w, height: hgt, viewBox: `0 0 ${w} ${hgt}`, role: "img" });
  if (points.length === 0) {
    el.setAttribute("aria-label", "no history yet");
    return el;
  }
  points = thin(points, 200);
  const t0 = points[0].ts, t1 = Math.max(points[points.length - 1].ts, t0 + 1);
  const max = Math.max(1, ...points.map((p) => p.size));
  const x = (t) => 1 + ((t - t0) / (t1 - t0)) * (w - 2);
  const y = (s) => hgt - 2 - (s / max) * (hgt - 4);
  el.setAttribute("aria-label", `size from ${fmtNum(points[0].size)} to ${fmtNum(points[points.length - 1].size)}`);
  el.append(svg("path", { d: stepPath(points, x, y), fill: "none", stroke: "#2357c6", "stroke-width": 1.5 }));
  return el;
}

function chart(points) {
  const w = 800, hgt = 260, left = 56, right = 12, top = 12, bottom = 34;
  const el = svg("svg", { class: "chart", viewBox: `0 0 ${w} ${hgt}`, role: "img" });
  if (points.length === 0) {
    el.setAttribute("aria-label", "no history yet");
    el.append(svg("text", { x: left, y: hgt / 2 }, "No history yet"));
    return el;
  }
  points = thin(points, 1000);
  const t0 = points[0].ts, t1 = Math.max(points[points.length - 1].ts, t0 + 60000);
  const max = Math.max(1, ...points.map((p) => p.size));
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (w - left - right);
  const y = (s) => top + (1 - s / max) * (hgt - top - bottom);
  el.setAttribute("aria-label", `segment size from ${fmtTime(t0)} to ${fmtTime(t1)} (${zone}), between 0 and ${fmtNum(max)}`);
  for (const v of [0, Math.round(max / 2), max]) {
    el.append(svg("line", { x1: left, x2: w - right, y1: y(v), y2: y(v), stroke: "#e3e6eb" }));
    el.append(svg("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end" }, fmtNum(v)));
  }
  el.append(svg("text", { x: left, y: hgt - 10 }, fmtTime(t0)));
  el.append(svg("text", { x: w - right, y: hgt - 10, "text-anchor": "end" }, `${fmtTime(t1)} (${zone})`));
  el.append(svg("path", { d: stepPath(points, x, y), fill: "none", stroke: "#2357c6", "stroke-width": 2 }));
  return el;
}

// The history from `since` (epoch ms); all of it when that range holds no change, as after a
// replay of old events, where the engine's time is far from the wall clock.
async function history(name, since) {
  const path = `/v1/segments/${encodeURIComponent(name)}/history`;
  const recent = await api("GET", `${path}?since=${since}`);
  if (recent.points.length > 1) return { points: recent.points, all: false };
  const all = await api("GET", path);
  return { points: all.points, all: true };
}

const DAY = 86400000;

// ---------------------------------------------------------------------------------------
// Views.

async function segmentsView(main, id) {
  const { segments } = await api("GET", "/v1/segments");
  if (id !== renderId) return;
  const body = h("tbody");
  const table = h("table", { id: "segments-table" },
    h("caption", { class: "muted" },
      "Live sizes; the trend is the last day of history."),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "Segment"), h("th", { scope: "col", class: "hide-narrow" }, "Description"),
      h("th", { scope: "col" }, "Emits"), h("th", { scope: "col", class: "num" }, "Size"),
      h("th", { scope: "col" }, "Trend"))),
    body);
  main.replaceChildren(h("h1", {}, "Segments"), h("div", { class: "scroll" }, table));
  for (const s of segments) {
    const trend = h("td", { class: "trend" });
    body.append(h("tr", { dataset: { segment: s.name } },
      h("td", {}, h("a", { href: `#/segments/${encodeURIComponent(s.name)}` }, s.name),
        s.warming_until ? h("div", { class: "muted" }, `warming until ${fmtTime(s.warming_until)}`) : null),
      h("td", { class: "hide-narrow" }, s.description || h("span", { class: "muted" }, "—")),
      h("td", {}, s.emit ? "yes" : "no"),
      h("td", { class: "num size", dataset: { value: s.size } }, fmtNum(s.size)),
      trend));
    history(s.name, Date.now() - DAY)
      .then((hist) => trend.append(sparkline(hist.points)))
      .catch(() => trend.append(h("span", { class: "muted" }, "—")));
  }
  if (segments.length === 0) body.append(h("tr", {}, h("td", { colspan: 5 }, "The rules define no segment.")));
}

async function segmentView(main, id, name) {
  const { segments } = await api("GET", "/v1/segments");
  if (id !== renderId) return;
  const seg = segments.find((s) => s.name === name);
  if (!seg) {
    main.replaceChildren(h("h1", {}, name), errorBox(`unknown segment ${name}`));
    return;
  }
  const chartBox = h("div", { class: "card", id: "segment-chart" }, h("p", { class: "muted" }, "Loading history…"));
  const range = h("select", { id: "chart-range" },
    h("option", { value: 1 }, "last day"), h("option", { value: 7, selected: true }, "last 7 days"),
    h("option", { value: 30 }, "last 30 days"));
  const drawChart = async () => {
    try {
      const hist = await history(name, Date.now() - Number(range.value) * DAY);
      chartBox.replaceChildren(chart(hist.points),
        h("p", { class: "muted" }, hist.all ? "Whole history (the engine's time is not near the present)." : `Times in ${zone}.`));
    } catch (e) { chartBox.replaceChildren(errorBox(e)); }
  };
  range.addEventListener("change", drawChart);
  const members = h("ol", { class: "members", id: "segment-members" });
  const pager = h("div", { class: "row" });
  const loadPage = async (cursor, first) => {
    const q = cursor ? `&cursor=${encodeURIComponent(cursor)}` : "";
    const page = await api("GET", `/v1/segments/${encodeURIComponent(name)}/members?limit=50${q}`);
    members.replaceChildren(...page.members.map((m) => h("li", {}, h("a", { href: `#/users/${encodeURIComponent(m)}` }, m))));
    if (page.members.length === 0) members.replaceChildren(h("li", { class: "muted" }, "No members."));
    pager.replaceChildren(
      first ? null : h("button", { class: "secondary", onclick: () => loadPage(null, true) }, "First page"),
      page.next_cursor ? h("button", { class: "secondary", id: "members-next", onclick: () => loadPage(page.next_cursor, false) }, "Next page") : null);
  };
  main.replaceChildren(
    h("p", {}, h("a", { href: "#/segments" }, "← Segments")),
    h("h1", {}, seg.name),
    seg.description ? h("p", {}, seg.description) : null,
    h("div", { class: "row" },
      h("span", { class: "badge value", id: "segment-size", dataset: { value: seg.size } }, `${fmtNum(seg.size)} members`),
      h("span", { class: "badge null" }, seg.emit ? "emits transitions" : "helper segment (emit = false)")),
    h("h2", {}, "Rule"),
    h("pre", { id: "segment-rule" }, seg.rule),
    h("h2", {}, h("label", { for: "chart-range", class: "inline" }, "Size over "), range),
    chartBox,
    h("h2", {}, "Members"),
    h("div", { class: "row" }, h("button", {
      id: "segment-export",
      onclick: () => download("GET", `/v1/segments/${encodeURIComponent(name)}/export`, undefined, `${name}.ndjson`),
    }, "Export all (NDJSON)")),
    members, pager);
  await Promise.all([drawChart(), loadPage(null, true)]);
}

// The conditions that make a non-member fail: walk down from the root through children that
// are not TRUE; the deepest such nodes are where the rule fails (every failing operand of an
// AND, every operand of an OR, or a NOT whose operand holds).
function failing(node) {
  if (node.value === true) return [];
  const kids = (node.children || []).filter((c) => typeof c.value === "boolean" || c.value === null);
  const down = kids.filter((c) => c.value !== true);
  if (down.length === 0) return [node];
  return down.flatMap(failing);
}

function valueBadge(v) {
  if (v === null) return h("span", { class: "badge null" }, "NULL");
  if (v === true || v === false) return h("span", { class: `badge ${v}` }, v ? "TRUE" : "FALSE");
  return h("span", { class: "badge value" }, typeof v === "number" ? fmtNum(v) : JSON.stringify(v));
}

function treeNode(node, fails) {
  const label = h("span", { class: `node${fails.has(node) ? " failing" : ""}` },
    h("code", {}, node.expr), valueBadge(node.value),
    node.segment ? h("span", { class: "muted" }, "segment") : null);
  const kids = node.children || [];
  return h("li", {}, label, kids.length ? h("ul", {}, kids.map((c) => treeNode(c, fails))) : null);
}

function explainBox(explained) {
  const fails = new Set(explained.member ? [] : failing(explained.tree));
  return h("div", {},
    h("p", { class: "muted" }, `Evaluated at ${fmtTime(explained.now)} (${zone}).`),
    explained.member ? null : h("p", {}, "The highlighted conditions are why the user is out."),
    h("ul", { class: "tree" }, treeNode(explained.tree, fails)),
    Object.keys(explained.tags).length ? h("p", { class: "muted" }, "Tags read: ",
      Object.entries(explained.tags).map(([k, v], i) => [i ? ", " : "", h("code", {}, k), " = ", valueBadge(v)])) : null);
}

async function userView(main, id, user) {
  const input = h("input", { id: "user-input", type: "search", value: user || "", autocomplete: "off", placeholder: "u000001" });
  const form = h("form", { class: "row", role: "search" }, input, h("button", { type: "submit" }, "Look up"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (input.value.trim()) location.hash = `#/users/${encodeURIComponent(input.value.trim())}`;
  });
  const out = h("div", { id: "user-out" });
  main.replaceChildren(h("h1", {}, "User"), h("label", { for: "user-input" }, "User id"), form, out);
  if (!user) { input.focus(); return; }
  let profile;
  try {
    profile = await api("GET", `/v1/users/${encodeURIComponent(user)}`);
  } catch (e) {
    if (id !== renderId) return;
    out.replaceChildren(e.status === 404 ? h("p", { class: "error", role: "alert" }, `No user ${user} in state.`) : errorBox(e));
    return;
  }
  const [{ tags }, { segments }] = await Promise.all([api("GET", "/v1/tags"), api("GET", "/v1/segments")]);
  if (id !== renderId) return;
  const catalog = new Map(tags.map((t) => [t.name, t]));
  const tagRows = Object.entries(profile.tags).map(([name, value]) => {
    const t = catalog.get(name);
    return h("tr", { dataset: { tag: name, value: JSON.stringify(value) } },
      h("th", { scope: "row" }, h("code", {}, name)), h("td", {}, valueBadge(value)),
      h("td", {}, t && t.description ? t.description : h("span", { class: "muted" }, "—"),
        t ? h("span", { class: "muted" }, ` (${t.kind}${t.window ? `, ${t.window}` : ""})`) : null));
  });
  const member = new Set(profile.segments);
  const explains = h("div", { id: "user-explains" });
  out.replaceChildren(
    h("h2", {}, `Segments of ${profile.user_id}`),
    h("ul", { id: "user-segments" }, profile.segments.length
      ? profile.segments.map((s) => h("li", { dataset: { segment: s } }, h("a", { href: `#/segments/${encodeURIComponent(s)}` }, s)))
      : h("li", { class: "muted" }, "In no segment.")),
    h("h2", {}, "Why in or out"), explains,
    h("h2", {}, "Tags"),
    h("div", { class: "scroll" }, h("table", { id: "user-tags" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Tag"), h("th", { scope: "col" }, "Value"), h("th", { scope: "col" }, "Description"))),
      h("tbody", {}, tagRows))));
  for (const s of segments) {
    const box = h("div", {}, h("p", { class: "muted" }, "Loading…"));
    const inside = member.has(s.name);
    explains.append(h("details", { class: "explain", dataset: { segment: s.name } },
      h("summary", {}, h("strong", {}, s.name),
        h("span", { class: `badge ${inside}` }, inside ? "in" : "out"),
        s.description ? h("span", { class: "muted" }, s.description) : null),
      box));
    api("GET", `/v1/users/${encodeURIComponent(user)}/explain?segment=${encodeURIComponent(s.name)}`)
      .then((e) => {
        box.replaceChildren(explainBox(e));
        box.parentElement.dataset.member = String(e.member);
      })
      .catch((e) => box.replaceChildren(errorBox(e)));
  }
}

let audienceTimer = null;
let audienceSeq = 0;

async function audienceView(main, id) {
  const input = h("input", { id: "audience-input", type: "text", class: "mono", autocomplete: "off", spellcheck: "false",
    placeholder: "vip_skincare AND NOT churn_risk_high", "aria-describedby": "audience-state" });
  const state = h("div", { id: "audience-state", "aria-live": "polite" }, h("p", { class: "muted" }, "Type a condition over segments and tags."));
  const result = h("div", { id: "audience-result" });
  const names = h("p", { class: "muted" });
  main.replaceChildren(h("h1", {}, "Audience builder"),
    h("label", { for: "audience-input" }, "Condition over segments and tags"), input, state, result,
    h("h2", {}, "Names you can use"), names);
  input.addEventListener("input", () => {
    clearTimeout(audienceTimer);
    audienceTimer = setTimeout(() => evaluateAudience(input.value, state, result), 300);
  });
  input.focus();
  const [{ tags }, { segments }] = await Promise.all([api("GET", "/v1/tags"), api("GET", "/v1/segments")]);
  if (id !== renderId) return;
  names.replaceChildren(h("span", {}, "Segments: ", segments.map((s, i) => [i ? ", " : "", h("code", {}, s.name)]),
    ". Tags: ", tags.map((t, i) => [i ? ", " : "", h("code", {}, t.name)]), "."));
}

async function evaluateAudience(expr, state, result) {
  const seq = ++audienceSeq;
  if (!expr.trim()) {
    state.replaceChildren(h("p", { class: "muted" }, "Type a condition over segments and tags."));
    result.replaceChildren();
    return;
  }
  state.replaceChildren(h("p", { class: "muted" }, "Evaluating…"));
  try {
    const answer = await api("POST", "/v1/audiences", { expr, limit: 20 });
    if (seq !== audienceSeq) return;
    state.replaceChildren(h("p", { class: "ok" }, "Valid."));
    result.replaceChildren(
      h("p", {}, h("span", { id: "audience-size", class: "badge value", dataset: { value: answer.size, expr } }, `${fmtNum(answer.size)} users`)),
      answer.members.length ? h("h2", {}, `First ${fmtNum(answer.members.length)} members`) : null,
      h("ol", { class: "members", id: "audience-members" },
        answer.members.map((m) => h("li", {}, h("a", { href: `#/users/${encodeURIComponent(m)}` }, m)))),
      h("button", { id: "audience-export", onclick: () => download("POST", "/v1/audiences/export", { expr }, "audience.ndjson") }, "Export all (NDJSON)"));
  } catch (e) {
    if (seq !== audienceSeq) return;
    result.replaceChildren();
    const column = e.body && e.body.column;
    state.replaceChildren(
      h("p", { class: "error", id: "audience-error", role: "alert", dataset: { column: column || "", expr } },
        column ? `Column ${column}: ${e.message}` : e.message),
      column ? h("pre", { class: "caret", "aria-hidden": "true" }, `${expr}\n${" ".repeat(column - 1)}^`) : null);
  }
}

async function rulesView(main, id) {
  const current = await api("GET", "/v1/rules");
  if (id !== renderId) return;
  const text = h("textarea", { id: "rules-input", class: "mono", spellcheck: "false", "aria-describedby": "rules-help" });
  text.value = current.rules;
  const file = h("input", { id: "rules-file", type: "file", accept: ".toml,text/plain" });
  const out = h("div", { id: "rules-out", "aria-live": "polite" });
  const apply = h("button", { id: "rules-apply", class: "danger", disabled: true }, "Apply…");
  const check = h("button", { id: "rules-check" }, "Check and preview");
  let preview = null;
  text.addEventListener("input", () => { preview = null; apply.disabled = true; });
  file.addEventListener("change", async () => {
    if (!file.files.length) return;
    text.value = await file.files[0].text();
    preview = null; apply.disabled = true;
    status(`Loaded ${file.files[0].name}`);
  });
  check.addEventListener("click", async () => {
    out.replaceChildren(h("p", { class: "muted" }, "Checking…"));
    preview = null; apply.disabled = true;
    try {
      const answer = await api("POST", "/v1/rules/reload?dry_run=true", { rules: text.value });
      preview = { answer, rules: text.value };
      out.replaceChildren(previewBox(answer));
      apply.disabled = false;
    } catch (e) {
      out.replaceChildren(e.body && e.body.errors ? errorsBox(e, text) : errorBox(e));
    }
    // The answer is below the editor: bring it into view.
    out.scrollIntoView({ block: "start" });
  });
  apply.addEventListener("click", async () => {
    if (!preview) return;
    const { answer, rules } = preview;
    const enters = answer.segments.reduce((n, s) => n + s.enters, 0);
    const exits = answer.segments.reduce((n, s) => n + s.exits, 0);
    const confirmText = document.getElementById("confirm-text");
    confirmText.dataset.transitions = String(enters + exits);
    confirmText.textContent = answer.changed
      ? `Applying these rules on this pod will emit ${count(enters + exits, "transition", "transitions")} (${count(enters, "enter", "enters")}, ${count(exits, "exit", "exits")}) over ${count(answer.users, "user", "users")}, at the current engine time.`
      : "These rules are identical to the rules in force: applying them changes nothing and emits no transition.";
    const dialog = document.getElementById("confirm-dialog");
    dialog.returnValue = "";
    dialog.showModal();
    document.getElementById("confirm-cancel").focus();
    await new Promise((r) => dialog.addEventListener("close", r, { once: true }));
    if (dialog.returnValue !== "apply") return;
    try {
      const done = await api("POST", "/v1/rules/reload", { rules });
      out.replaceChildren(h("p", { class: "ok", id: "rules-result", dataset: { transitions: done.transitions } },
        done.reloaded ? `Applied: ${count(done.transitions, "transition", "transitions")} emitted for ${count(done.users, "user", "users")}.` : "Nothing changed: the rules were already in force."));
      apply.disabled = true;
      const now = await api("GET", "/v1/rules");
      currentBox.replaceChildren(...currentRules(now));
    } catch (e) {
      out.replaceChildren(e.body && e.body.errors ? errorsBox(e, text) : errorBox(e));
    }
  });
  const currentBox = h("div", {}, ...currentRules(current));
  main.replaceChildren(h("h1", {}, "Rules"),
    h("details", { class: "explain" }, h("summary", {}, h("strong", {}, "Rules in force")), currentBox),
    h("h2", {}, "New rules"),
    h("p", { id: "rules-help", class: "muted" },
      "Edit the rules below, paste a rules file or upload one, then check it: errors show their line and column; valid rules show what a reload would change. A reload applies to the pod serving this console only."),
    h("label", { for: "rules-file" }, "Upload a rules file"), file,
    h("label", { for: "rules-input" }, "Rules (TOML)"), text,
    h("div", { class: "actions" }, check, apply), out);
}

function currentRules(current) {
  return [h("div", { class: "row" }, h("span", { class: "badge value" }, `time zone ${current.time_zone}`),
    h("span", { class: "muted mono", title: "SHA-256 of the rules text" }, current.fingerprint.slice(0, 12))),
  h("pre", { id: "rules-current" }, current.rules)];
}

function errorsBox(e, text) {
  const select = (line) => {
    const lines = text.value.split("\n");
    const start = lines.slice(0, line - 1).reduce((n, l) => n + l.length + 1, 0);
    text.focus();
    text.setSelectionRange(start, start + (lines[line - 1] || "").length);
  };
  return h("div", { class: "card", role: "alert" },
    h("p", { class: "error" }, e.message),
    h("ul", { id: "rules-errors" }, e.body.errors.map((x) => h("li", { dataset: { line: x.line, column: x.column } },
      h("a", { href: "#/rules", onclick: (ev) => { ev.preventDefault(); select(x.line); } }, `line ${x.line}, column ${x.column}`),
      x.rule ? ` (${x.rule})` : "", `: ${x.message}`))));
}

function previewBox(answer) {
  const total = (k) => answer.segments.reduce((n, s) => n + s[k], 0);
  return h("div", { class: "card" },
    h("p", {}, answer.changed
      ? `Preview over ${count(answer.users, "user", "users")}: ${count(total("enters"), "enter", "enters")} and ${count(total("exits"), "exit", "exits")}.`
      : "These rules are identical to the rules in force."),
    answer.warming.length ? h("p", { class: "muted" }, `Tags that would start empty: ${answer.warming.join(", ")}.`) : null,
    h("div", { class: "scroll" }, h("table", { id: "preview-table" },
      h("thead", {}, h("tr", {}, ["Segment", "Size before", "Size after", "Enters", "Exits"].map((c, i) => h("th", { scope: "col", class: i ? "num" : null }, c)))),
      h("tbody", {}, answer.segments.map((s) => h("tr", {
        dataset: { segment: s.name, sizeBefore: s.size_before, sizeAfter: s.size_after, enters: s.enters, exits: s.exits },
      }, h("th", { scope: "row" }, s.name), h("td", { class: "num" }, fmtNum(s.size_before)), h("td", { class: "num" }, fmtNum(s.size_after)),
      h("td", { class: "num" }, fmtNum(s.enters)), h("td", { class: "num" }, fmtNum(s.exits))))))));
}

// ---------------------------------------------------------------------------------------
// Routing: #/segments, #/segments/<name>, #/users/<id>, #/audience, #/rules.

async function route() {
  const id = ++renderId;
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const view = parts[0] || "segments";
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === view) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const main = document.getElementById("main");
  main.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  try {
    if (view === "segments" && parts[1]) await segmentView(main, id, parts.slice(1).join("/"));
    else if (view === "segments") await segmentsView(main, id);
    else if (view === "users") await userView(main, id, parts.slice(1).join("/"));
    else if (view === "audience") await audienceView(main, id);
    else if (view === "rules") await rulesView(main, id);
    else main.replaceChildren(h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/segments" }, "Segments")));
  } catch (e) {
    if (id === renderId) main.replaceChildren(errorBox(e));
  }
  if (id === renderId) document.body.dataset.ready = view;
}

async function loadZone() {
  try {
    const rules = await api("GET", "/v1/rules");
    zone = rules.time_zone;
    timeFormat = makeTimeFormat(zone);
  } catch (_) { /* keep UTC; the views show their own errors */ }
  document.getElementById("zone").textContent = `Times in ${zone}`;
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", async () => {
  await loadZone();
  route();
});
