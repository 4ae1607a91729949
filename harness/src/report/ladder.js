// Draws report.html's ladder diagram from the run's data (the JSON element #run): time runs down the page,
// one column per host, one arrow per packet. Every item gets a vertical position from its time; quiet
// stretches longer than GAP_CAP pixels are compressed to GAP_CAP and labelled. The diagram is cut into tiles
// of TILE pixels, each its own SVG that the browser lays out and paints only near the viewport
// (content-visibility), so tens of thousands of arrows stay responsive.
"use strict";
(function () {
  const run = JSON.parse(document.getElementById("run").textContent);
  const ROW = 18;          // a packet row: room for its label above the arrow
  const MARK = 14;         // any other labelled item
  const SLANT = 6;         // an arrow's drop when sender and receiver saw it within the same pixel
  const GAP_CAP = 44;      // a quiet stretch drawn longer than this is compressed to this
  const TILE = 3000;
  const TOP = 24;
  const EAGER_PACKETS = 5000; // up to this many packets every tile is drawn at once
  const GUTTER = 92;       // time labels
  const STEPS_W = 250;     // a host's step texts
  const LANE_W = 132;      // one socket's state band and its labels
  const SPAN = 440;        // between two hosts' lifelines, for the arrows' labels
  let scale = 4000;        // pixels per second before compression (zoom)

  const esc = (s) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  const secs = (t) => (t < 0 ? "-" : "") + Math.abs(t).toFixed(6);
  const short = (d) => (d >= 1 ? d.toFixed(3) + " s" : d >= 1e-3 ? (d * 1e3).toFixed(1) + " ms" : (d * 1e6).toFixed(0) + " µs");

  // Columns: each host has its steps and socket lanes on its outer side (the last host on its right).
  const hosts = run.hosts.map((h, i) => ({ ...h, index: i, sockets: [] }));
  for (const c of run.sockets) {
    const lanes = hosts[c.host].sockets;
    if (!lanes.includes(c.socket)) lanes.push(c.socket);
  }
  let x = GUTTER;
  for (const h of hosts) {
    const last = h.index === hosts.length - 1 && hosts.length > 1;
    const side = STEPS_W + h.sockets.length * LANE_W;
    if (last) {
      h.life = x;
      h.lanesX = h.life + 8;
      h.stepsX = h.lanesX + h.sockets.length * LANE_W + 6;
      h.outward = 1;
      x = h.life + side + 20;
    } else {
      h.stepsX = x;
      h.lanesX = x + STEPS_W;
      h.life = h.lanesX + h.sockets.length * LANE_W + 8;
      h.outward = -1;
      x = h.life + SPAN;
    }
  }
  const WIDTH = Math.max(x, 900);
  const laneX = (host, socket) => hosts[host].lanesX + hosts[host].sockets.indexOf(socket) * LANE_W;

  // Stops: every item that needs a row, in time order.
  const stops = [];
  run.packets.forEach((p, i) => stops.push({ t: p.sent !== null ? p.sent : p.received, need: ROW, packet: i }));
  for (const c of run.sockets) stops.push({ t: c.t, need: MARK });
  for (const s of run.steps) {
    if (s.start !== null) stops.push({ t: s.start, need: MARK });
    if (s.end !== null) stops.push({ t: s.end, need: MARK });
  }
  for (const f of run.faults) {
    stops.push({ t: f.on, need: MARK });
    if (f.off !== null) stops.push({ t: f.off, need: MARK });
  }
  for (const f of run.failures) if (f.t !== null) stops.push({ t: f.t, need: MARK + 4 });
  if (run.deadline !== null) stops.push({ t: run.deadline, need: MARK });
  stops.sort((a, b) => a.t - b.t);

  let T, Y, gaps, packetY, height;
  function layout() {
    T = new Float64Array(stops.length);
    Y = new Float64Array(stops.length);
    gaps = [];
    packetY = new Float64Array(run.packets.length);
    let y = TOP, need = 0;
    stops.forEach((s, k) => {
      if (k > 0) {
        const dt = s.t - stops[k - 1].t;
        let gap = dt * scale;
        if (gap > GAP_CAP) {
          gaps.push({ y: y, dt: dt });
          gap = GAP_CAP;
        }
        y += Math.max(gap, need);
      }
      T[k] = s.t;
      Y[k] = y;
      need = s.need;
      if (s.packet !== undefined) packetY[s.packet] = y;
    });
    height = y + need + 60;
  }
  // The position of any time: the last stop at or before it, plus the elapsed time up to the next stop.
  function yAt(t) {
    if (stops.length === 0) return TOP;
    let lo = 0, hi = T.length - 1;
    if (t <= T[0]) return Y[0];
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (T[mid] <= t) lo = mid; else hi = mid - 1;
    }
    const next = lo + 1 < T.length ? Y[lo + 1] : Infinity;
    return Math.min(Y[lo] + (t - T[lo]) * scale, next, Y[lo] + GAP_CAP);
  }

  // Tiles collect SVG markup; an item goes to every tile its vertical extent touches.
  let tiles, markup, observer;
  function put(y0, y1, markup) {
    const first = Math.max(0, Math.floor(y0 / TILE));
    const last = Math.min(tiles.length - 1, Math.floor(y1 / TILE));
    for (let k = first; k <= last; k++) tiles[k].push(markup);
  }

  function drawPackets() {
    run.packets.forEach((p, i) => {
      const from = hosts[p.from], to = hosts[p.to];
      let ys, ye;
      if (p.sent !== null) {
        ys = packetY[i];
        ye = p.received !== null ? Math.max(yAt(p.received), ys + SLANT) : ys + SLANT;
      } else {
        ye = packetY[i];
        ys = ye - SLANT;
      }
      const dir = to.life >= from.life ? 1 : -1;
      const x1 = from.life, x2full = to.life;
      const dropped = p.dropped_at !== null;
      const unseen = p.received === null && !dropped;
      // An arrow that never arrived stops short of the receiver; a dropped one ends in a cross there.
      const x2 = unseen ? x1 + (x2full - x1) * 0.55 : x2full - dir * (dropped ? 7 : 1);
      const cls = "pkt" + (dir < 0 ? " back" : "") + (dropped ? " drop" : "") + (p.sent === null || unseen ? " lone" : "");
      const mid = (x1 + x2full) / 2;
      const label = esc(p.label) + (p.fault ? " ✕" : "") + (unseen ? " (not seen arriving)" : "");
      let g = `<g class="${cls}" data-i="${i}" data-frames="${p.frames.join(" ")}"><line x1="${x1}" y1="${ys}" x2="${x2}" y2="${ye}"` +
        (dropped ? "/>" : ` marker-end="url(#${dir < 0 ? "ahb" : "ah"})"/>`) +
        `<text x="${mid}" y="${ys - 3}" text-anchor="middle">${label}</text>`;
      if (dropped) {
        const cx = x2full - dir * 5;
        g += `<path class="x" d="M${cx - 5} ${ye - 5}L${cx + 5} ${ye + 5}M${cx - 5} ${ye + 5}L${cx + 5} ${ye - 5}"/>`;
      }
      g += "</g>";
      const t = p.sent !== null ? p.sent : p.received;
      const tm = `<text class="tm" x="4" y="${ys + 3}">${secs(t)}</text>`;
      const k = Math.floor((ys - 12) / TILE);
      const kEnd = Math.floor((ye + 6) / TILE);
      if (tiles[k]) tiles[k].push(g, tm);
      // The tail of an arrow that crosses into the next tile, drawn there without being a second arrow.
      if (kEnd !== k && tiles[kEnd]) tiles[kEnd].push(g.replace('class="pkt', 'class="pkt-cont').replace(/ data-i="\d+" data-frames="[^"]*"/, ""));
    });
  }

  function drawLifelinesAndGaps() {
    for (let k = 0; k < tiles.length; k++) {
      const top = k * TILE;
      for (const h of hosts) tiles[k].push(`<line class="life" x1="${h.life}" y1="${top}" x2="${h.life}" y2="${top + TILE}"/>`);
    }
    for (const g of gaps) {
      const y = g.y + GAP_CAP / 2;
      put(y - 10, y + 4, `<g class="gap"><line x1="${GUTTER}" y1="${y}" x2="${WIDTH}" y2="${y}"/>` +
        `<text x="4" y="${y + 4}">⋯ ${short(g.dt)}</text></g>`);
    }
  }

  function drawFaults() {
    const end = run.duration;
    for (const f of run.faults) {
      const y0 = yAt(f.on), y1 = f.off !== null ? yAt(f.off) : Math.max(yAt(end), y0) + ROW;
      put(y0, y1, `<g class="fault"><rect x="${GUTTER}" y="${y0}" width="${WIDTH - GUTTER}" height="${Math.max(y1 - y0, 2)}"/>` +
        `<line x1="${GUTTER}" y1="${y0}" x2="${WIDTH}" y2="${y0}"/>` +
        `<text x="${GUTTER + 4}" y="${y0 + 11}">fault ${esc(f.name)} ON (${esc(hosts[f.host].name)}): ${esc(f.what)}</text></g>`);
      if (f.off !== null) {
        put(y1 - 10, y1 + 2, `<g class="fault"><line x1="${GUTTER}" y1="${y1}" x2="${WIDTH}" y2="${y1}"/>` +
          `<text x="${GUTTER + 4}" y="${y1 - 2}">fault ${esc(f.name)} OFF</text></g>`);
      }
    }
  }

  function drawSockets() {
    const bySocket = new Map();
    for (const c of run.sockets) {
      const key = c.host + " " + c.socket;
      if (!bySocket.has(key)) bySocket.set(key, []);
      bySocket.get(key).push(c);
    }
    for (const changes of bySocket.values()) {
      changes.forEach((c, k) => {
        const next = changes[k + 1];
        const lx = laneX(c.host, c.socket);
        const y0 = yAt(c.t);
        const y1 = next ? yAt(next.t) : c.state === "GONE" ? y0 + 2 : Math.max(yAt(run.duration), y0 + MARK);
        const prev = changes[k - 1];
        put(y0, y1, `<rect class="band st-${esc(c.state)}" x="${lx}" y="${y0}" width="10" height="${Math.max(y1 - y0, 2)}"><title>${esc(c.socket)}</title></rect>`);
        let text = "";
        if (!prev || prev.state !== c.state) text += `<text class="band-label" x="${lx + 13}" y="${y0 + 10}">${esc(c.state)} ${esc(c.queues)}</text>`;
        if (c.timer && (!prev || prev.timer !== c.timer)) {
          text += `<text class="timer" x="${lx + 13}" y="${y0 + (text ? 22 : 10)}">timer ${esc(c.timer)}</text>`;
        }
        if (text) put(y0, y0 + 22, text);
        if (c.fires !== null && c.timer) {
          const yf = yAt(c.fires);
          put(yf - 1, yf + 1, `<line class="fires" x1="${lx - 3}" y1="${yf}" x2="${lx + 13}" y2="${yf}"><title>${esc(c.timer)} fires at ${secs(c.fires)}</title></line>`);
        }
      });
    }
  }

  function drawSteps() {
    for (const s of run.steps) {
      if (s.start === null) continue;
      const h = hosts[s.host];
      const y0 = yAt(s.start);
      const y1 = s.end !== null ? Math.max(yAt(s.end), y0 + 3) : Math.max(yAt(run.duration), y0 + 3);
      const barX = h.outward < 0 ? h.stepsX + STEPS_W - 8 : h.stepsX;
      const textX = h.outward < 0 ? barX - 4 : barX + 10;
      const anchor = h.outward < 0 ? "end" : "start";
      const result = s.outcome !== null ? s.outcome : "still running";
      let g = `<g class="step${s.failed ? " failed" : ""}"><rect x="${barX}" y="${y0}" width="5" height="${y1 - y0}"/>`;
      g += `<text x="${textX}" y="${y0 + 10}" text-anchor="${anchor}">${esc(s.label)}${y1 - y0 > MARK ? " …" : ""}</text>`;
      // The full result and expectation are in the tooltip; the failure line says what was expected.
      const end = `→ ${esc(result.length > 44 ? result.slice(0, 43) + "…" : result)}`;
      if (y1 - y0 > MARK) g += `<text x="${textX}" y="${y1 + 10}" text-anchor="${anchor}">${end}</text>`;
      else g = g.replace("</text>", " " + end + "</text>");
      g += `<title>${esc(s.label)} ${esc(result)}${s.expected ? "\nexpected " + esc(s.expected) : ""}</title></g>`;
      put(y0, y1 + 12, g);
    }
  }

  function drawFailures() {
    run.failures.forEach((f, i) => {
      if (f.t === null) return;
      const y = yAt(f.t);
      put(y - 12, y + 2, `<g class="failure" id="failure-${i}"><line x1="${GUTTER}" y1="${y}" x2="${WIDTH}" y2="${y}"/>` +
        `<text x="${GUTTER + 4}" y="${y - 3}">✗ ${esc(f.location)}: ${esc(f.message)}</text></g>`);
    });
    if (run.deadline !== null) {
      const y = yAt(run.deadline);
      put(y - 12, y + 2, `<g class="deadline"><line x1="${GUTTER}" y1="${y}" x2="${WIDTH}" y2="${y}"/>` +
        `<text x="${GUTTER + 4}" y="${y - 3}">DEADLINE</text></g>`);
    }
  }

  const diagram = document.createElement("div");
  const heads = document.createElement("div");
  heads.className = "heads";

  function header() {
    const head = document.createElement("header");
    const failures = run.failures.map((f, i) => `<li data-failure="${i}" data-t="${f.t === null ? "" : f.t}">✗ ${esc(f.location)}: ${esc(f.message)}</li>`).join("");
    const errors = run.errors.map((e) => `<li>harness error: ${esc(e)}</li>`).join("");
    const faulted = run.packets.filter((p) => p.fault).length;
    head.innerHTML = `<h1><span class="badge ${esc(run.status)}">${esc(run.status)}</span>${esc(run.scenario)}</h1>` +
      `<div class="meta">${esc(run.file)} · ran ${secs(run.duration)} s · ${run.packets.length} packets (${faulted} taken by faults) · ` +
      `${esc(run.version)} · kernel ${esc(run.kernel)} · capture.pcapng has every frame</div>` +
      `<div class="desc">${esc(run.description)}</div>` +
      (errors ? `<ul class="failures errors">${errors}</ul>` : "") +
      (failures ? `<ul class="failures">${failures}</ul>` : "");
    const controls = document.createElement("div");
    controls.className = "controls";
    controls.innerHTML = `<button id="zoom-out" title="time: fewer pixels per second">−</button>` +
      `<button id="zoom-in" title="time: more pixels per second">+</button><span id="zoom-label"></span>` +
      `<span class="legend"><span style="color:#1565c0">→ packet</span><span style="color:#c62828">✕ taken by a fault</span>` +
      `<span>- - seen at one end only</span><span>⋯ quiet stretch compressed</span><span>| socket state band, ─ timer due</span></span>`;
    document.body.append(head, controls, heads, diagram);
    head.querySelectorAll("li[data-failure]").forEach((li) => li.addEventListener("click", () => {
      if (li.dataset.t !== "") window.scrollTo({ top: diagram.offsetTop + yAt(Number(li.dataset.t)) - 160 });
    }));
    document.getElementById("zoom-in").addEventListener("click", () => zoom(4));
    document.getElementById("zoom-out").addEventListener("click", () => zoom(0.25));
  }

  // `10.0.0.2:9000 -> *:*` is `listen :9000`; a connection is its two ports.
  function laneName(socket) {
    const [local, remote] = socket.split(" -> ");
    const port = (end) => end.slice(end.lastIndexOf(":"));
    return remote === "*:*" ? "listen " + port(local) : port(local) + " → " + port(remote);
  }

  function columnHeads() {
    let html = "";
    for (const h of hosts) {
      html += `<div style="left:${h.life}px">${esc(h.name)}<small>${esc(h.address)} ${esc(h.interface)}</small></div>`;
      h.sockets.forEach((s) => {
        html += `<div class="lane" style="left:${laneX(h.index, s)}px" title="${esc(s)}">${esc(laneName(s))}</div>`;
      });
    }
    heads.innerHTML = html;
    heads.style.width = WIDTH + "px";
  }

  function render() {
    layout();
    tiles = Array.from({ length: Math.max(1, Math.ceil(height / TILE)) }, () => []);
    drawLifelinesAndGaps();
    drawFaults();
    drawSockets();
    drawSteps();
    drawPackets();
    drawFailures();
    const marker = (id, color) => `<marker id="${id}" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" markerHeight="7" ` +
      `orient="auto"><path d="M0 0L8 4L0 8z" fill="${color}"/></marker>`;
    const defs = `<defs>${marker("ah", "#1565c0")}${marker("ahb", "#6a1b9a")}</defs>`;
    markup = tiles.map((items, k) => `<svg width="${WIDTH}" height="${tileHeight(k)}" viewBox="0 ${k * TILE} ${WIDTH} ${tileHeight(k)}">` +
      `${k === 0 ? defs : ""}${items.join("")}</svg>`);
    tiles = null;
    diagram.innerHTML = markup.map((_, k) =>
      `<div class="tile" data-k="${k}" style="height:${tileHeight(k)}px;width:${WIDTH}px;contain-intrinsic-size:${WIDTH}px ${tileHeight(k)}px"></div>`).join("");
    if (observer) observer.disconnect();
    const all = diagram.querySelectorAll(".tile");
    if (run.packets.length <= EAGER_PACKETS) {
      all.forEach(fill);
    } else {
      // Large runs: a tile's SVG is made when it comes near the viewport.
      observer = new IntersectionObserver((entries) => {
        for (const e of entries) if (e.isIntersecting) fill(e.target);
      }, { rootMargin: `${TILE}px 0px` });
      all.forEach((tile) => observer.observe(tile));
      fill(all[0]);
    }
    document.getElementById("zoom-label").textContent = `${short(1 / scale)} per pixel; gaps over ${short(GAP_CAP / scale)} compressed`;
  }

  const tileHeight = (k) => Math.min(TILE, height - k * TILE);
  function fill(tile) {
    if (tile.firstChild) return;
    tile.innerHTML = markup[Number(tile.dataset.k)];
    if (observer) observer.unobserve(tile);
  }
  // Every tile made now (tests count every arrow): the time it takes is the benchmark's second figure.
  window.drawAllTiles = () => diagram.querySelectorAll(".tile").forEach(fill);

  function zoom(factor) {
    const top = window.scrollY - diagram.offsetTop;
    let k = 0;
    while (k + 1 < Y.length && Y[k + 1] <= top) k++;
    const anchor = T.length ? T[k] : 0;
    scale = Math.min(Math.max(scale * factor, 1), 4e9);
    render();
    window.scrollTo({ top: diagram.offsetTop + yAt(anchor) });
  }

  const detail = document.createElement("div");
  detail.id = "detail";
  function show(i) {
    const p = run.packets[i];
    document.querySelectorAll(".pkt.sel").forEach((e) => e.classList.remove("sel"));
    const el = diagram.querySelector(`.pkt[data-i="${i}"]`);
    if (el) el.classList.add("sel");
    const when = [p.sent !== null ? `left ${hosts[p.from].name} at ${secs(p.sent)} s` : `not seen leaving ${hosts[p.from].name}`,
      p.received !== null ? `reached ${hosts[p.to].name} at ${secs(p.received)} s` : `not seen arriving at ${hosts[p.to].name}`];
    detail.innerHTML = `<button id="detail-close">×</button><b>packet ${i + 1} of ${run.packets.length}</b>\n` +
      `${esc(p.detail[0])}\n${when.join("; ")}\ncapture.pcapng frame${p.frames.length > 1 ? "s" : ""} ${p.frames.join(", ")}\n` +
      p.detail.slice(1).map(esc).join("\n");
    detail.className = "open";
    document.getElementById("detail-close").addEventListener("click", () => { detail.className = ""; });
  }

  header();
  document.body.append(detail);
  columnHeads();
  render();
  diagram.addEventListener("click", (e) => {
    const g = e.target.closest(".pkt");
    if (g) show(Number(g.dataset.i));
  });
  // Layout done: tests and the benchmark read these.
  void document.body.offsetHeight;
  document.body.dataset.renderMs = performance.now().toFixed(1);
  document.body.dataset.ready = "1";
}());
