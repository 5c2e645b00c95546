// The gateway dashboard: plain DOM, no framework, no build step, nothing loaded from elsewhere.
// Every value that came from a request is set with textContent, never as HTML.
"use strict";

(() => {
  const RECENT_SHOWN = 50; // waterfalls kept on the page (the server keeps more)
  const POLL_MS = 1000;
  const UPSTREAM_POLL_MS = 5000;

  const state = {
    endpoints: [], last: 0, process: null, polling: false, timer: null, upstreamTimer: null,
  };

  // -- small helpers -----------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function ms(value) {
    if (value >= 1000) return (value / 1000).toFixed(2) + " s";
    if (value >= 100) return value.toFixed(0) + " ms";
    return value.toFixed(1) + " ms";
  }

  function ago(epochSeconds) {
    const s = Math.max(0, Date.now() / 1000 - epochSeconds);
    if (s < 5) return "just now";
    if (s < 60) return Math.floor(s) + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    return new Date(epochSeconds * 1000).toLocaleTimeString();
  }

  function statusClass(status) {
    if (status >= 500) return "badge badge-bad";
    if (status >= 400) return "badge badge-warn";
    return "badge badge-ok";
  }

  // gateway.dashboard_auth: the API answers 401 with `dashboard_auth`; the page asks once
  // for the credential, keeps it for this tab (sessionStorage) and sends it with every call.
  const CREDENTIAL = "gateway-dashboard-credential";
  let declined = false; // the prompt was cancelled: do not ask again at every poll

  function credentialHeaders() {
    const value = sessionStorage.getItem(CREDENTIAL);
    if (!value) return {};
    if (sessionStorage.getItem(CREDENTIAL + "-mode") === "key") return { "X-Dashboard-Key": value };
    return value.split(".").length === 3 ? { Authorization: "Bearer " + value } : { "X-API-Key": value };
  }

  async function api(path, options, retried) {
    const sent = sessionStorage.getItem(CREDENTIAL);
    const request = Object.assign({ cache: "no-store" }, options);
    request.headers = Object.assign({}, request.headers || {}, credentialHeaders());
    const response = await fetch("api/" + path, request);
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (response.status === 401 && body && body.dashboard_auth && !retried && !declined) {
      if (sessionStorage.getItem(CREDENTIAL) !== sent) return api(path, options, true); // given meanwhile
      const asked = window.prompt(body.dashboard_auth === "key"
        ? "This dashboard needs its key (X-Dashboard-Key):"
        : "This dashboard needs a token or an API key:");
      if (asked && asked.trim()) {
        sessionStorage.setItem(CREDENTIAL, asked.trim());
        sessionStorage.setItem(CREDENTIAL + "-mode", body.dashboard_auth);
        return api(path, options, true);
      }
      declined = true;
    }
    if (!response.ok) {
      const message = body && body.error ? body.error : response.status + " " + response.statusText;
      throw new Error(message);
    }
    return body;
  }

  function showError(message) {
    const banner = $("error");
    banner.textContent = message || "";
    banner.hidden = !message;
  }

  // -- the waterfall -------------------------------------------------------------------------

  function niceStep(span) {
    const raw = span / 5;
    const power = Math.pow(10, Math.floor(Math.log10(Math.max(raw, 0.001))));
    for (const m of [1, 2, 2.5, 5, 10]) {
      if (raw <= m * power) return m * power;
    }
    return 10 * power;
  }

  // An axis label: as many decimals as the step needs, seconds once the axis is that long.
  function tickText(t, step, scale) {
    const [value, unit, unitStep] = scale >= 2000 ? [t / 1000, " s", step / 1000] : [t, " ms", step];
    const digits = Number.isInteger(unitStep) ? 0 : unitStep >= 0.1 ? 1 : 2;
    return value.toFixed(digits) + unit;
  }

  // Hide every axis label that would touch the one before it (or stick out at the end):
  // how many fit depends on the width the waterfall got, so this runs after layout.
  function fitTicks(root) {
    for (const axis of root.querySelectorAll(".wf-axis")) {
      const box = axis.getBoundingClientRect();
      if (box.width === 0) continue; // not laid out (hidden): done when it is shown
      let lastRight = -Infinity;
      for (const tick of axis.querySelectorAll(".wf-tick")) {
        tick.classList.remove("wf-tick-hidden");
        const r = tick.getBoundingClientRect();
        if (r.left < lastRight + 6 || r.right > box.right + 1) {
          tick.classList.add("wf-tick-hidden");
        } else {
          lastRight = r.right;
        }
      }
    }
  }

  function entryScale(entry) {
    let end = entry.total_ms;
    for (const call of entry.calls) end = Math.max(end, call.start_ms + call.elapsed_ms);
    return Math.max(end, 1);
  }

  function callTitle(call) {
    const lines = [call.upstream ? call.name + " \u2192 " + call.upstream : call.name];
    const status = call.status === null ? "no status" : "status " + call.status;
    if (call.ran) {
      lines.push(status + " \u00b7 starts at " + ms(call.start_ms) + " \u00b7 takes " + ms(call.elapsed_ms));
    }
    if (call.deps.length) lines.push("waits for " + call.deps.join(", "));
    if (call.cached) lines.push("served from cache");
    if (call.critical) lines.push("on the critical path");
    if (call.error) lines.push(call.error);
    return lines.join("\n");
  }

  // One bar per call on a time axis shared by every call of the entry (and, when `scale` is
  // given, with other waterfalls too, so two of them can be compared by eye).
  function waterfall(entry, scale) {
    scale = scale || entryScale(entry);
    const pct = (v) => Math.min(100, (v / scale) * 100);
    const root = el("div", "waterfall");
    root.dataset.seq = String(entry.seq);

    const head = el("div", "wf-row wf-axis-row");
    head.appendChild(el("div", "wf-label muted small", "call \u2192 upstream"));
    const axis = el("div", "wf-track wf-axis");
    const step = niceStep(scale);
    for (let t = 0; t <= scale + 1e-9; t += step) {
      const tick = el("span", "wf-tick", tickText(t, step, scale));
      tick.style.left = pct(t) + "%";
      if (t > 0 && pct(t) > 92) tick.classList.add("wf-tick-end"); // ends at the axis' end
      axis.appendChild(tick);
    }
    head.appendChild(axis);
    root.appendChild(head);

    for (const call of entry.calls) {
      const row = el("div", "wf-row");
      row.title = callTitle(call);
      const label = el("div", "wf-label");
      if (call.critical) label.appendChild(el("span", "crit-mark", "\u25c6"));
      label.appendChild(el("span", "wf-name", call.name));
      if (call.upstream) label.appendChild(el("span", "wf-upstream", call.upstream));
      row.appendChild(label);

      const track = el("div", "wf-track");
      for (let t = step; t < scale; t += step) {
        const grid = el("span", "wf-grid");
        grid.style.left = pct(t) + "%";
        track.appendChild(grid);
      }
      if (call.ran) {
        const kinds = ["wf-bar"];
        if (call.critical) kinds.push("critical");
        if (call.canceled) kinds.push("canceled");
        else if (!call.ok) kinds.push("failed");
        if (call.cached) kinds.push("cached");
        const bar = el("div", kinds.join(" "));
        const left = pct(call.start_ms);
        const width = Math.max(0.6, pct(call.elapsed_ms));
        bar.style.left = left + "%";
        bar.style.width = width + "%";
        track.appendChild(bar);
        const outcome = call.canceled ? "canceled" : call.status || "failed";
        const label = el("span", "wf-ms", ms(call.elapsed_ms) + (call.ok ? "" : " \u00b7 " + outcome));
        if (left + width > 78 && width > 18) {
          label.classList.add("wf-ms-inside"); // room inside the bar's right end
          label.style.right = (100 - left - width) + "%";
        } else if (left + width > 78) {
          label.classList.add("wf-ms-left");
          label.style.right = (100 - left) + "%";
        } else {
          label.style.left = (left + width) + "%";
        }
        track.appendChild(label);
      } else {
        track.appendChild(el("span", "wf-notrun", call.error || "not run"));
      }
      row.appendChild(track);
      root.appendChild(row);
    }

    const foot = el("div", "wf-row wf-total-row");
    foot.appendChild(el("div", "wf-label muted small", "total"));
    const track = el("div", "wf-track");
    const total = el("div", "wf-total");
    total.style.width = pct(entry.total_ms) + "%";
    track.appendChild(total);
    const totalLabel = el("span", "wf-ms wf-total-ms", ms(entry.total_ms));
    if (pct(entry.total_ms) > 78) {
      totalLabel.classList.add("wf-ms-left");
      totalLabel.style.right = (100 - pct(entry.total_ms)) + "%";
    } else {
      totalLabel.style.left = pct(entry.total_ms) + "%";
    }
    track.appendChild(totalLabel);
    foot.appendChild(track);
    root.appendChild(foot);
    return root;
  }

  function entryCard(entry, scale, heading) {
    const card = el("div", "entry");
    card.dataset.seq = String(entry.seq);
    card.dataset.strategy = entry.strategy;
    card.dataset.totalMs = String(entry.total_ms);
    const head = el("div", "entry-head");
    if (heading) head.appendChild(el("span", "entry-heading", heading));
    head.appendChild(el("span", statusClass(entry.status), entry.status));
    head.appendChild(el("span", "method", entry.method));
    const path = el("span", "path", entry.path);
    path.title = "route " + entry.route + (entry.request_id ? "\nrequest id " + entry.request_id : "");
    head.appendChild(path);
    head.appendChild(el("span", "tag tag-" + entry.strategy, entry.strategy));
    if (!entry.complete && entry.status < 400) head.appendChild(el("span", "tag tag-warn", "incomplete"));
    head.appendChild(el("span", "spacer"));
    head.appendChild(el("span", "total", ms(entry.total_ms)));
    if (entry.at && entry.seq) {
      const when = el("span", "when muted small", ago(entry.at));
      when.dataset.at = String(entry.at);
      head.appendChild(when);
    }
    card.appendChild(head);
    if (entry.calls.length) {
      card.appendChild(waterfall(entry, scale));
    } else {
      card.appendChild(el("p", "muted small", "no upstream calls"));
    }
    return card;
  }

  // -- endpoints and upstreams -----------------------------------------------------------

  function renderEndpoints(endpoints) {
    const body = $("endpoints").querySelector("tbody");
    body.replaceChildren();
    for (const [index, ep] of endpoints.entries()) {
      const row = el("tr");
      const route = el("td");
      route.appendChild(el("span", "method", ep.method));
      route.appendChild(el("span", "mono", ep.route));
      if (ep.kind === "code") route.appendChild(el("span", "tag", "python"));
      if (ep.combine) {
        const hook = el("span", "tag", "combine");
        hook.title = ep.combine;
        route.appendChild(hook);
      }
      row.appendChild(route);
      const calls = el("td");
      if (ep.calls.length === 0) calls.appendChild(el("span", "muted small", "defined in Python"));
      for (const call of ep.calls) {
        const chip = el("span", "chip" + (call.optional ? " chip-optional" : ""), call.name);
        chip.title = call.upstream + "  " + call.method + " " + call.path +
          (call.deps.length ? "\nwaits for " + call.deps.join(", ") : "") + (call.optional ? "\noptional" : "");
        calls.appendChild(chip);
      }
      row.appendChild(calls);
      const strategy = el("td", "small", ep.strategy);
      strategy.dataset.label = "strategy";
      row.appendChild(strategy);
      const action = el("td", "right");
      const button = el("button", "btn btn-small", "Run");
      button.type = "button";
      button.title = "Run " + ep.method + " " + ep.route + " (example values; edit them in the form below)";
      button.addEventListener("click", () => {
        if ($("run-button").disabled) return; // a run is under way: its result comes first
        $("run-endpoint").value = String(index);
        renderParams();
        $("run-card").scrollIntoView({ behavior: "smooth", block: "start" });
        $("run-form").requestSubmit(); // validates the parameters first, like the Run button
      });
      action.appendChild(button);
      row.appendChild(action);
      body.appendChild(row);
    }
    $("endpoint-count").textContent = endpoints.length + (endpoints.length === 1 ? " route" : " routes");
  }

  function renderUpstreams(upstreams) {
    const body = $("upstreams").querySelector("tbody");
    body.replaceChildren();
    for (const up of upstreams) {
      const row = el("tr");
      const name = el("td");
      name.appendChild(el("span", "mono strong", up.name));
      if (up.batch) name.appendChild(el("span", "tag", "batch"));
      if (up.cache_ttl > 0) name.appendChild(el("span", "tag", "cache " + up.cache_ttl + " s"));
      row.appendChild(name);
      const url = el("td", "mono small url", up.url);
      url.title = up.url;
      row.appendChild(url);
      const timeout = el("td", "small", up.timeout + " s" + (up.retries ? " \u00b7 " + up.retries + " retries" : ""));
      timeout.dataset.label = "timeout";
      row.appendChild(timeout);
      const breaker = el("td");
      const badge = el("span", "state state-" + up.state, up.state);
      badge.title = up.breaker
        ? "opens after " + up.breaker.failures + " failures, retries after " + up.breaker.reset + " s"
        : "no breaker configured";
      breaker.appendChild(badge);
      row.appendChild(breaker);
      body.appendChild(row);
    }
    $("upstream-count").textContent = upstreams.length + (upstreams.length === 1 ? " upstream" : " upstreams");
  }

  // -- the run form ------------------------------------------------------------------------

  function selectedEndpoint() {
    return state.endpoints[Number($("run-endpoint").value)] || null;
  }

  function renderParams() {
    const ep = selectedEndpoint();
    const box = $("run-params");
    box.replaceChildren();
    if (!ep) return;
    const converters = routeConverters(ep.route);
    for (const [position, name] of ep.params.entries()) {
      const field = el("label", "field");
      field.appendChild(el("span", null, name));
      const input = el("input");
      input.name = "param-" + name;
      input.dataset.param = name;
      input.required = true;
      input.value = exampleValue(name, converters[name], position);
      field.appendChild(input);
      box.appendChild(field);
    }
    $("run-body-field").hidden = !(ep.needs_body && ep.method !== "GET");
    $("run-strategy").value = "";
    clearRun(); // a result under the form is always the selected endpoint's
  }

  function clearRun() {
    $("run-output").hidden = true;
    $("run-waterfalls").replaceChildren();
    $("compare-summary").replaceChildren();
    $("compare-note").hidden = true;
  }

  // A failed run leaves no earlier result under the form, so the banner is all there is.
  function runFailed(what, ep, error) {
    clearRun();
    const hint = ep && ep.params.length ? " (the route is " + ep.route + ")" : "";
    showError(what + " failed: " + error.message + hint);
  }

  // {name: converter} of a route such as /team/<int:a>/<b>: "int", "string", ...
  function routeConverters(route) {
    const out = {};
    for (const m of route.matchAll(/<(?:([A-Za-z_]\w*)(?:\([^)]*\))?:)?([A-Za-z_]\w*)>/g)) {
      out[m[2]] = m[1] || "string";
    }
    return out;
  }

  // A value the row's Run button can use as it is: 7 for an id, 1, 2, 3... for other numbers.
  function exampleValue(name, converter, position) {
    if (/id$/i.test(name)) return "7";
    if (converter === "int" || converter === "float") return String(position + 1);
    return "";
  }

  function buildPath(ep) {
    let path = ep.route.replace(/<(?:[^:<>]+:)?([A-Za-z_]\w*)>/g, (_, name) => {
      const input = $("run-params").querySelector('[data-param="' + name + '"]');
      return encodeURIComponent(input ? input.value.trim() : "");
    });
    const query = $("run-query").value.trim().replace(/^\?/, "");
    if (query) path += "?" + query;
    return path;
  }

  function runMessage(ep, strategy, cache) {
    const message = { path: buildPath(ep), method: ep.method };
    if (strategy) message.strategy = strategy;
    if (cache === false) message.cache = false;
    const bodyText = $("run-body").value.trim();
    if (!$("run-body-field").hidden && bodyText) message.body = JSON.parse(bodyText);
    return message;
  }

  async function runOnce(message) {
    return api("run", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(message),
    });
  }

  function setBusy(busy) {
    for (const id of ["run-button", "compare-button"]) $(id).disabled = busy;
  }

  async function onRun(event) {
    event.preventDefault();
    const ep = selectedEndpoint();
    if (!ep || $("run-button").disabled) return; // one run at a time
    setBusy(true);
    try {
      const answer = await runOnce(runMessage(ep, $("run-strategy").value));
      showError("");
      showRun([answer]);
    } catch (error) {
      runFailed("Run", ep, error);
    } finally {
      setBusy(false);
    }
  }

  async function onCompare() {
    const ep = selectedEndpoint();
    if (!ep) return;
    if (!$("run-form").reportValidity()) return;
    setBusy(true);
    try {
      // One after the other, so neither run competes with the other for the upstreams, and
      // both past the reply cache: otherwise the second would be served what the first stored.
      const parallel = await runOnce(runMessage(ep, "parallel", false));
      const sequential = await runOnce(runMessage(ep, "sequential", false));
      showError("");
      showRun([parallel, sequential]);
    } catch (error) {
      runFailed("Compare", ep, error);
    } finally {
      setBusy(false);
    }
  }

  function stat(label, value, cls) {
    const box = el("div", "stat" + (cls ? " " + cls : ""));
    box.appendChild(el("div", "stat-value", value));
    box.appendChild(el("div", "stat-label", label));
    return box;
  }

  function showRun(answers) {
    const entries = answers.map((a) => a.entry);
    const scale = Math.max(...entries.map(entryScale));
    const out = $("run-waterfalls");
    out.replaceChildren();
    out.classList.toggle("compare-2", entries.length === 2);
    for (const entry of entries) {
      const heading = entries.length === 2 ? entry.strategy : null;
      out.appendChild(entryCard(entry, scale, heading));
    }
    const summary = $("compare-summary");
    summary.replaceChildren();
    if (entries.length === 2) {
      const [par, seq] = entries;
      const speedup = par.total_ms > 0 ? seq.total_ms / par.total_ms : 0;
      const ran = par.calls.filter((c) => c.ran);
      const sum = ran.reduce((acc, c) => acc + c.elapsed_ms, 0);
      const slowest = ran.reduce((acc, c) => Math.max(acc, c.elapsed_ms), 0);
      summary.appendChild(stat("parallel total", ms(par.total_ms), "stat-parallel"));
      summary.appendChild(stat("sequential total", ms(seq.total_ms), "stat-sequential"));
      const verdict = speedupVerdict(speedup);
      const speed = stat("speedup \u00b7 " + verdict.text, speedup.toFixed(2) + "\u00d7",
        "stat-speedup speedup-" + verdict.kind);
      speed.id = "speedup";
      speed.dataset.verdict = verdict.kind;
      summary.appendChild(speed);
      const saved = seq.total_ms - par.total_ms;
      summary.appendChild(saved >= 0
        ? stat("saved per request", ms(saved))
        : stat("lost per request", ms(-saved), "stat-lost"));
      if (slowest > 0) {
        summary.appendChild(stat("ideal (sum of calls / slowest)", (sum / slowest).toFixed(2) + "\u00d7"));
      }
    } else if (entries.length === 1) {
      const entry = entries[0];
      summary.appendChild(stat("status", String(entry.status)));
      summary.appendChild(stat(entry.strategy + " total", ms(entry.total_ms)));
      summary.appendChild(stat("calls", String(entry.calls.length)));
      const cached = entry.calls.filter((c) => c.cached).length;
      if (cached) summary.appendChild(stat("served from cache", cached + " of " + entry.calls.length));
    }
    const note = $("compare-note");
    note.hidden = entries.length !== 2 || answers.some((a) => a.cache !== false);
    $("run-output").hidden = false;
    fitTicks(out);
  }

  // Below 1 the parallel run was slower: say so, in a colour that does not look like a win.
  function speedupVerdict(speedup) {
    if (speedup >= 1.05) return { kind: "faster", text: "parallel faster" };
    if (speedup > 0.95) return { kind: "even", text: "no real difference" };
    return { kind: "slower", text: "parallel slower" };
  }

  // -- recent requests, live ---------------------------------------------------------------

  function addRecent(entries) {
    const box = $("recent");
    for (const entry of entries) {
      const card = entryCard(entry);
      box.insertBefore(card, box.firstChild);
      fitTicks(card);
    }
    while (box.children.length > RECENT_SHOWN) box.removeChild(box.lastChild);
    $("recent-note").hidden = box.children.length > 0;
    for (const when of box.querySelectorAll(".when")) when.textContent = ago(Number(when.dataset.at));
  }

  function setLive(kind, text) {
    const live = $("live");
    live.className = "live live-" + kind;
    $("live-text").textContent = text;
  }

  async function pollRecent() {
    if (state.polling) return;
    state.polling = true;
    try {
      let answer = await api("recent?after=" + state.last + "&limit=" + RECENT_SHOWN);
      if (answer.process !== state.process || answer.last < state.last) {
        // Another worker process (each keeps its own ring) or a restart: start over.
        $("recent").replaceChildren();
        state.process = answer.process;
        if (state.last !== 0) {
          state.last = 0;
          answer = await api("recent?after=0&limit=" + RECENT_SHOWN);
        }
      }
      addRecent(answer.entries);
      state.last = answer.last;
      setLive("on", "live");
      $("live").title = "Refreshed every second from worker process " + answer.process;
    } catch (_) {
      setLive("off", "offline");
    } finally {
      state.polling = false;
    }
  }

  async function pollUpstreams() {
    try {
      renderUpstreams((await api("upstreams")).upstreams);
    } catch (_) {
      setLive("off", "offline");
    }
  }

  function schedule() {
    clearInterval(state.timer);
    clearInterval(state.upstreamTimer);
    if (document.hidden) {
      setLive("paused", "paused");
      return;
    }
    pollRecent();
    state.timer = setInterval(pollRecent, POLL_MS);
    state.upstreamTimer = setInterval(pollUpstreams, UPSTREAM_POLL_MS);
  }

  async function start() {
    try {
      const overview = await api("overview");
      state.endpoints = overview.endpoints;
      renderEndpoints(overview.endpoints);
      renderUpstreams(overview.upstreams);
      const select = $("run-endpoint");
      for (const [index, ep] of overview.endpoints.entries()) {
        const option = el("option", null, ep.method + " " + ep.route);
        option.value = String(index);
        select.appendChild(option);
      }
      renderParams();
      $("summary").textContent = overview.endpoints.length + " endpoints \u00b7 " +
        overview.upstreams.length + " upstreams \u00b7 default " + overview.gateway.strategy;
    } catch (error) {
      showError("Could not load the gateway's overview: " + error.message);
    }
    $("run-endpoint").addEventListener("change", renderParams);
    $("run-form").addEventListener("submit", onRun);
    $("compare-button").addEventListener("click", onCompare);
    document.addEventListener("visibilitychange", schedule);
    let refit = 0;
    window.addEventListener("resize", () => {
      cancelAnimationFrame(refit);
      refit = requestAnimationFrame(() => fitTicks(document));
    });
    schedule();
  }

  start();
})();
