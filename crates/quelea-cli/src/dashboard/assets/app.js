// The dashboard's pages: the jobs list and one job, drawn from /api and
// refreshed by polling with back-off (fast while statuses arrive, slower
// when nothing changes, stopped once a job is finished). No libraries.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  // Outcome codes of /api/jobs/<job> `calls.outcome`.
  const COLORS = ["#cbd5e1", "#3b82f6", "#22a55e", "#dc2626", "#f59e0b", "#a855f7", "#7f1d1d", "#78716c"];
  const NAMES = ["waiting", "running", "success", "user error", "timeout", "out of memory", "worker crashed", "cancelled"];

  // The token of the URL the command printed is a cookie now: keep it out
  // of the address bar and the history.
  if (new URLSearchParams(location.search).has("token")) {
    history.replaceState(null, "", location.pathname);
  }

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const child of children) node.append(child);
    return node;
  }

  async function getJSON(url, options) {
    const response = await fetch(url, Object.assign({ cache: "no-store", credentials: "same-origin" }, options));
    let body;
    try {
      body = await response.json();
    } catch (e) {
      body = { error: response.status + " " + response.statusText };
    }
    if (!response.ok) throw new Error(body.error || response.statusText);
    return body;
  }

  function seconds(s) {
    if (s === null || s === undefined || !isFinite(s)) return "–";
    if (s < 0.001) return (s * 1e6).toFixed(0) + " µs";
    if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 0) + " ms";
    if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + " s";
    if (s < 3600) return Math.floor(s / 60) + "m" + String(Math.floor(s % 60)).padStart(2, "0") + "s";
    return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
  }

  function when(ts) {
    if (!ts) return "–";
    const d = new Date(ts * 1000);
    const today = new Date().toDateString() === d.toDateString();
    return today ? d.toLocaleTimeString() : d.toLocaleString();
  }

  function bytes(n) {
    if (!n) return "0 B";
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return n.toFixed(i ? 1 : 0) + " " + units[i];
  }

  function cost(c) {
    return c ? "$" + c.estimated_usd.toFixed(c.estimated_usd < 0.01 ? 6 : 4) + " · " + c.gb_seconds.toFixed(1) + " GB-s" : "–";
  }

  function stateOf(job) {
    if (job.cancelled) return ["cancelled", "cancelled"];
    if (job.live) return ["running", "live"];
    return job.failed ? ["finished, " + job.failed + " failed", "failed"] : ["finished", "done"];
  }

  // Calls `step` until it says stop; `step` resolves to [changed, stop].
  function poll(step, fastMs, slowMs) {
    let delay = fastMs;
    async function tick() {
      let changed = false;
      let stop = false;
      try {
        [changed, stop] = await step();
        $("updated").textContent = "updated " + new Date().toLocaleTimeString();
      } catch (e) {
        problem(e.message);
      }
      if (stop) {
        $("updated").textContent = "final · " + new Date().toLocaleTimeString();
        return;
      }
      delay = changed ? fastMs : Math.min(slowMs, delay * 1.6);
      setTimeout(tick, delay);
    }
    tick();
  }

  function problem(text) {
    const p = $("problem") || $("problems");
    if (!p) return;
    p.hidden = !text;
    p.textContent = text || "";
  }

  function progressBar(job, node) {
    const total = Math.max(1, job.total);
    node.querySelector(".ok").style.width = (100 * (job.done - job.failed)) / total + "%";
    node.querySelector(".bad").style.width = (100 * job.failed) / total + "%";
  }

  // ---------------------------------------------------------------- jobs
  function jobsPage() {
    let last = "";
    poll(async () => {
      const data = await getJSON("/api/jobs");
      $("storage").textContent = data.storage;
      problem(data.problems.length ? "Unreadable: " + data.problems.join("; ") : "");
      const signature = JSON.stringify(data.jobs.map((j) => [j.key, j.version, j.cancelled]));
      const changed = signature !== last;
      last = signature;
      const body = $("jobs").querySelector("tbody");
      body.replaceChildren(
        ...data.jobs.map((job) => {
          const [label, cls] = stateOf(job);
          const bar = el("div", { class: "bar" }, el("div", { class: "ok" }), el("div", { class: "bad" }));
          progressBar(job, bar);
          const href = "/job/" + encodeURIComponent(job.key);
          const row = el(
            "tr",
            { class: "job", "data-key": job.key, onclick: () => (location.href = href) },
            el("td", { text: job.executor }),
            el("td", {}, el("a", { href: href, text: job.job })),
            el("td", { text: job.kind.replace("_", " ") }),
            el("td", { class: "fn", text: job.function, title: job.function }),
            el("td", { class: "num done", text: job.done }),
            el("td", { class: "num failed", text: job.failed }),
            el("td", { class: "num", text: job.total }),
            el("td", {}, bar),
            el("td", { text: when(job.start_ts || job.submit_ts) }),
            el("td", { class: "num", text: seconds(job.duration_s) }),
            el("td", { class: "num", text: cost(job.cost) }),
            el("td", {}, el("span", { class: "badge " + cls, text: label }))
          );
          return row;
        })
      );
      $("empty").hidden = data.jobs.length > 0;
      const live = data.jobs.some((j) => j.live);
      return [changed || live, false];
    }, 1000, 10000);
  }

  // ----------------------------------------------------------------- job
  function jobPage() {
    const key = decodeURIComponent(location.pathname.slice("/job/".length));
    document.title = "quelea " + key;
    let version = null;
    let current = null;
    $("timeline").addEventListener("click", (event) => {
      const call = hitTest(event);
      if (call !== null) showCall(key, call);
    });
    $("call-input").addEventListener("change", (event) => {
      const n = parseInt(event.target.value, 10);
      if (!isNaN(n)) showCall(key, n);
    });
    $("cancel").addEventListener("click", async () => {
      if (!confirm("Cancel job " + key + "? Queued calls will not run and running ones are stopped.")) return;
      try {
        await getJSON("/api/jobs/" + encodeURIComponent(key) + "/cancel", {
          method: "POST",
          headers: { "X-Quelea-Dashboard": "cancel" },
        });
        $("cancel").disabled = true;
        $("cancel").textContent = "Cancel requested";
      } catch (e) {
        problem(e.message);
      }
    });
    window.addEventListener("resize", () => current && draw(current));
    poll(async () => {
      const url = "/api/jobs/" + encodeURIComponent(key) + (version === null ? "" : "?v=" + version);
      const data = await getJSON(url);
      if (data.unchanged) return [false, false];
      problem("");
      version = data.version;
      current = data;
      render(key, data);
      // For bench/dashboard_render.py: when the page first showed the job.
      if (!performance.getEntriesByName("quelea-first-draw").length) performance.mark("quelea-first-draw");
      const finished = data.job.done >= data.job.total;
      return [true, finished];
    }, 500, 5000);
  }

  function render(key, data) {
    const job = data.job;
    $("title").textContent = job.key + " · " + job.function;
    const [label, cls] = stateOf(job);
    $("state").textContent = label;
    $("state").className = "badge " + cls;
    const cancel = $("cancel");
    cancel.hidden = !job.live;
    const facts = [
      ["Function", job.function],
      ["Kind", job.kind.replace("_", " ") + " · " + job.runner],
      ["Calls", job.total],
      ["Done", job.done],
      ["Failed", job.failed],
      ["Running", job.running],
      ["Submitted", when(job.submit_ts)],
      ["Duration", seconds(job.duration_s)],
      ["Median call", seconds(data.median_s)],
      ["Timeout per call", seconds(job.timeout_s)],
      ["Cost (estimate)", cost(job.cost)],
    ];
    $("facts").replaceChildren(...facts.map(([k, v]) => el("div", {}, el("dt", { text: k }), el("dd", { text: String(v) }))));
    const progress = $("progress");
    progressBar(job, progress);
    progress.dataset.done = job.done;
    progress.dataset.total = job.total;
    $("progress-text").textContent = job.done + " / " + job.total + " done" + (job.failed ? ", " + job.failed + " failed" : "");
    $("legend").replaceChildren(...NAMES.map((name, i) => el("span", {}, el("i", { class: "swatch-" + i }), name)));
    $("legend").querySelectorAll("i").forEach((node, i) => (node.style.background = COLORS[i]));
    draw(data);
    $("straggler-rule").textContent = data.median_s === null ? "" : "over 3× the median and 1 s more";
    $("stragglers").replaceChildren(
      ...data.stragglers.slice(0, 500).map((call) => {
        const c = data.calls;
        const end = c.end_us[call] >= 0 ? c.end_us[call] : data.now_us;
        const li = el("li", { text: String(call).padStart(5, "0") + " · " + seconds((end - c.start_us[call]) / 1e6) + (c.end_us[call] < 0 ? " so far" : "") });
        li.addEventListener("click", () => showCall(key, call));
        return li;
      })
    );
    if (!data.stragglers.length) $("stragglers").replaceChildren(el("li", { class: "muted", text: "none" }));
    $("failure-count").textContent = data.failures_total
      ? data.failures_total + (data.failures_total > data.failures.length ? " (first " + data.failures.length + " shown)" : "")
      : "none";
    $("failures").replaceChildren(
      ...data.failures.map((f) => {
        const head = el("div", { class: "head" }, el("b", { text: "call " + String(f.call).padStart(5, "0") }), " · " + f.type + " (" + f.reason.replace(/_/g, " ") + "): " + f.message);
        head.addEventListener("click", () => showCall(key, f.call));
        const box = el("div", { class: "failure", "data-call": f.call }, head);
        if (f.traceback) box.append(el("pre", { class: "traceback", text: f.traceback }));
        return box;
      })
    );
  }

  function draw(data) {
    drawTimeline(data);
    drawHistogram(data);
  }

  let layout = null;

  function fitCanvas(canvas, cssHeight) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 800;
    canvas.style.height = cssHeight + "px";
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(cssHeight * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, cssHeight);
    return [ctx, width];
  }

  // A min-heap of [end, lane] pairs: the lane that frees first on top.
  function heapPush(heap, item) {
    heap.push(item);
    let i = heap.length - 1;
    while (i > 0) {
      const up = (i - 1) >> 1;
      if (heap[up][0] <= heap[i][0]) break;
      [heap[up], heap[i]] = [heap[i], heap[up]];
      i = up;
    }
  }

  function heapPop(heap) {
    const top = heap[0];
    const last = heap.pop();
    if (heap.length) {
      heap[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < heap.length && heap[l][0] < heap[m][0]) m = l;
        if (r < heap.length && heap[r][0] < heap[m][0]) m = r;
        if (m === i) break;
        [heap[m], heap[i]] = [heap[i], heap[m]];
        i = m;
      }
    }
    return top;
  }

  function drawTimeline(data) {
    const c = data.calls;
    const n = c.outcome.length;
    const now = data.now_us;
    const ends = new Float64Array(n);
    let tmin = Infinity;
    let tmax = -Infinity;
    let started = 0;
    // Bars: a run of consecutive calls of one runner call (a batch: same
    // worker, start and end) with the same outcome is one bar; otherwise
    // each call is a bar of its own. `barFirst` holds each bar's first call.
    const barFirst = [];
    const barCount = [];
    let last = -1;
    for (let i = 0; i < n; i++) {
      const s = c.start_us[i];
      if (s < 0) continue;
      const e = c.end_us[i] >= 0 ? c.end_us[i] : c.outcome[i] === 1 ? Math.max(s, now) : s;
      ends[i] = e;
      if (s < tmin) tmin = s;
      if (e > tmax) tmax = e;
      started++;
      if (last >= 0 && last === i - 1 && c.worker[last] === c.worker[i] && c.start_us[last] === s && ends[last] === e && c.outcome[last] === c.outcome[i]) {
        barCount[barCount.length - 1]++;
      } else {
        barFirst.push(i);
        barCount.push(1);
      }
      last = i;
    }
    // Bars by worker, then start: one numeric key each.
    const key = new Float64Array(barFirst.length);
    for (let b = 0; b < barFirst.length; b++) key[b] = (c.worker[barFirst[b]] + 1) * 1e13 + c.start_us[barFirst[b]];
    const byStart = new Uint32Array(barFirst.length);
    for (let b = 0; b < byStart.length; b++) byStart[b] = b;
    byStart.sort((a, b) => key[a] - key[b]);
    // Lanes: the bars of one worker share its lanes; a bar overlapping every
    // lane of its worker (another server's worker of the same number, or a
    // call of another outcome in the same batch) opens a new lane.
    const barLane = new Int32Array(barFirst.length);
    const laneWorker = [];
    let free = [];
    let previousWorker = null;
    for (const b of byStart) {
      const i = barFirst[b];
      const w = c.worker[i];
      if (w !== previousWorker) {
        free = [];
        previousWorker = w;
      }
      let lane;
      if (free.length && free[0][0] <= c.start_us[i]) lane = heapPop(free)[1];
      else {
        lane = laneWorker.length;
        laneWorker.push(w);
      }
      heapPush(free, [ends[i], lane]);
      barLane[b] = lane;
    }
    const laneOf = new Int32Array(n).fill(-1);
    for (let b = 0; b < barFirst.length; b++) {
      for (let m = 0; m < barCount[b]; m++) laneOf[barFirst[b] + m] = barLane[b];
    }
    const lanes = Math.max(1, laneWorker.length);
    const rowH = Math.max(1, Math.min(14, 360 / lanes));
    const canvas = $("timeline");
    const [ctx, width] = fitCanvas(canvas, Math.max(60, Math.ceil(lanes * rowH)));
    const span = Math.max(1, tmax - tmin);
    const scale = width / span;
    const gap = rowH > 4 ? 1 : 0;
    let bars = 0;
    // One pass per colour: thousands of rectangles draw in milliseconds.
    for (let o = 0; o < COLORS.length; o++) {
      ctx.fillStyle = COLORS[o];
      for (let b = 0; b < barFirst.length; b++) {
        const i = barFirst[b];
        if (c.outcome[i] !== o) continue;
        const x = (c.start_us[i] - tmin) * scale;
        const w = Math.max(1, (ends[i] - c.start_us[i]) * scale);
        ctx.fillRect(x, barLane[b] * rowH, w, rowH - gap);
        bars += barCount[b];
      }
    }
    ctx.strokeStyle = "#f59e0b";
    ctx.lineWidth = 2;
    for (const i of data.stragglers) {
      if (laneOf[i] < 0) continue;
      const x = (c.start_us[i] - tmin) * scale;
      ctx.strokeRect(x, laneOf[i] * rowH + 1, Math.max(2, (ends[i] - c.start_us[i]) * scale), Math.max(1, rowH - gap - 2));
    }
    // Calls drawn, and the rectangles that drew them.
    canvas.dataset.bars = bars;
    canvas.dataset.rects = barFirst.length;
    canvas.dataset.lanes = laneWorker.length;
    layout = { tmin, scale, rowH, laneOf, ends, c };
    const axis = $("timeline-axis");
    if (started) {
      const t = (us) => seconds(us / 1e6);
      const batched = barFirst.length < started ? " · a batch's calls share one bar" : "";
      axis.replaceChildren(
        el("span", { text: "+" + t(tmin) + " after submit" }),
        el("span", { text: lanes + " lane(s), " + new Set(laneWorker).size + " worker id(s)" + batched }),
        el("span", { text: "+" + t(tmax) }));
    } else {
      axis.replaceChildren(el("span", { text: "no call has started yet" }));
    }
  }

  function hitTest(event) {
    if (!layout) return null;
    const rect = event.target.getBoundingClientRect();
    const x = event.clientX - rect.left;
    const lane = Math.floor((event.clientY - rect.top) / layout.rowH);
    const t = layout.tmin + x / layout.scale;
    const slack = 3 / layout.scale;
    let best = null;
    for (let i = 0; i < layout.laneOf.length; i++) {
      if (layout.laneOf[i] !== lane) continue;
      if (layout.c.start_us[i] - slack <= t && t <= layout.ends[i] + slack) { best = i; break; }
    }
    return best;
  }

  function drawHistogram(data) {
    const c = data.calls;
    const durations = [];
    for (let i = 0; i < c.outcome.length; i++) {
      if (c.outcome[i] >= 2 && c.start_us[i] >= 0 && c.end_us[i] >= 0) durations.push((c.end_us[i] - c.start_us[i]) / 1e6);
    }
    const canvas = $("histogram");
    const [ctx, width] = fitCanvas(canvas, 200);
    const axis = $("histogram-axis");
    if (!durations.length) {
      axis.replaceChildren(el("span", { text: "no call has finished yet" }));
      canvas.dataset.calls = 0;
      return;
    }
    let max = 0;
    for (const d of durations) if (d > max) max = d;
    const bins = 40;
    const counts = new Array(bins).fill(0);
    for (const d of durations) counts[Math.min(bins - 1, Math.floor((d / (max || 1)) * bins))]++;
    const top = Math.max(...counts);
    const barW = width / bins;
    const limit = data.median_s === null ? Infinity : Math.max(3 * data.median_s, data.median_s + 1);
    for (let b = 0; b < bins; b++) {
      if (!counts[b]) continue;
      // Square-root height, so a few stragglers stay visible beside thousands.
      const h = Math.max(2, (Math.sqrt(counts[b]) / Math.sqrt(top)) * 186);
      ctx.fillStyle = ((b + 1) / bins) * max > limit ? "#f59e0b" : "#3b82f6";
      ctx.fillRect(b * barW + 1, 200 - h, barW - 2, h);
    }
    if (data.median_s !== null) {
      ctx.fillStyle = "#0f172a";
      ctx.fillRect((data.median_s / (max || 1)) * width, 0, 1, 200);
    }
    canvas.dataset.calls = durations.length;
    axis.replaceChildren(
      el("span", { text: "0" }),
      el("span", { text: durations.length + " finished calls · median " + seconds(data.median_s) + " (line) · bar height √count" }),
      el("span", { text: seconds(max) })
    );
  }

  async function showCall(key, call) {
    const box = $("call");
    $("call-input").value = call;
    try {
      const d = await getJSON("/api/jobs/" + encodeURIComponent(key) + "/calls/" + call);
      const rows = [["State", d.state]];
      const s = d.stats;
      if (s) {
        rows.push(["Worker", s.worker_id === undefined ? "–" : s.worker_id + (s.cold_start ? " (cold start)" : " (warm)")]);
        rows.push(["Submitted", when(s.submit_ts)], ["Started", when(s.start_ts)], ["Ended", when(s.end_ts)]);
        rows.push(["Duration", s.start_ts && s.end_ts ? seconds(s.end_ts - s.start_ts) : "–"]);
        rows.push(["Peak memory", bytes(s.peak_memory_bytes)], ["Result size", bytes(s.result_size)]);
        if (s.memory_mb) rows.push(["Instance memory", s.memory_mb + " MB"]);
      }
      const parts = [el("h3", { text: "Call " + String(d.call).padStart(5, "0") }),
        el("table", {}, ...rows.map(([k, v]) => el("tr", {}, el("td", { text: k }), el("td", { text: String(v) }))))];
      if (d.error) {
        parts.push(el("p", {}, el("b", { text: d.error.type }), " (" + d.error.reason.replace(/_/g, " ") + "): " + d.error.message));
        if (d.error.traceback) parts.push(el("pre", { class: "traceback", text: d.error.traceback }));
      }
      if (d.output) parts.push(el("h4", { text: "Printed output" }), el("pre", { class: "output", text: d.output }));
      if (d.output_note) parts.push(el("p", { class: "muted", text: d.output_note }));
      for (const e of d.elements || []) {
        parts.push(el("p", {}, el("b", { text: "element " + e.element }), e.ok ? " printed:" : " failed: " + e.type + ": " + e.message));
        parts.push(el("pre", { class: e.ok ? "output" : "traceback", text: e.ok ? e.output : e.traceback || "" }));
      }
      if (!d.output && !d.output_note && d.state === "success") parts.push(el("p", { class: "muted", text: "It printed nothing (output is kept for Python calls)." }));
      box.replaceChildren(...parts);
    } catch (e) {
      box.replaceChildren(el("p", { class: "problem", text: e.message }));
    }
  }

  if (document.body.dataset.page === "jobs") jobsPage();
  else if (document.body.dataset.page === "job") jobPage();
})();
