// clavis console: approvals, the live audit log, services, agents and budgets.
// Plain DOM, no framework. Every value that comes from the API is put in the
// page as text (textContent / text nodes / plain attributes), never as markup.
"use strict";
(() => {
  const TOKEN_KEY = "clavis.adminToken";
  const POLL_MS = 5000;
  const RECENT_POLL_MS = 30000;
  const MAX_AUDIT_ROWS = 1000;
  const STREAM_IDLE_MS = 45000; // keep-alives arrive every 15 s
  const VIEWS = ["approvals", "audit", "services", "budgets"];

  const $ = (id) => document.getElementById(id);
  let uid = 0;

  // el("p", {class: "x", title: "y"}, child, "text", ...): safe element builder.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (/^on/i.test(k) || k === "style" || k === "href" || k === "src") throw new Error("refused attribute " + k);
      if (k === "class") node.className = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false || c === "") continue;
      node.append(c instanceof Node ? c : String(c));
    }
    return node;
  }

  function setMsg(node, text, kind) {
    node.textContent = text || "";
    node.classList.toggle("error", kind === "error");
    node.classList.toggle("ok", kind === "ok");
  }

  // ------------------------------------------------------------ formatting
  function fmtTime(iso, withDate = true) {
    const d = new Date(iso);
    if (!iso || isNaN(d)) return iso ? String(iso) : "—";
    const time = d.toLocaleTimeString([], { hour12: false });
    if (!withDate && d.toDateString() === new Date().toDateString()) return time;
    return d.toLocaleDateString([], { year: "numeric", month: "short", day: "numeric" }) + " " + time;
  }

  function fmtSpan(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    const pad = (n) => String(n).padStart(2, "0");
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${pad(m)}m`;
    return `${m}m ${pad(s % 60)}s`;
  }

  const fmtNum = (n) => (typeof n === "number" ? n.toLocaleString() : n === null || n === undefined ? "—" : String(n));
  const short = (hex) => (hex ? String(hex).slice(0, 12) : "—");
  // A table cell labelled for the stacked (phone) layout; empty when there is nothing to show.
  const cell = (label, ...content) => {
    const parts = content.filter((c) => c !== null && c !== undefined && c !== "");
    return el("td", { "data-label": label }, parts.length ? el("div", { class: "v" }, ...parts) : null);
  };
  const timeTag = (iso) => el("time", { datetime: iso, title: iso }, fmtTime(iso));

  // ------------------------------------------------------------ API
  class ApiError extends Error {
    constructor(status, type, message) { super(message); this.status = status; this.type = type; }
  }

  const state = { token: null, signedIn: false, gen: 0, view: "approvals", timers: [] };

  function authHeaders(token) {
    return { Authorization: "Bearer " + (token || state.token), Accept: "application/json" };
  }

  async function api(method, path, body, token) {
    const init = { method, headers: authHeaders(token), cache: "no-store", credentials: "omit", redirect: "error" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let res, text;
    try {
      res = await fetch(path, init);
      text = await res.text();
    } catch (e) {
      throw new ApiError(0, "network", "Cannot reach clavis: " + e.message);
    }
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = null; }
    if (!res.ok) {
      const err = (data && data.error) || {};
      let message = err.message || `HTTP ${res.status}`;
      if (res.status === 429 && res.headers.get("Retry-After")) message += ` (retry after ${res.headers.get("Retry-After")} s)`;
      if (res.status === 401 && !token && state.signedIn) signOut("The admin token was refused (401). Sign in again.");
      throw new ApiError(res.status, err.type || "http_" + res.status, message);
    }
    return data;
  }

  const errText = (e) => (e instanceof ApiError && e.status ? `${e.status}: ${e.message}` : e.message || String(e));

  // ------------------------------------------------------------ sign in / out
  async function signIn(token, quiet) {
    const msg = $("signin-msg");
    if (!token) { setMsg(msg, "Enter the admin token.", "error"); return; }
    setMsg(msg, quiet ? "" : "Checking…");
    const submit = $("signin-form").querySelector("button");
    submit.disabled = true;
    try {
      await api("GET", "/v1/services", undefined, token);
    } catch (e) {
      submit.disabled = false;
      if (e.status === 401) sessionStorage.removeItem(TOKEN_KEY);
      setMsg(msg, e.status === 401 ? "Wrong token: clavis refused it." : "Sign-in failed: " + errText(e), "error");
      $("token").focus();
      return;
    }
    submit.disabled = false;
    if (state.signedIn) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    setMsg(msg, "");
    state.token = token;
    state.signedIn = true;
    const gen = ++state.gen;
    $("nav").hidden = false;
    $("signout").hidden = false;
    $("view-signin").hidden = true;
    show(VIEWS.includes(location.hash.slice(1)) ? location.hash.slice(1) : "approvals");
    refreshApprovals();
    refreshRecent();
    state.timers.push(setInterval(refreshApprovals, POLL_MS));
    state.timers.push(setInterval(refreshRecent, RECENT_POLL_MS));
    state.timers.push(setInterval(tickCountdowns, 1000));
    state.timers.push(setInterval(() => { if (state.view === "budgets") loadBudgets(); }, 15000));
    runStream(gen);
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    state.signedIn = false;
    state.gen++;
    state.timers.forEach(clearInterval);
    state.timers = [];
    if (state.streamCtrl) state.streamCtrl.abort();
    if (state.wake) state.wake();
    approvals.clear();
    approvalsLoaded = false;
    $("approvals-list").replaceChildren();
    $("recent-list").replaceChildren();
    audit.events = [];
    audit.keys.clear();
    $("audit-body").replaceChildren();
    for (const id of ["services-body", "agents-body", "budgets-list"]) $(id).replaceChildren();
    for (const v of VIEWS) $("view-" + v).hidden = true;
    $("nav").hidden = true;
    $("signout").hidden = true;
    $("view-signin").hidden = false;
    setPendingCount(0);
    setMsg($("signin-msg"), message || "", message ? "error" : undefined);
    $("token").focus();
  }

  // ------------------------------------------------------------ views
  function show(view) {
    state.view = view;
    for (const v of VIEWS) $("view-" + v).hidden = v !== view;
    for (const b of $("nav").querySelectorAll("button")) {
      if (b.dataset.view === view) b.setAttribute("aria-current", "page");
      else b.removeAttribute("aria-current");
    }
    if (location.hash !== "#" + view) history.replaceState(null, "", "#" + view);
    if (view === "services") loadServices();
    if (view === "budgets") loadBudgets();
  }

  function setPendingCount(n) {
    const badge = $("pending-count");
    badge.hidden = n === 0;
    badge.textContent = String(n);
    badge.setAttribute("aria-label", `${n} pending`);
    document.title = (n ? `(${n}) ` : "") + "clavis console";
  }

  // ------------------------------------------------------------ approvals
  const approvals = new Map(); // id -> {rec, card, reason, buttons, msg, expires, countdown, done}
  let approvalsBusy = false, approvalsAgain = false, approvalsLoaded = false, refreshSoon = null;

  function scheduleApprovalsRefresh() {
    clearTimeout(refreshSoon);
    refreshSoon = setTimeout(() => { refreshApprovals(); refreshRecent(); }, 150);
  }

  function approvalCard(rec) {
    const n = ++uid;
    const entry = { rec, done: false, expires: Date.parse(rec.expires_at) };
    const reason = el("input", { id: "reason-" + n, type: "text", maxlength: 500, autocomplete: "off", "aria-describedby": "msg-" + n });
    const approve = el("button", { type: "button", class: "approve" }, "Approve");
    const deny = el("button", { type: "button", class: "deny" }, "Deny");
    const msg = el("p", { id: "msg-" + n, class: "msg", role: "alert" });
    const countdown = el("span", { class: "countdown" });
    const preview = rec.body_preview
      ? el("pre", { class: "body", tabindex: 0, "aria-label": "Body preview" }, rec.body_preview)
      : el("p", { class: "muted small" }, "(empty body)");
    const field = (label, ...value) => [el("dt", null, label), el("dd", null, ...value)];
    const card = el("article", { class: "card approval", "data-approval-id": rec.id, "aria-labelledby": "title-" + n },
      el("h3", { id: "title-" + n, class: "req" }, el("span", { class: "method" }, rec.method || "?"), " ", el("span", { class: "url" }, rec.url || "")),
      el("dl", { class: "meta" },
        ...field("Agent", rec.agent || "—"),
        ...field("Service", rec.service || "—"),
        ...field("Rule", rec.rule || "—"),
        ...field("Created", timeTag(rec.created_at)),
        ...field("Expires", timeTag(rec.expires_at), " ", countdown),
        ...field("Body SHA-256", el("code", { title: rec.body_sha256 || "" }, short(rec.body_sha256)))),
      preview,
      el("div", { class: "decide" },
        el("label", { for: "reason-" + n }, "Reason ", el("span", { class: "muted" }, "(required to deny, optional to approve)")),
        reason,
        el("div", { class: "buttons" }, approve, deny)),
      msg);
    Object.assign(entry, { card, reason, msg, countdown, buttons: [approve, deny] });
    approve.addEventListener("click", () => decide(entry, "approve"));
    deny.addEventListener("click", () => decide(entry, "deny"));
    reason.addEventListener("input", () => reason.removeAttribute("aria-invalid"));
    tickOne(entry, Date.now());
    return entry;
  }

  function tickOne(entry, now) {
    if (entry.done || isNaN(entry.expires)) return;
    const left = entry.expires - now;
    entry.countdown.textContent = left > 0 ? `(in ${fmtSpan(left)})` : "(expired)";
    entry.countdown.classList.toggle("soon", left < 60000);
  }

  function tickCountdowns() {
    const now = Date.now();
    for (const entry of approvals.values()) tickOne(entry, now);
  }

  async function refreshApprovals() {
    if (!state.signedIn) return;
    if (approvalsBusy) { approvalsAgain = true; return; }
    approvalsBusy = true;
    const gen = state.gen;
    try {
      const list = await api("GET", "/v1/approvals?status=pending");
      if (gen !== state.gen) return;
      setMsg($("approvals-error"), "");
      applyPending(Array.isArray(list) ? list : []);
      $("approvals-state").textContent = "Updated " + new Date().toLocaleTimeString([], { hour12: false });
    } catch (e) {
      if (gen === state.gen) setMsg($("approvals-error"), "Could not load approvals: " + errText(e), "error");
    } finally {
      approvalsBusy = false;
      if (approvalsAgain) { approvalsAgain = false; refreshApprovals(); }
    }
  }

  function applyPending(list) {
    const container = $("approvals-list");
    const seen = new Set();
    const fresh = [];
    let prev = null;
    for (const rec of list) {
      if (!rec || rec.id === undefined || seen.has(rec.id)) continue;
      seen.add(rec.id);
      let entry = approvals.get(rec.id);
      if (!entry) {
        entry = approvalCard(rec);
        approvals.set(rec.id, entry);
        fresh.push(rec);
        // Newest first; never move existing cards (that would steal focus from a reason being typed).
        if (prev) prev.card.after(entry.card); else container.prepend(entry.card);
      }
      prev = entry;
    }
    let gone = false;
    for (const [id, entry] of approvals) {
      if (seen.has(id) || entry.done) continue;
      gone = true;
      finishCard(entry, null, "No longer pending: decided elsewhere or expired.");
    }
    if (gone) refreshRecent();
    updatePendingCount();
    if (fresh.length && approvalsLoaded) {
      const r = fresh[0];
      $("announcer").textContent = fresh.length === 1
        ? `New approval request from ${r.agent}: ${r.method} ${r.url}`
        : `${fresh.length} new approval requests`;
    }
    approvalsLoaded = true;
  }

  function updatePendingCount() {
    let n = 0;
    for (const e of approvals.values()) if (!e.done) n++;
    setPendingCount(n);
    $("approvals-empty").hidden = approvals.size > 0;
  }

  async function decide(entry, action) {
    if (entry.done || entry.busy) return;
    const reason = entry.reason.value.trim();
    if (action === "deny" && !reason) {
      setMsg(entry.msg, "A reason is required to deny.", "error");
      entry.reason.setAttribute("aria-invalid", "true");
      entry.reason.focus();
      return;
    }
    entry.busy = true;
    entry.buttons.forEach((b) => { b.disabled = true; });
    setMsg(entry.msg, action === "approve" ? "Approving…" : "Denying…");
    try {
      const rec = await api("POST", `/v1/approvals/${encodeURIComponent(entry.rec.id)}/${action}`, reason ? { reason } : {});
      finishCard(entry, rec);
    } catch (e) {
      entry.busy = false;
      if (e.status === 409) finishCard(entry, null, "Already decided (409): " + e.message);
      else if (e.status === 404) finishCard(entry, null, "Not found (404), it may have expired: " + e.message);
      else {
        entry.buttons.forEach((b) => { b.disabled = false; });
        setMsg(entry.msg, "Failed: " + errText(e), "error");
      }
    }
    refreshRecent();
  }

  // Shows the outcome in the card, then removes the card after a few seconds.
  function finishCard(entry, rec, note) {
    entry.done = true;
    const hadFocus = entry.card.contains(document.activeElement);
    entry.card.querySelector(".decide").remove();
    entry.card.classList.add("decided");
    if (rec) {
      const what = rec.status === "approved" ? "Approved" : rec.status === "denied" ? "Denied" : `Now ${rec.status}`;
      setMsg(entry.msg, `${what}${rec.decided_by ? " by " + rec.decided_by : ""}${rec.reason ? ": " + rec.reason : ""}`, rec.status === "denied" ? "error" : "ok");
      entry.card.dataset.status = rec.status || "";
    } else {
      setMsg(entry.msg, note, "error");
    }
    entry.countdown.textContent = "";
    updatePendingCount();
    if (hadFocus) {
      entry.msg.setAttribute("tabindex", "-1");
      entry.msg.focus();
    }
    setTimeout(() => {
      if (approvals.get(entry.rec.id) !== entry) return;
      const refocus = entry.card.contains(document.activeElement);
      entry.card.remove();
      approvals.delete(entry.rec.id);
      updatePendingCount();
      if (refocus) (document.querySelector(".approval:not(.decided) input") || $("approvals-title")).focus();
    }, 6000);
  }

  async function refreshRecent() {
    if (!state.signedIn) return;
    const gen = state.gen;
    const statuses = ["approved", "denied", "expired", "used"];
    try {
      const lists = await Promise.all(statuses.map((s) => api("GET", "/v1/approvals?status=" + s)));
      if (gen !== state.gen) return;
      const all = lists.flat().filter(Boolean);
      all.sort((a, b) => (Date.parse(b.created_at) || 0) - (Date.parse(a.created_at) || 0));
      const items = all.slice(0, 20).map((r) => el("li", { "data-approval-id": r.id },
        el("span", { class: "badge status-" + statusClass(r.status) }, r.status),
        el("span", { class: "req" }, el("span", { class: "method" }, r.method || "?"), " ", el("span", { class: "url" }, r.url || "")),
        el("span", { class: "muted small" }, `${r.agent || "?"} → ${r.service || "?"}`, r.decided_by ? ` · by ${r.decided_by}` : "",
          " · ", timeTag(r.created_at)),
        r.reason ? el("span", { class: "reason" }, "Reason: ", r.reason) : null));
      $("recent-list").replaceChildren(...items);
      $("recent-empty").hidden = items.length > 0;
    } catch (e) {
      if (gen === state.gen) setMsg($("approvals-error"), "Could not load recent decisions: " + errText(e), "error");
    }
  }

  const statusClass = (s) => (["approved", "denied", "expired", "used", "pending"].includes(s) ? s : "other");

  // ------------------------------------------------------------ Server-Sent Events
  // Incremental text/event-stream parser (WHATWG HTML §9.2.6): lines end in
  // CRLF, LF or CR (possibly split across chunks), ":" lines are comments,
  // "data" lines accumulate, a blank line dispatches.
  class SSEParser {
    constructor(onEvent) { this.onEvent = onEvent; this.buf = ""; this.skipLF = false; this.type = ""; this.data = []; }
    feed(text) {
      let s = this.buf + text, i = 0;
      this.buf = "";
      if (this.skipLF && s[0] === "\n") i = 1;
      this.skipLF = false;
      const eol = /[\r\n]/g;
      for (;;) {
        eol.lastIndex = i;
        const m = eol.exec(s);
        if (!m) { this.buf = s.slice(i); return; }
        const j = m.index;
        this.line(s.slice(i, j));
        if (s[j] === "\r" && j + 1 === s.length) { this.skipLF = true; i = j + 1; }
        else i = s[j] === "\r" && s[j + 1] === "\n" ? j + 2 : j + 1;
      }
    }
    line(line) {
      if (line === "") {
        if (this.data.length) this.onEvent({ type: this.type || "message", data: this.data.join("\n") });
        this.type = "";
        this.data = [];
        return;
      }
      if (line[0] === ":") return;
      const c = line.indexOf(":");
      const field = c < 0 ? line : line.slice(0, c);
      let value = c < 0 ? "" : line.slice(c + 1);
      if (value[0] === " ") value = value.slice(1);
      if (field === "event") this.type = value;
      else if (field === "data") this.data.push(value);
    }
  }

  function setStreamState(text, kind) {
    const pill = $("stream-state");
    pill.textContent = text;
    pill.dataset.state = kind;
  }

  const sleep = (ms) => new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    state.wake = () => { clearTimeout(t); resolve(); };
  });

  async function runStream(gen) {
    let attempt = 0;
    while (state.signedIn && gen === state.gen) {
      const ctrl = new AbortController();
      state.streamCtrl = ctrl;
      setStreamState("connecting…", "connecting");
      let idle = null;
      const arm = () => { clearTimeout(idle); idle = setTimeout(() => ctrl.abort(), STREAM_IDLE_MS); };
      try {
        arm(); // also bounds the wait for the response headers
        const headers = authHeaders();
        headers.Accept = "text/event-stream";
        const res = await fetch("/v1/audit/stream", { headers, cache: "no-store", credentials: "omit", signal: ctrl.signal });
        if (res.status === 401) { signOut("The admin token was refused (401). Sign in again."); return; }
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
        setStreamState("live", "live");
        setMsg($("audit-error"), "");
        const since = { list: [], merged: false };
        loadAuditHistory(gen, since);
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        const parser = new SSEParser((ev) => onStreamEvent(ev, since));
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          attempt = 0; // the server is talking: reset the backoff
          arm();
          parser.feed(decoder.decode(value, { stream: true }));
        }
        parser.feed(decoder.decode());
      } catch (e) {
        if (gen !== state.gen) return;
        if (e.name !== "AbortError") setMsg($("audit-error"), "Audit stream: " + e.message, "error");
      } finally {
        clearTimeout(idle);
      }
      if (!state.signedIn || gen !== state.gen) return;
      const delay = Math.round(Math.min(30000, 1000 * 2 ** attempt) * (0.8 + Math.random() * 0.4));
      attempt = Math.min(attempt + 1, 10);
      setStreamState(`reconnecting in ${Math.ceil(delay / 1000)} s`, "down");
      await sleep(delay);
    }
  }

  // ------------------------------------------------------------ audit
  const audit = { events: [], keys: new Set() };
  // One event, however often it arrives: by its id (clavis's sequence number,
  // the SSE id), else by its content. The stream sends an event when it is
  // recorded, before the upstream answered; the history has it with its status.
  const auditKey = (ev) => (ev.id !== undefined && ev.id !== null
    ? "id:" + ev.id
    : JSON.stringify([ev.time, ev.action, ev.entry, ev.actor, ev.detail]));
  const hasStatus = (ev) => Boolean(ev && ev.detail && ev.detail.status);

  function onStreamEvent(ev, since) {
    if (ev.type !== "audit") return;
    let rec;
    try { rec = JSON.parse(ev.data); } catch { return; }
    if (!rec || typeof rec !== "object") return;
    if (!since.merged) since.list.push(rec);
    const key = auditKey(rec);
    if (!audit.keys.has(key)) {
      audit.keys.add(key);
      audit.events.unshift(rec);
      $("audit-body").prepend(auditRow(rec));
      trimAudit();
    }
    if (typeof rec.action === "string" && rec.action.startsWith("approval_")) scheduleApprovalsRefresh();
  }

  // After each (re)connect: the recent history, merged with what the stream
  // already delivered (on top) and the rows shown before (below), deduplicated.
  async function loadAuditHistory(gen, since) {
    try {
      let history;
      try { history = await api("GET", "/v1/audit?limit=200"); } finally { since.merged = true; }
      if (gen !== state.gen) return;
      const merged = [], at = new Map();
      for (const ev of [...since.list.slice().reverse(), ...(Array.isArray(history) ? history : []), ...audit.events]) {
        const k = auditKey(ev);
        if (!at.has(k)) { at.set(k, merged.length); merged.push(ev); }
        else if (hasStatus(ev) && !hasStatus(merged[at.get(k)])) merged[at.get(k)] = ev; // the later, fuller copy
      }
      audit.events = merged.slice(0, MAX_AUDIT_ROWS);
      audit.keys = new Set(audit.events.map(auditKey));
      $("audit-body").replaceChildren(...audit.events.map(auditRow));
      $("audit-empty").hidden = audit.events.length > 0;
    } catch (e) {
      if (gen === state.gen) setMsg($("audit-error"), "Could not load the audit log: " + errText(e), "error");
    }
  }

  function trimAudit() {
    const body = $("audit-body");
    while (audit.events.length > MAX_AUDIT_ROWS) {
      audit.keys.delete(auditKey(audit.events.pop()));
      body.lastElementChild.remove();
    }
    $("audit-empty").hidden = audit.events.length > 0;
  }

  function auditRow(ev) {
    const d = ev.detail && typeof ev.detail === "object" ? ev.detail : {};
    const action = String(ev.action ?? "");
    const kind = action === "denied" ? "bad" : action.startsWith("approval_") ? "warn" : "plain";
    const req = [d.method, d.host, d.path].filter((x) => x !== undefined && x !== null && x !== "").join(" ");
    return el("tr", null,
      cell("Time", el("time", { datetime: ev.time, title: ev.time }, fmtTime(ev.time, false))),
      cell("Action", el("span", { class: "badge action-" + kind }, action)),
      cell("Actor", ev.actor ?? ""),
      cell("Entry", ev.entry ?? ""),
      cell("Request", req ? el("span", { class: "url" }, req) : null),
      cell("Status", d.status ?? ""),
      cell("Note", d.note ?? ""));
  }

  // ------------------------------------------------------------ services, agents, budgets
  // Services and agents load apart: one failing (an older clavis without
  // GET /v1/agents) leaves the other's table and says which one failed.
  async function loadServices() {
    const gen = state.gen;
    const [services, agents] = await Promise.allSettled([api("GET", "/v1/services"), api("GET", "/v1/agents")]);
    if (gen !== state.gen) return;
    if (services.status === "fulfilled") {
      setMsg($("services-error"), "");
      $("services-body").replaceChildren(...(services.value || []).map((s) => el("tr", null,
        cell("Name", el("strong", null, s.name ?? ""), s.default ? el("span", { class: "badge" }, "default") : null),
        cell("Connector", s.connector_name ?? ""),
        cell("Hosts", (s.hosts || []).join(", ")),
        cell("Credentials", s.has_credentials
          ? el("span", { class: "badge status-approved" }, "stored")
          : el("span", { class: "badge status-denied" }, "missing")),
        cell("Validated", s.validated_at ? timeTag(s.validated_at) : s.has_credentials ? "not validated" : "—"),
        cell("Origin", s.origin ?? ""))));
    } else {
      setMsg($("services-error"), "Could not load services: " + errText(services.reason), "error");
    }
    if (agents.status === "fulfilled") {
      setMsg($("agents-error"), "");
      $("agents-body").replaceChildren(...(agents.value || []).map((a) => el("tr", null,
        cell("Name", el("strong", null, a.name ?? "")),
        cell("Services", (a.services || []).join(", ") === "*" ? "all (*)" : (a.services || []).join(", ")),
        cell("Reveal", a.reveal ? "yes" : "no"),
        cell("Policies", Object.entries(a.policies || {}).map(([svc, pol]) => `${svc}: ${pol}`).join("; ") || "—"))));
    } else {
      setMsg($("agents-error"), "Could not load agents: " + errText(agents.reason), "error");
    }
  }

  async function loadBudgets() {
    const gen = state.gen;
    try {
      const budgets = (await api("GET", "/v1/budgets")) || [];
      if (gen !== state.gen) return;
      setMsg($("budgets-error"), "");
      $("budgets-empty").hidden = budgets.length > 0;
      $("budgets-list").replaceChildren(...budgets.map(budgetCard));
    } catch (e) {
      if (gen === state.gen) setMsg($("budgets-error"), "Could not load budgets: " + errText(e), "error");
    }
  }

  const UNITS = { input_tokens: "input tokens", output_tokens: "output tokens", spend: "spend units" };

  function budgetCard(b) {
    const limit = Number(b.limit), used = Number(b.used) || 0, reserved = Number(b.reserved) || 0;
    const pct = (v) => (limit > 0 ? Math.min(100, (v / limit) * 100) : 0);
    const usedBar = el("span", { class: "used" });
    const resBar = el("span", { class: "reserved" });
    usedBar.style.width = pct(used) + "%"; // CSSOM, allowed by style-src 'self'
    resBar.style.width = Math.min(pct(reserved), 100 - pct(used)) + "%";
    const level = pct(used + reserved) >= 90 ? "high" : pct(used + reserved) >= 70 ? "mid" : "low";
    const unit = UNITS[b.unit] || b.unit || "";
    return el("article", { class: "card budget" },
      el("h3", null, b.name ?? ""),
      el("p", { class: "muted small" },
        b.agent === null || b.agent === undefined ? "shared" : `agent ${b.agent}`, " · ", `service ${b.service ?? "?"}`,
        " · ", b.window ? `window ${b.window}` : "rate limit"),
      el("div", { class: "bar " + level, role: "meter", "aria-valuemin": 0, "aria-valuemax": limit || 0,
        "aria-valuenow": used, "aria-label": `${b.name}: ${fmtNum(used)} of ${fmtNum(limit)} ${unit} used` }, usedBar, resBar),
      el("p", { class: "small" }, el("strong", null, fmtNum(used)), ` used`,
        reserved ? ` + ${fmtNum(reserved)} reserved` : "", ` of ${fmtNum(limit)} ${unit}`,
        limit > 0 ? ` (${Math.round(pct(used + reserved))}%)` : ""),
      b.resets_at ? el("p", { class: "muted small" }, "Resets ", timeTag(b.resets_at),
        ` (in ${fmtSpan(Date.parse(b.resets_at) - Date.now())})`) : null);
  }

  // ------------------------------------------------------------ wiring
  document.addEventListener("DOMContentLoaded", () => {
    $("signin-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      signIn($("token").value.trim());
    });
    $("signout").addEventListener("click", () => signOut());
    for (const b of $("nav").querySelectorAll("button")) b.addEventListener("click", () => show(b.dataset.view));
    for (const b of document.querySelectorAll("[data-refresh]")) {
      b.addEventListener("click", () => (b.dataset.refresh === "services" ? loadServices() : loadBudgets()));
    }
    window.addEventListener("hashchange", () => {
      const v = location.hash.slice(1);
      if (state.signedIn && VIEWS.includes(v) && v !== state.view) show(v);
    });
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) signIn(saved, true);
    else $("token").focus();
  });
})();
