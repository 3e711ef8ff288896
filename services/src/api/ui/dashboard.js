// The runs dashboard at /ui: plain JavaScript over the JSON API of the same process.
//
// Reads: the configured chains (from /openapi.json, which lists them in the submission schema),
// GET /v1/models, GET /v1/chains/{chain}/progress per chain (runs by state, head, realtime
// cursors), GET /v1/runs (the filtered, paginated list, and the failed and expired runs for
// "Recent failures") and GET /v1/runs/{id}. Writes: POST /v1/runs/{id}/cancel and /retry.
// Every call sends the token the user entered (kept in sessionStorage, so it dies with the tab)
// as `Authorization: Bearer <token>`; the page itself needs none. Data from the API is only ever
// inserted as text, never as HTML.
"use strict";

(function () {
  const STATES = ["pending", "queued", "running", "succeeded", "failed", "expired", "cancelled", "superseded"];
  const CANCELLABLE = new Set(["pending", "queued", "running", "failed", "expired"]);
  const RETRYABLE = new Set(["failed", "expired"]);
  const TOKEN_KEY = "model-runner.api-token";
  /** Failed and expired runs are read at most this many pages of 1000 for "Recent failures". */
  const FAILURE_PAGES = 5;
  const FAILURES_SHOWN = 20;

  const $ = (id) => document.getElementById(id);

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") el.className = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v);
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  function fill(tbody, rows, emptyText, columns) {
    tbody.textContent = "";
    if (!rows.length) tbody.append(h("tr", {}, h("td", { colspan: String(columns), class: "muted" }, emptyText)));
    else tbody.append(...rows);
  }

  const time = (t) => (t ? new Date(t).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "");
  const stateBadge = (s) => h("span", { class: "state st-" + s }, s);
  const shortId = (id) => id.slice(0, 8) + "\u2026" + id.slice(-4);
  const blocks = (r) => r.range.start + "\u2013" + r.range.end;

  // --- token ------------------------------------------------------------------------------
  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }
  function showTokenState() {
    $("token-state").textContent = token() ? "token set for this tab" : "no token";
  }

  // --- API calls ----------------------------------------------------------------------------
  class ApiFailure extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  /** Calls the API (paths are relative to this page, so a path prefix works) and returns JSON. */
  async function api(path, options) {
    const opts = Object.assign({ method: "GET" }, options || {});
    const headers = { Accept: "application/json" };
    if (token()) headers.Authorization = "Bearer " + token();
    if (opts.body !== undefined) {
      headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(opts.body);
    }
    opts.headers = headers;
    let response;
    try {
      response = await fetch(path, opts);
    } catch (e) {
      throw new ApiFailure(0, "network", "the API did not answer (" + e.message + ")");
    }
    const text = await response.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      const err = (body && body.error) || {};
      throw new ApiFailure(response.status, err.code || String(response.status), err.message || text || response.statusText);
    }
    return body;
  }

  function explain(e) {
    if (e.status === 401) return "The API wants a token: enter a read or write token above (" + e.message + ").";
    if (e.status === 403) return "This token may not do that: " + e.message;
    return e.message + (e.code ? " [" + e.code + "]" : "");
  }

  function setStatus(text, isError) {
    const el = $("status");
    el.textContent = text || "";
    el.className = isError ? "notice error" : "muted";
  }

  // --- what the process serves ---------------------------------------------------------------
  let chains = [];
  let models = [];

  async function loadCatalog() {
    const doc = await api("openapi.json");
    const submit = (((doc.components || {}).schemas || {}).SubmitRuns || {}).properties || {};
    const list = await api("v1/models");
    models = list.models.map((m) => m.name);
    const fromModels = list.models.flatMap((m) => m.chains);
    chains = Array.from(new Set([...((submit.chain || {}).enum || []), ...fromModels])).sort();
    fillSelect(document.querySelector("#filters [name=model]"), models);
    fillSelect(document.querySelector("#filters [name=chain]"), chains);
    fillSelect(document.querySelector("#filters [name=state]"), STATES);
  }

  function fillSelect(select, values) {
    const current = select.value;
    select.textContent = "";
    select.append(h("option", { value: "" }, "any"), ...values.map((v) => h("option", { value: v }, v)));
    select.value = values.includes(current) ? current : "";
  }

  // --- counts and progress -----------------------------------------------------------------
  async function loadProgress() {
    const progress = await Promise.all(chains.map((c) => api("v1/chains/" + encodeURIComponent(c) + "/progress")));
    const totals = Object.fromEntries(STATES.map((s) => [s, 0]));
    const chainRows = [];
    const cursorRows = [];
    for (const p of progress) {
      for (const s of STATES) totals[s] += p.runs_by_state[s] || 0;
      chainRows.push(h("tr", { "data-chain": p.chain },
        h("td", {}, p.chain),
        h("td", {}, p.head ? String(p.head.number) : h("span", { class: "error" }, p.head_error || "unknown")),
        STATES.map((s) => h("td", { "data-state": s }, String(p.runs_by_state[s] || 0)))));
      for (const m of p.models) {
        cursorRows.push(h("tr", {},
          h("td", {}, p.chain), h("td", {}, m.model), h("td", {}, String(m.cursor)),
          h("td", {}, m.lag === null || m.lag === undefined ? "head unknown" : String(m.lag)),
          h("td", {}, time(m.updated_at))));
      }
    }
    fill($("chains").tBodies[0], chainRows, "no chains configured", 9);
    fill($("cursors").tBodies[0], cursorRows, "no realtime subscriptions: no model follows a chain head", 5);
    $("counts-scope").textContent = chains.length ? "(all modes, chains: " + chains.join(", ") + ")" : "";
    const active = document.querySelector("#filters [name=state]").value;
    const counts = $("counts");
    counts.textContent = "";
    for (const s of STATES) {
      counts.append(h("button", {
        type: "button", class: "count" + (active === s ? " active" : ""), "data-state": s,
        title: "List " + s + " runs",
        onclick: () => {
          const select = document.querySelector("#filters [name=state]");
          select.value = select.value === s ? "" : s;
          startList();
          loadProgress().catch(() => {});
        },
      }, stateBadge(s), h("span", { class: "n" }, String(totals[s]))));
    }
  }

  // --- recent failures ---------------------------------------------------------------------
  async function loadFailures() {
    const found = [];
    let truncated = false;
    for (const state of ["failed", "expired"]) {
      let cursor = null;
      for (let page = 0; page < FAILURE_PAGES; page++) {
        const q = new URLSearchParams({ state, limit: "1000" });
        if (cursor) q.set("cursor", cursor);
        const res = await api("v1/runs?" + q);
        found.push(...res.runs);
        cursor = res.next;
        if (!cursor) break;
        if (page === FAILURE_PAGES - 1) truncated = true;
      }
    }
    found.sort((a, b) => (a.updated_at < b.updated_at ? 1 : -1));
    const rows = found.slice(0, FAILURES_SHOWN).map((r) =>
      h("tr", { class: "run", "data-run-id": r.id, onclick: () => showRun(r.id) },
        h("td", {}, h("code", { title: r.id }, shortId(r.id))),
        h("td", {}, stateBadge(r.state)),
        h("td", {}, r.model), h("td", {}, r.chain), h("td", {}, blocks(r)),
        h("td", {}, r.attempt + " of " + r.max_attempts),
        h("td", {}, time(r.updated_at)),
        h("td", { class: "err" }, r.last_error ? h("pre", {}, r.last_error) : h("span", { class: "muted" }, "no error recorded"))));
    if (truncated) rows.push(h("tr", {}, h("td", { colspan: "8", class: "muted" }, "more failures exist than were read; filter the runs list by state")));
    fill($("failures").tBodies[0], rows, "no failed or expired runs", 8);
  }

  // --- throughput ---------------------------------------------------------------------------
  const THROUGHPUT_MINUTES = 15;

  /** Succeeded runs per minute of the last THROUGHPUT_MINUTES, by their finish time. The API
   *  filters by creation time, so runs created over an hour ago are not counted. */
  async function loadThroughput() {
    const now = Date.now();
    const since = new Date(now - 60 * 60 * 1000).toISOString();
    const from = now - THROUGHPUT_MINUTES * 60 * 1000;
    const minutes = new Map();
    let cursor = null;
    for (let page = 0; page < FAILURE_PAGES; page++) {
      const q = new URLSearchParams({ state: "succeeded", since, limit: "1000" });
      if (cursor) q.set("cursor", cursor);
      const res = await api("v1/runs?" + q);
      for (const r of res.runs) {
        const done = r.finished_at ? Date.parse(r.finished_at) : NaN;
        if (!(done >= from)) continue;
        const minute = new Date(done - (done % 60000)).toISOString();
        const m = minutes.get(minute) || { runs: 0, blocks: 0, records: 0 };
        m.runs += 1;
        m.blocks += r.range.end - r.range.start + 1;
        m.records += r.records_written;
        minutes.set(minute, m);
      }
      cursor = res.next;
      if (!cursor) break;
    }
    const keys = [...minutes.keys()].sort().reverse();
    let blocksTotal = 0;
    const rows = keys.map((k) => {
      const m = minutes.get(k);
      blocksTotal += m.blocks;
      return h("tr", { "data-minute": k },
        h("td", {}, time(k)), h("td", {}, String(m.runs)),
        h("td", { class: "blocks" }, String(m.blocks)), h("td", {}, String(m.records)));
    });
    fill($("throughput").tBodies[0], rows, "no run succeeded in the last " + THROUGHPUT_MINUTES + " minutes", 4);
    $("throughput-total").textContent = blocksTotal + " blocks in the last " + THROUGHPUT_MINUTES +
      " minutes (" + (blocksTotal / THROUGHPUT_MINUTES).toFixed(1) + " blocks/min)";
  }

  // --- the runs list -----------------------------------------------------------------------
  /** Cursors of the pages before the current one; the current page's cursor. */
  let pageCursors = [];
  let currentCursor = null;
  let nextCursor = null;

  function filterQuery() {
    const form = $("filters");
    const q = new URLSearchParams();
    for (const name of ["model", "chain", "state", "mode"]) {
      const v = form.elements[name].value;
      if (v) q.set(name, v);
    }
    let since = form.elements.since.value;
    if (since) {
      if (since.length === 16) since += ":00";
      q.set("since", since + "Z");
    }
    const limit = form.elements.limit.value;
    if (limit) q.set("limit", limit);
    return q;
  }

  async function loadRuns() {
    const q = filterQuery();
    if (currentCursor) q.set("cursor", currentCursor);
    const res = await api("v1/runs?" + q);
    nextCursor = res.next;
    const selected = $("detail").dataset.runId;
    const rows = res.runs.map((r) =>
      h("tr", { class: "run" + (r.id === selected ? " selected" : ""), "data-run-id": r.id, "data-state": r.state, onclick: () => showRun(r.id) },
        h("td", {}, h("code", { title: r.id }, shortId(r.id))),
        h("td", {}, stateBadge(r.state)),
        h("td", {}, r.model), h("td", {}, r.chain), h("td", {}, r.mode), h("td", {}, blocks(r)),
        h("td", {}, r.attempt + " of " + r.max_attempts),
        h("td", {}, time(r.created_at))));
    fill($("runs").tBodies[0], rows, "no runs match", 8);
    $("prev-page").disabled = pageCursors.length === 0;
    $("first-page").disabled = pageCursors.length === 0;
    $("next-page").disabled = !nextCursor;
    $("page-info").textContent = "page " + (pageCursors.length + 1) + ", " + res.runs.length + " runs" + (nextCursor ? "" : " (last page)");
  }

  function startList() {
    pageCursors = [];
    currentCursor = null;
    return loadRuns().catch((e) => setStatus(explain(e), true));
  }

  // --- one run -----------------------------------------------------------------------------
  async function showRun(id) {
    const panel = $("detail");
    panel.hidden = false;
    panel.dataset.runId = id;
    $("detail-id").textContent = id;
    $("action-result").textContent = "";
    $("cancel-confirm").hidden = true;
    for (const tr of document.querySelectorAll("tr.run")) tr.classList.toggle("selected", tr.dataset.runId === id);
    let r;
    try {
      r = await api("v1/runs/" + encodeURIComponent(id));
    } catch (e) {
      $("detail-body").textContent = explain(e);
      return;
    }
    panel.dataset.state = r.state;
    const rows = [
      ["State", stateBadge(r.state)],
      ["Attempt", r.attempt + " of " + r.max_attempts],
      ["Model", r.model + " " + r.model_version],
      ["Chain", r.chain],
      ["Blocks", blocks(r) + " (" + (r.range.end - r.range.start + 1) + ")"],
      ["Mode / kind", r.mode + " / " + r.kind],
      ["Queue", r.queue],
      ["Created", time(r.created_at)],
      ["Queued", time(r.queued_at)],
      ["Started", time(r.started_at)],
      ["Finished", time(r.finished_at)],
      ["Next attempt", time(r.next_attempt_at)],
      ["Last change", time(r.updated_at)],
      ["Blocks done", String(r.blocks_done)],
      ["Live progress", r.progress ? r.progress.blocks_done + " / " + r.progress.blocks_total + " blocks at " + time(r.progress.updated_at) : ""],
      ["Records written", String(r.records_written)],
      ["Republished", String(r.republished)],
      ["Notes", Object.entries(r.notes || {}).map(([k, n]) => k + ": " + n).join(", ")],
    ];
    const body = $("detail-body");
    body.textContent = "";
    body.append(h("dl", {}, rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v || h("span", { class: "muted" }, "\u2013"))])));
    body.append(h("div", {}, h("strong", {}, "Last error"),
      r.last_error ? h("pre", { id: "detail-error" }, r.last_error) : h("p", { class: "muted" }, "none")));
    $("run-cancel").disabled = !CANCELLABLE.has(r.state);
    $("run-retry").disabled = !RETRYABLE.has(r.state);
  }

  async function act(kind) {
    const id = $("detail").dataset.runId;
    const result = $("action-result");
    $("cancel-confirm").hidden = true;
    if (!token()) {
      result.className = "error";
      result.textContent = "Enter a write token above first: " + kind + " needs one.";
      return;
    }
    const opts = { method: "POST" };
    if (kind === "cancel") {
      const reason = $("cancel-reason").value.trim();
      if (reason) opts.body = { reason };
    }
    let message;
    let failed = false;
    try {
      const run = await api("v1/runs/" + encodeURIComponent(id) + "/" + kind, opts);
      message = kind === "cancel"
        ? "Cancelled: the run is now " + run.state + "."
        : "Retry scheduled: the run is " + run.state + ", next attempt " + time(run.next_attempt_at) + ".";
      $("cancel-reason").value = "";
    } catch (e) {
      message = explain(e);
      failed = true;
    }
    // Re-read the run (this clears the panel's message), then say what happened.
    await showRun(id);
    result.className = failed ? "error" : "ok";
    result.textContent = message;
    await refreshAll(false);
  }

  // --- putting it together -----------------------------------------------------------------
  let refreshing = false;

  async function refreshAll(withCatalog) {
    if (refreshing) return;
    refreshing = true;
    try {
      if (withCatalog || !chains.length) await loadCatalog();
      await Promise.all([loadProgress(), loadFailures(), loadThroughput(), loadRuns()]);
      setStatus("Updated " + time(new Date().toISOString()) + ".", false);
      document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
      delete document.body.dataset.error;
    } catch (e) {
      setStatus(explain(e), true);
      document.body.dataset.error = e.code || "error";
    } finally {
      refreshing = false;
    }
  }

  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const value = $("token").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    $("token").value = "";
    showTokenState();
    refreshAll(true);
  });
  $("forget-token").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showTokenState();
  });
  $("refresh").addEventListener("click", () => refreshAll(true));
  let timer = null;
  $("auto-refresh").addEventListener("change", (ev) => {
    clearInterval(timer);
    timer = ev.target.checked ? setInterval(() => refreshAll(false), 10000) : null;
  });
  $("filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    startList();
  });
  $("clear-filters").addEventListener("click", () => {
    $("filters").reset();
    startList();
  });
  $("next-page").addEventListener("click", () => {
    if (!nextCursor) return;
    pageCursors.push(currentCursor);
    currentCursor = nextCursor;
    loadRuns().catch((e) => setStatus(explain(e), true));
  });
  $("prev-page").addEventListener("click", () => {
    if (!pageCursors.length) return;
    currentCursor = pageCursors.pop();
    loadRuns().catch((e) => setStatus(explain(e), true));
  });
  $("first-page").addEventListener("click", () => startList());
  $("run-cancel").addEventListener("click", () => {
    $("cancel-confirm").hidden = false;
  });
  $("run-cancel-abort").addEventListener("click", () => {
    $("cancel-confirm").hidden = true;
  });
  $("run-cancel-confirm").addEventListener("click", () => act("cancel"));
  $("run-retry").addEventListener("click", () => act("retry"));

  showTokenState();
  refreshAll(true);
})();
