// ptth: the overview page. One Server-Sent Events stream (GET /api/v1/overview?follow=1)
// brings a snapshot of the node when it changes; each one redraws the page.
"use strict";

(() => {
  const {el, setRows, setText, nodeCell, badge} = ptth;
  let stream = null;
  let last = null; // the last snapshot
  let receivedAt = 0; // performance.now() when it came
  let hover = null; // the chart's point under the pointer

  function connect() {
    if (stream) stream.close();
    ptth.connection("wait", "connecting…");
    stream = ptth.events("/api/v1/overview", {follow: "1"});
    stream.addEventListener("open", () => ptth.connection("live", "live"));
    stream.addEventListener("overview", (event) => {
      ptth.connection("live", "live");
      render(JSON.parse(event.data));
    });
    stream.addEventListener("problem", (event) => {
      ptth.connection("warn", "node: " + JSON.parse(event.data).error);
    });
    stream.addEventListener("error", () => {
      if (stream.readyState === EventSource.CLOSED) {
        stream = null;
        ptth.connection("off", "disconnected");
        ptth.streamFailed(connect);
      } else {
        ptth.connection("wait", "reconnecting…");
      }
    });
  }

  // -- rendering ----------------------------------------------------------------------

  function render(overview) {
    last = overview;
    receivedAt = performance.now();
    const now = overview.now;
    const names = new Map(overview.neighbours.rows.map((n) => [n.node, n.name]));

    document.title = "ptth · " + (overview.name || overview.node.slice(0, 10));
    setText("node-name", overview.name || "unnamed node");
    setText("node-id", overview.node);
    setText("peers", ptth.count(overview.peers));
    setText("connections", ptth.count(overview.connections));
    const endpoints = document.getElementById("endpoints");
    endpoints.replaceChildren(...(overview.endpoints.length
      ? overview.endpoints.map((url) => el("code", {}, url)) : ["none"]));
    tickUptime();

    // Tiles.
    const counters = overview.counters;
    setText("tile-in", ptth.rate(overview.rates.in));
    setText("tile-out", ptth.rate(overview.rates.out));
    setText("tile-queued", ptth.count(overview.queued.frames));
    setText("tile-queued-bytes", ptth.bytes(overview.queued.bytes) + " in the store");
    setText("tile-inbox", ptth.count(overview.inbox.frames));
    setText("tile-inbox-bytes", ptth.bytes(overview.inbox.bytes) + " waiting for the app");
    const states = {up: 0, "backing-off": 0, down: 0};
    for (const link of overview.neighbours.rows) states[link.state] = (states[link.state] || 0) + 1;
    setText("tile-up", states.up + " / " + overview.neighbours.count);
    setText("tile-down", states.down + " down, " + states["backing-off"] + " backing off");
    document.getElementById("tile-up").closest(".tile").classList.toggle(
      "alert", states.down > 0);
    setText("tile-routes", ptth.count(overview.routes.count));
    const subs = overview.subscriptions;
    setText("tile-subs", ptth.count(subs.named.length + subs.live));
    setText("tile-subs-sub", subs.named.length + " named, " + subs.live + " live");
    setText("tile-dropped", ptth.count(counters.frames_dropped));
    setText("tile-dropped-sub", ptth.count(counters.frames_rejected) + " rejected, " +
      ptth.count(counters.requests_refused) + " requests refused");

    // Neighbours.
    setText("neighbours-count", overview.neighbours.count + " in all");
    setRows("neighbours", overview.neighbours.rows.map((n) => el("tr", {},
      el("td", {}, nodeCell(n.node, n.name)),
      el("td", {}, n.roles.join(", ")),
      el("td", {}, badge(n.state)),
      el("td", {}, ptth.ago(n.last_heard, now)),
      el("td", {class: "num"}, ptth.count(n.queued.frames),
        el("span", {class: "muted"}, " · " + ptth.bytes(n.queued.bytes))),
      el("td", {class: "error-text", title: n.last_error || ""}, n.last_error || ""),
    )), "no neighbours yet: add a peer with ptth peer add");

    // Queues.
    setText("queues-count", overview.queues.count + " next hops");
    setRows("queues", overview.queues.rows.map((q) => el("tr", {},
      el("td", {}, q.next_hop ? nodeCell(q.next_hop, names.get(q.next_hop))
        : el("span", {class: "muted"}, "held (no route yet)")),
      el("td", {class: "num"}, ptth.count(q.frames)),
      el("td", {class: "num"}, ptth.bytes(q.bytes)),
      el("td", {class: "num"}, q.oldest_age === null ? "–" : ptth.duration(q.oldest_age)),
      el("td", {}, q.link ? badge(q.link) : "–"),
      el("td", {}, q.next_attempt_in === null ? "" : "in " + ptth.duration(q.next_attempt_in)),
    )), "nothing queued");

    // Routes.
    const routes = overview.routes;
    setText("routes-count", routes.count > routes.rows.length
      ? "the first " + routes.rows.length + " of " + ptth.count(routes.count)
      : ptth.count(routes.count) + " destinations");
    setRows("routes", routes.rows.map((r) => el("tr", {},
      el("td", {}, nodeCell(r.destination, names.get(r.destination))),
      el("td", {}, r.direct ? el("span", {class: "muted"}, "direct")
        : nodeCell(r.next_hop, names.get(r.next_hop))),
      el("td", {class: "num"}, r.hops),
      el("td", {class: "num"}, r.age === null ? "–" : ptth.duration(r.age)),
      el("td", {class: "num"}, r.expires_in === null ? "–" : ptth.duration(r.expires_in)),
    )), "no routes yet");

    // Subscriptions.
    setText("subs-count", subs.live + " live in this process");
    setRows("subscriptions", subs.named.map((s) => el("tr", {},
      el("td", {}, el("code", {}, s.name)),
      el("td", {}, s.patterns.map((p) => el("code", {class: "tag"}, p))),
      el("td", {class: "num"}, ptth.duration(s.lease)),
    )), "no named subscriptions");
    const advertised = document.getElementById("advertised");
    advertised.replaceChildren(...(subs.advertised.length
      ? subs.advertised.map((p) => el("code", {class: "tag"}, p)) : ["nothing"]));

    // Relays.
    setRows("attachments", overview.attachments.map((a) => el("tr", {},
      el("td", {}, nodeCell(a.relay, names.get(a.relay))),
      el("td", {}, a.mode || "–"),
      el("td", {class: "num"}, ptth.count(a.connections)),
      el("td", {}, ptth.ago(a.last_activity, now)),
      el("td", {class: "error-text", title: a.last_error || ""}, a.last_error || ""),
    )), "not attached to any relay");
    setRows("relaying", overview.relaying.rows.map((r) => el("tr", {},
      el("td", {}, nodeCell(r.node, names.get(r.node))),
      el("td", {class: "num"}, ptth.count(r.connections)),
      el("td", {}, r.polling ? "long-poll" : "upgrade"),
      el("td", {class: "num"}, ptth.duration(r.idle_for)),
      el("td", {class: "num"}, ptth.count(r.requests)),
    )), "no node is attached to this one");

    // Recent frames.
    setRows("sent", overview.recent.sent.map((f) => el("tr", {dataset: {id: f.id}},
      el("td", {}, ptth.clock(f.at)),
      el("td", {}, el("code", {title: f.id}, f.id.slice(0, 12)), " ", el("span", {class: "kind"}, f.kind)),
      el("td", {}, f.kind === "pub" ? el("code", {class: "tag"}, f.to) : nodeCell(f.to, names.get(f.to))),
      el("td", {class: "num"}, ptth.bytes(f.size)),
      el("td", {title: f.why || ""}, badge(f.state),
        typeof f.hops === "number" ? " " + f.hops + (f.hops === 1 ? " hop" : " hops") : "",
        f.why ? el("span", {class: "error-text"}, " " + f.why) : ""),
    )), "nothing sent since the node started");
    setRows("received", overview.recent.received.map((f) => el("tr", {dataset: {id: f.id}},
      el("td", {}, ptth.clock(f.at)),
      el("td", {}, el("code", {title: f.id}, f.id.slice(0, 12)), " ", el("span", {class: "kind"}, f.kind)),
      el("td", {}, nodeCell(f.src, names.get(f.src))),
      el("td", {}, f.topic ? [f.what + " ", el("code", {class: "tag"}, f.topic)] : f.what),
      el("td", {class: "num"}, f.hops),
      el("td", {class: "num"}, ptth.bytes(f.size)),
    )), "nothing received since the node started");

    // Counters.
    setRows("counters", Object.entries(counters).sort().map(([name, value]) => el("tr", {},
      el("td", {}, el("code", {}, name)), el("td", {class: "num"}, ptth.count(value)))), "none");

    drawChart();
  }

  function tickUptime() {
    if (!last || last.uptime === null) return;
    setText("uptime", ptth.duration(last.uptime + (performance.now() - receivedAt) / 1000));
  }

  // -- the chart: frames in and out per second, drawn on a canvas ------------------------

  function niceCeiling(value) {
    if (value <= 1) return 1;
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 2.5, 5, 10]) {
      if (value <= step * power) return step * power;
    }
    return 10 * power;
  }

  function drawChart() {
    const canvas = document.getElementById("chart");
    if (!canvas || !last) return;
    const box = canvas.parentElement.getBoundingClientRect();
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(200, Math.floor(box.width));
    const height = Math.max(160, Math.floor(box.height));
    canvas.width = width * ratio;
    canvas.height = height * ratio;
    canvas.style.width = width + "px";
    canvas.style.height = height + "px";
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);

    const css = getComputedStyle(document.documentElement);
    const color = (name) => css.getPropertyValue(name).trim();
    const points = last.throughput.points;
    const {span, end, start} = window_();
    const left = LEFT, right = RIGHT, top = 10, bottom = 26;
    const plotW = width - left - right;
    const plotH = height - top - bottom;
    let peak = 0;
    for (const [, rin, rout] of points) peak = Math.max(peak, rin, rout);
    const ceiling = niceCeiling(peak);
    const x = (t) => left + ((t - start) / span) * plotW;
    const y = (v) => top + plotH - (v / ceiling) * plotH;

    g.font = "12px system-ui, sans-serif";
    g.lineWidth = 1;
    g.strokeStyle = color("--grid");
    g.fillStyle = color("--muted");
    g.textAlign = "right";
    g.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const value = (ceiling * i) / 4;
      const py = Math.round(y(value)) + 0.5;
      g.beginPath();
      g.moveTo(left, py);
      g.lineTo(width - right, py);
      g.stroke();
      g.fillText(ptth.rate(value) + "/s", left - 8, py);
    }
    g.textAlign = "center";
    g.textBaseline = "top";
    const tick = [10, 15, 30, 60, 120, 300].find((s) => span / 1000 / s <= 6) || 600;
    for (let back = 0; back * 1000 <= span; back += tick) {
      const label = back === 0 ? "now" : back < 60 ? "−" + back + " s"
        : "−" + (back % 60 ? (back / 60).toFixed(1) : back / 60) + " min";
      const px = x(end - back * 1000);
      g.fillText(label, Math.min(Math.max(px, left + 16), width - right - 16), top + plotH + 8);
    }

    if (points.length === 0) {
      g.textBaseline = "middle";
      g.fillText("collecting the first samples…", left + plotW / 2, top + plotH / 2);
      return;
    }
    const visible = points.filter(([t]) => t >= start);
    const series = [[1, color("--in")], [2, color("--out")]];
    for (const [index, stroke] of series) {
      g.beginPath();
      visible.forEach((point, i) => {
        const px = x(point[0]);
        const py = y(point[index]);
        if (i === 0) g.moveTo(px, py);
        else g.lineTo(px, py);
      });
      g.strokeStyle = stroke;
      g.lineWidth = 2;
      g.lineJoin = "round";
      g.stroke();
      if (visible.length > 1) {
        g.lineTo(x(visible[visible.length - 1][0]), y(0));
        g.lineTo(x(visible[0][0]), y(0));
        g.closePath();
        g.globalAlpha = 0.12;
        g.fillStyle = stroke;
        g.fill();
        g.globalAlpha = 1;
      }
    }
    const shown = hover !== null && visible[hover] ? visible[hover] : visible[visible.length - 1];
    if (hover !== null && visible[hover]) {
      const px = Math.round(x(shown[0])) + 0.5;
      g.strokeStyle = color("--muted");
      g.lineWidth = 1;
      g.setLineDash([3, 3]);
      g.beginPath();
      g.moveTo(px, top);
      g.lineTo(px, top + plotH);
      g.stroke();
      g.setLineDash([]);
    }
    const reading = ptth.clock(shown[0]) + ": " + ptth.rate(shown[1]) + "/s in, " +
      ptth.rate(shown[2]) + "/s out";
    setText("chart-reading", reading);
    canvas.setAttribute("aria-label", "Frames per second over the last " +
      ptth.duration(span / 1000) + "; " + reading);
  }

  const LEFT = 52;
  const RIGHT = 12;

  // The chart's time window: the history kept (ten minutes), or less while the node is
  // young (at least a minute), so that a new node's first samples fill the width.
  function window_() {
    const full = last.throughput.span * 1000;
    const end = last.now;
    const points = last.throughput.points;
    const first = points.length ? points[0][0] - last.throughput.interval * 1000 : end;
    const span = Math.min(full, Math.max(60000, end - first));
    return {span, end, start: end - span};
  }

  function pointer(event) {
    if (!last) return;
    const canvas = event.currentTarget;
    const box = canvas.getBoundingClientRect();
    const {span, start} = window_();
    const points = last.throughput.points.filter(([t]) => t >= start);
    if (points.length === 0) return;
    const t = start + ((event.clientX - box.left - LEFT) / (box.width - LEFT - RIGHT)) * span;
    let best = 0;
    points.forEach(([at], i) => {
      if (Math.abs(at - t) < Math.abs(points[best][0] - t)) best = i;
    });
    hover = best;
    drawChart();
  }

  // -- start --------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    const canvas = document.getElementById("chart");
    canvas.addEventListener("pointermove", pointer);
    canvas.addEventListener("pointerleave", () => {
      hover = null;
      drawChart();
    });
    new ResizeObserver(() => drawChart()).observe(canvas.parentElement);
    // The chart's colours come from the scheme: draw it again when that changes.
    matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => drawChart());
    setInterval(tickUptime, 1000);
    ptth.withToken(connect);
  });
})();
