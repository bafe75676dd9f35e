// Trellis web UI: buttons that call the REST API, live run updates over Server-Sent
// Events (with polling when a stream is unavailable), step log tails, the DAG search box,
// relative times and the theme toggle. Plain script, no dependencies. Text from the
// server is only ever put in the page with textContent, never parsed as HTML.
(function () {
  "use strict";

  var body = document.body;
  var prefix = body.dataset.prefix || "";
  var enc = encodeURIComponent;
  var FINAL = { succeeded: 1, failed: 1, aborted: 1, skipped: 1, partially_succeeded: 1, waiting: 1, cancelled: 1 };

  function $(sel, root) { return (root || document).querySelector(sel); }
  function $all(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }

  // ---- Formatting (mirrors ui/format.rs) ----
  function relative(seconds) {
    var ago = seconds >= 0, s = Math.abs(Math.round(seconds)), a;
    if (s < 10) return ago ? "just now" : "in a few seconds";
    if (s < 60) a = s + " s";
    else if (s < 3600) a = Math.floor(s / 60) + " min";
    else if (s < 86400) a = Math.floor(s / 3600) + " h";
    else if (s < 86400 * 60) a = Math.floor(s / 86400) + " d";
    else a = Math.floor(s / (86400 * 30)) + " mo";
    return ago ? a + " ago" : "in " + a;
  }
  function duration(ms) {
    if (ms == null) return "";
    var s = Math.floor(ms / 1000);
    if (ms < 1000) return ms + " ms";
    if (s < 60) return (ms / 1000).toFixed(1) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + String(s % 60).padStart(2, "0") + " s";
    return Math.floor(s / 3600) + " h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + " min";
  }
  function between(start, end, going) {
    if (!start) return null;
    var a = Date.parse(start), b = end ? Date.parse(end) : (going ? Date.now() : NaN);
    return isNaN(a) || isNaN(b) ? null : Math.max(0, b - a);
  }
  function label(status) { return String(status || "not_started").replace(/_/g, " "); }

  function timeEl(iso) {
    if (!iso) return el("span", "faint", "—");
    var t = el("time");
    t.setAttribute("datetime", iso);
    refreshTime(t);
    return t;
  }
  function refreshTime(t) {
    var at = Date.parse(t.getAttribute("datetime"));
    if (isNaN(at)) return;
    t.textContent = relative((Date.now() - at) / 1000);
    t.title = new Date(at).toLocaleString();
  }
  function refreshTimes() { $all("time[datetime]").forEach(refreshTime); }

  function setPill(pill, status) {
    if (!pill) return;
    var big = pill.classList.contains("big");
    pill.className = "pill st-" + status + (big ? " big" : "");
    pill.dataset.status = status;
    pill.textContent = label(status);
  }
  function pill(status) { var p = el("span"); setPill(p, status); return p; }

  // ---- Messages and requests ----
  var toastTimer;
  function toast(text, isError) {
    var t = $("#toast");
    if (!t) { t = el("div"); t.id = "toast"; body.appendChild(t); }
    t.className = "toast" + (isError ? " error" : "");
    t.textContent = text;
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () { t.hidden = true; }, isError ? 8000 : 3500);
  }

  // Calls the API; resolves to the JSON body (or null), rejects with the API's message.
  function call(method, path, payload) {
    var opts = { method: method, headers: { "Accept": "application/json" }, credentials: "same-origin" };
    if (payload !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(payload);
    }
    return fetch(prefix + path, opts).then(function (r) {
      return r.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        if (!r.ok) {
          var msg = data && data.error && data.error.message ? data.error.message : (r.status + " " + r.statusText);
          throw new Error(msg);
        }
        return data;
      });
    });
  }
  function sleep(ms) { return new Promise(function (res) { setTimeout(res, ms); }); }

  // Resolves once a run is recorded (a started run appears within moments).
  function waitForRun(name, runId) {
    var path = "/api/v2/dag-runs/" + enc(name) + "/" + enc(runId);
    var tries = 0;
    function attempt() {
      return call("GET", path).catch(function () {
        if (++tries > 60) return null;
        return sleep(250).then(attempt);
      });
    }
    return attempt();
  }
  function runUrl(name, runId) { return prefix + "/dags/" + enc(name) + "/runs/" + enc(runId); }

  function busy(button, on) {
    if (!button) return;
    button.disabled = on;
    button.setAttribute("aria-busy", on ? "true" : "false");
  }

  // ---- Theme ----
  function initTheme() {
    var b = $("#theme-toggle");
    if (!b) return;
    b.addEventListener("click", function () {
      var root = document.documentElement;
      var dark = root.dataset.theme ? root.dataset.theme === "dark" : matchMedia("(prefers-color-scheme: dark)").matches;
      root.dataset.theme = dark ? "light" : "dark";
      try { localStorage.setItem("trellis-theme", root.dataset.theme); } catch (e) {}
    });
  }

  // ---- DAG list ----
  function initDagList() {
    var input = $("#dag-search");
    if (!input) return;
    var rows = $all("#dag-table tbody tr");
    function apply() {
      var q = input.value.trim().toLowerCase(), shown = 0;
      rows.forEach(function (r) {
        var hit = !q || r.dataset.search.indexOf(q) >= 0;
        r.hidden = !hit;
        if (hit) shown++;
      });
      var count = $("#dag-count");
      if (count) count.textContent = shown + " of " + rows.length;
      var none = $("#no-match");
      if (none) none.hidden = shown > 0;
      var url = new URL(location.href);
      if (q) url.searchParams.set("search", input.value.trim()); else url.searchParams.delete("search");
      history.replaceState(null, "", url);
    }
    input.addEventListener("input", apply);
    document.addEventListener("keydown", function (e) {
      if (e.key === "/" && document.activeElement !== input) { e.preventDefault(); input.focus(); }
    });
    listen("/api/v2/events", function (run) {
      rows.forEach(function (r) {
        if (r.dataset.dag !== run.name) return;
        setPill($(".pill", r), run.status);
      });
    });
  }

  // ---- DAG page ----
  function initDag() {
    var head = $("#dag-head");
    if (!head) return;
    var name = head.dataset.dag;
    var form = $("#start-form");
    if (form) form.addEventListener("submit", function (e) {
      e.preventDefault();
      var button = $("#start-btn"), params = $("#start-params").value.trim();
      busy(button, true);
      var payload = params ? { params: params } : {};
      call("POST", "/api/v2/dags/" + enc(name) + "/start", payload).then(function (started) {
        return waitForRun(started.name, started.run_id).then(function () {
          location.href = runUrl(started.name, started.run_id);
        });
      }).catch(function (err) { busy(button, false); toast("Could not start: " + err.message, true); });
    });
    var suspend = $("#suspend-btn");
    if (suspend) suspend.addEventListener("click", function () {
      busy(suspend, true);
      var want = suspend.dataset.suspend === "true";
      call("POST", "/api/v2/dags/" + enc(name) + "/suspend", { suspended: want })
        .then(function () { location.reload(); })
        .catch(function (err) { busy(suspend, false); toast(err.message, true); });
    });
  }

  // ---- Live streams ----
  // Follows an SSE route, calling onRun with each `run` event's data. If the stream
  // cannot be opened (or the server does not offer it), falls back to `poll`.
  function listen(path, onRun, onEnd, poll) {
    if (!window.EventSource) { if (poll) poll(); return null; }
    var es = new EventSource(prefix + path), live = $("#live");
    if (live) live.hidden = false;
    es.addEventListener("open", function () { if (live) { live.classList.add("on"); live.textContent = "live"; } });
    es.addEventListener("run", function (e) {
      try { onRun(JSON.parse(e.data)); } catch (err) { /* a malformed event is skipped */ }
    });
    es.addEventListener("end", function () {
      es.close();
      if (live) { live.classList.remove("on"); live.textContent = "ended"; }
      if (onEnd) onEnd();
    });
    es.addEventListener("error", function () {
      if (live) live.classList.remove("on");
      if (es.readyState === EventSource.CLOSED && poll) poll();
    });
    return es;
  }

  // ---- Run page ----
  function initRun() {
    var head = $("#run-head");
    if (!head) return;
    var name = head.dataset.dag, runId = head.dataset.run;
    var base = "/api/v2/dag-runs/" + enc(name) + "/" + enc(runId);
    var stream = null, polling = false, attempt = $("#run-attempt") ? $("#run-attempt").textContent : "";
    var log = logViewer(base, head.dataset.step);

    function connect() {
      if (stream) stream.close();
      stream = listen(base + "/events", apply, null, poll);
    }
    function poll() {
      if (polling) return;
      polling = true;
      (function tick() {
        call("GET", base).then(function (run) {
          apply(run);
          if (FINAL[run.status]) { polling = false; return; }
          setTimeout(tick, 1500);
        }).catch(function () { setTimeout(tick, 3000); });
      })();
    }

    // Durations of what is still running tick between events.
    var last = null;
    setInterval(function () {
      if (!last || FINAL[last.status]) return;
      var d = between(last.started_at, null, true);
      if (d != null) $("#run-duration").textContent = duration(d);
      last.steps.forEach(function (s) {
        if (FINAL[s.status] || !s.started_at) return;
        var row = $all("#steps tbody tr").filter(function (r) { return r.dataset.step === s.name; })[0];
        if (row) $(".c-duration", row).textContent = duration(between(s.started_at, null, true));
      });
    }, 1000);

    function apply(run) {
      last = run;
      run.steps = run.steps || [];
      var final = !!FINAL[run.status];
      head.dataset.final = String(final);
      setPill($("#run-status"), run.status);
      attempt = run.attempt_id || attempt;
      replace($("#run-started"), timeEl(run.started_at));
      replace($("#run-finished"), timeEl(run.finished_at));
      var d = run.duration_ms != null ? run.duration_ms : between(run.started_at, run.finished_at, !final);
      $("#run-duration").textContent = d == null ? "—" : duration(d);
      var err = $("#run-error");
      if (err) { err.textContent = run.error || ""; err.hidden = !run.error; }
      var steps = (run.steps || []).slice();
      Object.keys(run.handlers || {}).forEach(function (k) { steps.push(Object.assign({ kind: k }, run.handlers[k])); });
      steps.forEach(updateStep);
      setButtons(final);
      log.onRun(run);
    }

    function replace(holder, child) {
      if (!holder) return;
      holder.textContent = "";
      holder.appendChild(child);
    }

    function updateStep(s) {
      var row = $all("#steps tbody tr").filter(function (r) { return r.dataset.step === s.name; })[0];
      if (!row) row = addRow(s);
      setPill($(".c-status .pill", row), s.status);
      replace($(".c-started", row), timeEl(s.started_at));
      $(".c-duration", row).textContent = duration(between(s.started_at, s.finished_at, !FINAL[s.status]));
      $(".c-exit", row).textContent = s.exit_code == null ? "" : String(s.exit_code);
      var e = $(".c-error", row);
      e.textContent = s.error || "";
      e.title = s.error || "";
      $all("svg.dag .node").forEach(function (n) {
        if (n.dataset.step === s.name) n.setAttribute("class", "node st-" + s.status);
      });
    }

    function addRow(s) {
      var row = el("tr");
      row.dataset.step = s.name;
      var nameCell = el("td", "name", s.name);
      if (s.kind) { nameCell.appendChild(document.createTextNode(" ")); nameCell.appendChild(el("span", "badge", s.kind)); }
      row.appendChild(nameCell);
      var st = el("td", "c-status"); st.appendChild(pill(s.status)); row.appendChild(st);
      row.appendChild(el("td", "c-started nowrap"));
      row.appendChild(el("td", "c-duration num"));
      row.appendChild(el("td", "c-exit num"));
      row.appendChild(el("td", "c-error err"));
      var b = el("td", "num"), btn = el("button", "btn small log-btn", "Log");
      btn.type = "button"; btn.dataset.step = s.name;
      b.appendChild(btn); row.appendChild(b);
      $("#steps tbody").appendChild(row);
      return row;
    }

    function setButtons(final) {
      var stop = $("#stop-btn"), retry = $("#retry-btn"), restart = $("#restart-btn");
      if (stop) stop.disabled = final;
      if (retry) retry.disabled = !final;
      if (restart) restart.disabled = !final;
    }

    function action(id, verb, run) {
      var b = $(id);
      if (!b) return;
      b.addEventListener("click", function () {
        if (verb === "stop" && !confirm("Stop run " + runId + "?")) return;
        busy(b, true);
        call("POST", base + "/" + verb, verb === "stop" ? undefined : {})
          .then(function (res) { run(res); })
          .catch(function (err) { busy(b, false); toast(err.message, true); });
      });
    }
    action("#stop-btn", "stop", function () { toast("Stopping the run…"); });
    action("#retry-btn", "retry", function () {
      toast("Retrying the run…");
      var before = attempt;
      // The retry records a new attempt; follow the run once it has.
      (function wait(n) {
        call("GET", base).then(function (run) {
          if (run.attempt_id !== before || !FINAL[run.status] || n > 40) { apply(run); connect(); }
          else setTimeout(function () { wait(n + 1); }, 250);
        });
      })(0);
    });
    action("#restart-btn", "restart", function (res) {
      toast("Restarting…");
      waitForRun(res.name, res.run_id).then(function () { location.href = runUrl(res.name, res.run_id); });
    });

    document.addEventListener("click", function (e) {
      var t = e.target.closest ? e.target.closest(".log-btn, svg.dag .node a, #steps tbody tr") : null;
      if (!t) return;
      var step = t.dataset.step || (t.closest("[data-step]") || {}).dataset.step;
      if (!step) return;
      e.preventDefault();
      log.open(step);
    });

    if (head.dataset.final !== "true") connect();
    log.open(head.dataset.step);
  }

  // The log card: one step's stdout or stderr, followed live while the step runs.
  function logViewer(base, first) {
    var pre = $("#log"), live = $("#log-live"), title = $("#log-step");
    var step = first, which = "stdout", es = null, offset = 0, timer = null, gen = 0, done = false;
    // A step picked without choosing a stream shows stderr when stdout stays empty.
    var auto = true;
    var MAX = 2 * 1024 * 1024;

    function setLive(text, on) { if (live) { live.textContent = text; live.classList.toggle("on", !!on); } }
    function stop() {
      gen++;
      if (es) { es.close(); es = null; }
      clearTimeout(timer);
    }
    function append(text, at) {
      var bytes = new TextEncoder().encode(text).length;
      if (at != null && at + bytes <= offset) return; // already shown (after a reconnect)
      var stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 24;
      pre.appendChild(document.createTextNode(text));
      if (pre.textContent.length > MAX) pre.textContent = pre.textContent.slice(-MAX / 2);
      offset = (at != null ? at : offset) + bytes;
      if (stick) pre.scrollTop = pre.scrollHeight;
    }
    function open(name, stream) {
      if (!name) return;
      stop();
      step = name; which = stream || which; offset = 0; done = false;
      pre.textContent = "";
      if (title) title.textContent = step;
      $all(".logtabs button").forEach(function (b) { b.classList.toggle("on", b.dataset.stream === which); });
      $all("#steps tbody tr").forEach(function (r) { r.classList.toggle("selected", r.dataset.step === step); });
      var url = new URL(location.href);
      url.searchParams.set("step", step);
      history.replaceState(null, "", url);
      follow(gen);
    }
    function finished() {
      done = true;
      setLive("complete", false);
      if (auto && offset === 0 && which === "stdout") { auto = false; open(step, "stderr"); }
    }
    function path(kind) { return base + "/steps/" + enc(step) + "/" + kind + "?stream=" + which; }
    function follow(g) {
      if (!window.EventSource) return pollLog(g);
      es = new EventSource(prefix + path("log/stream") + "&tail=500");
      setLive("connecting", false);
      es.addEventListener("open", function () { if (g === gen) setLive("live", true); });
      es.addEventListener("log", function (e) {
        if (g !== gen) return;
        try { var d = JSON.parse(e.data); append(d.text || "", d.offset); } catch (err) { /* skipped */ }
      });
      es.addEventListener("end", function () {
        if (g !== gen) return;
        es.close(); es = null;
        finished();
      });
      es.addEventListener("error", function () {
        if (g !== gen || !es) return;
        if (es.readyState === EventSource.CLOSED) { es = null; pollLog(g); }
      });
    }
    // Reads the log through the REST route until it is complete.
    function pollLog(g) {
      setLive("polling", true);
      var q = offset === 0 ? "&tail=500" : "&offset=" + offset;
      call("GET", path("log") + q).then(function (chunk) {
        if (g !== gen) return;
        if (chunk.text) append(chunk.text, chunk.offset);
        offset = chunk.next_offset;
        if (chunk.complete && chunk.next_offset >= chunk.size) { finished(); return; }
        timer = setTimeout(function () { pollLog(g); }, 1000);
      }).catch(function () {
        if (g === gen) timer = setTimeout(function () { pollLog(g); }, 3000);
      });
    }
    $all(".logtabs button").forEach(function (b) {
      b.addEventListener("click", function () { auto = false; open(step, b.dataset.stream); });
    });
    return {
      open: function (name) { auto = true; open(name, "stdout"); },
      // A retry reopens a finished log, since the step may run again.
      onRun: function (run) { if (done && !FINAL[run.status]) open(step, which); }
    };
  }

  // ---- Recent runs ----
  function initRuns() {
    var table = $("#runs-table");
    if (!table) return;
    var firstPage = !/[?&](page=[2-9]|page=\d\d|status=.|name=.)/.test(location.search);
    listen("/api/v2/events", function (run) {
      var row = $all("tbody tr", table).filter(function (r) {
        return r.dataset.dag === run.name && r.dataset.run === run.run_id;
      })[0];
      if (!row && firstPage) row = addRunRow(table, run);
      if (!row) return;
      setPill($(".c-status .pill", row), run.status);
      $(".c-duration", row).textContent = duration(run.duration_ms);
    });
  }
  function addRunRow(table, run) {
    var row = el("tr");
    row.dataset.dag = run.name; row.dataset.run = run.run_id;
    var dag = el("td", "name"), a = el("a", null, run.name);
    a.href = prefix + "/dags/" + enc(run.name); dag.appendChild(a); row.appendChild(dag);
    var id = el("td", "mono"), b = el("a", null, run.run_id);
    b.href = runUrl(run.name, run.run_id); id.appendChild(b); row.appendChild(id);
    var st = el("td", "c-status"); st.appendChild(pill(run.status)); row.appendChild(st);
    var started = el("td", "nowrap"); started.appendChild(timeEl(run.started_at)); row.appendChild(started);
    row.appendChild(el("td", "c-duration num", duration(run.duration_ms)));
    row.appendChild(el("td", "mono desc", run.params || ""));
    row.appendChild(el("td", "err", run.error || ""));
    var tbody = $("tbody", table);
    tbody.insertBefore(row, tbody.firstChild);
    return row;
  }

  // ---- Queue ----
  function initQueue() {
    $all(".dequeue-btn").forEach(function (b) {
      b.addEventListener("click", function () {
        var q = b.dataset.queue, run = b.dataset.run;
        if (!confirm("Remove run " + run + " from queue " + q + "? It is recorded as aborted.")) return;
        busy(b, true);
        call("DELETE", "/api/v2/queues/" + enc(q) + "/items/" + enc(run)).then(function () {
          var row = b.closest("tr");
          if (row) row.remove();
          toast("Dequeued " + run);
        }).catch(function (err) { busy(b, false); toast(err.message, true); });
      });
    });
  }

  function init() {
    initTheme();
    refreshTimes();
    setInterval(refreshTimes, 15000);
    initDagList();
    initDag();
    initRun();
    initRuns();
    initQueue();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
