// lstm-engine explore: draws what the server computed (or what a saved page holds); no cell code here.
"use strict";
(function () {
  const BAKED = window.EXPLORER_BAKED || null;
  const $ = (id) => document.getElementById(id);
  const SIGNED = { h: true, c: true, g: true, n: true };   // tanh-valued states (c unbounded); sigmoid gates in [0, 1]
  const S = { info: null, text: "", run: null, t: 0, step: null, sel: { layer: 0, unit: 0 },
              mode: "cursor", shade: null, hits: null, picked: null, seq: 0 };

  // -- talking to the server (or to the numbers baked into a saved page) --------------------------
  async function api(path, body) {
    if (BAKED) return fromBaked(path, body);
    const opts = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" },
                                             body: JSON.stringify(body) };
    let r;
    try { r = await fetch(path, opts); } catch (e) {
      throw new Error("the explorer's server does not answer; is `lstm-engine explore` still running?");
    }
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok || !data || data.error) throw new Error((data && data.error) || `the server answered ${r.status}`);
    return data;
  }

  function needsServer(what) {
    return new Error(`${what} needs the server: this saved page holds the numbers of its own text only ` +
                     "(run `lstm-engine explore CHECKPOINT`)");
  }

  function fromBaked(path, body) {
    const B = BAKED;
    if (path === "/api/info") return B.info;
    if (path === "/api/search") throw needsServer("pattern search");
    if (path === "/api/load") throw needsServer("loading another checkpoint");
    if (body && body.text !== undefined && body.text !== B.text) {
      throw new Error("this saved page holds the numbers of its own text only; " +
                      "run `lstm-engine explore` to read another");
    }
    if (path === "/api/run") return B.run;
    if (path === "/api/step") return B.steps[body.t];
    if (path === "/api/activations") {
      if (!(body.layer >= 0 && body.layer < B.info.layers)) throw new Error(`layer must be in 0..${B.info.layers - 1}`);
      const H = B.info.hidden;
      if (!(body.units[0] >= 0 && body.units[0] < H)) throw new Error(`unit must be in 0..${H - 1}`);
      return { values: B.steps.map((st) => [valuesOf(st.layers[body.layer], body.kind)[body.units[0]]]) };
    }
    if (path === "/api/rank") {
      const r = B.rank[`${body.kind}/${body.feature || ""}`];
      if (r && r.error) throw new Error(r.error);
      return r;
    }
    if (path === "/api/influence") {
      const r = B.influence[body.t];
      if (!r) throw new Error("the influence needs a character to predict: move the cursor before the last character");
      return r;
    }
    throw needsServer(path);
  }

  // -- one message for whatever went wrong ----------------------------------------------------------
  function showError(e) {
    const m = $("message");
    m.textContent = String((e && e.message) || e);
    m.hidden = false;
  }

  async function act(fn) {
    $("message").hidden = true;
    try { await fn(); } catch (e) { showError(e); }
  }

  // -- small drawing helpers -------------------------------------------------------------------------
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  const quoted = (ch) => JSON.stringify(ch);
  const shown = (ch) => (ch === "\n" ? "\u21b5" : ch === " " ? "\u2423" : ch === "\t" ? "\u21e5" : ch);
  const rows = () => S.info.gates.concat(["c", "h"].filter((k) => S.info.kinds.includes(k)));   // a GRU has no c
  const valuesOf = (layer, kind) => (layer.gates[kind] !== undefined ? layer.gates[kind] : layer[kind]);

  function colour(v, signed) {   // blue for positive, red for negative (signed) or white -> blue
    const a = Math.min(Math.abs(v), 1);
    if (!signed || v >= 0) return `rgb(${Math.round(255 - 190 * a)},${Math.round(255 - 140 * a)},255)`;
    return `rgb(255,${Math.round(255 - 170 * a)},${Math.round(255 - 170 * a)})`;
  }
  const heat = (a) => `rgb(255,${Math.round(255 - 150 * a)},${Math.round(255 - 230 * a)})`;
  const scaleOf = (vals, kind) => (kind === "c" ? Math.max(1, ...vals.map(Math.abs)) : 1);

  function intOrRaw(v) { const s = String(v).trim(); return /^-?\d+$/.test(s) ? Number(s) : s; }
  function numOrRaw(v) { const s = String(v).trim(); return s !== "" && isFinite(Number(s)) ? Number(s) : s; }
  function optional(v, conv) { return String(v).trim() === "" ? null : conv(v); }

  // -- the text ------------------------------------------------------------------------------------
  async function readText(text) {
    const run = await api("/api/run", { text });
    Object.assign(S, { text, run, t: 0, mode: "cursor", shade: null, hits: null, picked: null, step: null });
    $("summary").textContent = `${run.n} characters` + (run.mean_loss === null ? "" :
      `, mean loss ${run.mean_loss.toFixed(4)} nats/char (${run.mean_bits.toFixed(3)} bits/char)`);
    renderText();
    await goto(0);
    document.body.dataset.read = String(Number(document.body.dataset.read || 0) + 1);
  }

  function renderText() {
    const tv = $("textview");
    tv.textContent = "";
    S.run.chars.forEach((ch, k) => {
      const s = el("span", "ch" + (ch === "\n" ? " nl" : ""), ch === "\n" ? "\u21b5" : ch);
      s.dataset.t = String(k);
      tv.appendChild(s);
      if (ch === "\n") tv.appendChild(document.createTextNode("\n"));
    });
    paintText();
  }

  function paintText() {
    const spans = $("textview").querySelectorAll(".ch");
    const sh = S.shade;
    spans.forEach((s, k) => {
      s.classList.toggle("cursor", k === S.t);
      s.classList.toggle("hit", !!(S.hits && S.hits.some((m) => k >= m.start && k < m.end)));
      s.classList.toggle("picked", !!(S.picked && k >= S.picked[0] && k < S.picked[1]));
      const loss = S.run.loss[k];
      let title = `${k}: reads ${quoted(S.run.chars[k])}` +
        (loss === undefined ? "" : `, loss of the next ${loss.toFixed(4)}`);
      s.style.background = "";
      delete s.dataset.value;
      delete s.dataset.influence;
      if (S.mode === "unit" && sh) {
        const v = sh.values[k];
        s.style.background = colour(v / sh.scale, SIGNED[sh.kind]);
        s.dataset.value = String(v);
        title += `; ${sh.label} = ${v.toFixed(4)}`;
      } else if (S.mode === "influence" && sh && k < sh.norms.length) {
        s.style.background = heat(sh.norms[k] / sh.max);
        s.dataset.influence = String(sh.norms[k]);
        title += `; |dL_${sh.t}/dx_${k}| = ${sh.norms[k].toExponential(3)}`;
      }
      s.title = title;
    });
    const label = { cursor: "", unit: sh && sh.label ? `coloured by ${sh.label}` : "",
                    influence: sh ? `influence on the loss at ${sh.t}` : "", search: "pattern search matches" };
    $("mode").textContent = label[S.mode] || "";
    renderLegend();
  }

  function renderLegend() {
    const lg = $("legend");
    lg.textContent = "";
    if (S.mode === "unit" && S.shade) {
      const signed = SIGNED[S.shade.kind];
      const note = S.shade.kind === "c" ? `scaled by max |c| = ${S.shade.scale.toFixed(3)}: ` : "";
      lg.appendChild(document.createTextNode(note));
      (signed ? [-1, -0.5, 0, 0.5, 1] : [0, 0.25, 0.5, 0.75, 1]).forEach((v) => {
        const sp = el("span", "", (v * S.shade.scale).toFixed(2));
        sp.style.background = colour(v, signed);
        lg.appendChild(sp);
      });
    } else if (S.mode === "influence" && S.shade) {
      lg.textContent = `white: no effect ... orange: the largest |dL/dx| (${S.shade.max.toExponential(3)})`;
    }
  }

  // -- stepping ------------------------------------------------------------------------------------
  async function goto(t) {
    if (!S.run) return;
    t = Math.max(0, Math.min(S.run.n - 1, t));
    const seq = ++S.seq;
    S.t = t;
    paintText();
    const st = await api("/api/step", { text: S.text, t });
    if (seq !== S.seq) return;                                  // a later step was asked for meanwhile
    S.step = st;
    renderStep();
    document.body.dataset.t = String(t);
  }

  function renderStep() {
    const st = S.step;
    $("pos").textContent = `position ${st.t} of 0..${S.run.n - 1}`;
    $("stepinfo").textContent = `reads ${quoted(st.char)}` + (st.next === null ?
      "; the last character, nothing to predict" :
      `, the next is ${quoted(st.next)}: p = ${st.p_next.toFixed(4)}, loss = -log p = ${st.loss.toFixed(4)} nats`);
    const hm = $("heatmaps");
    hm.textContent = "";
    st.layers.forEach((ld, l) => {
      const box = el("div", "layer");
      box.appendChild(el("div", "layer-title",
                         `layer ${l}: ${ld.h.length} units (hover a cell for its number, click it for its equations)`));
      for (const kind of rows()) {
        const vals = valuesOf(ld, kind), scale = scaleOf(vals, kind);
        const row = el("div", "hrow");
        row.appendChild(el("span", "k", kind));
        const cells = el("div", "cells");
        vals.forEach((v, u) => {
          const c = el("div", "cell");
          Object.assign(c.dataset, { layer: String(l), kind, unit: String(u), value: String(v) });
          c.style.background = colour(v / scale, SIGNED[kind]);
          c.title = `layer ${l} ${kind}[${u}] = ${v.toFixed(6)}`;
          cells.appendChild(c);
        });
        row.appendChild(cells);
        box.appendChild(row);
      }
      hm.appendChild(box);
    });
    const tb = $("topbars");
    tb.textContent = "";
    st.top.forEach(({ char, p }) => {
      const bar = el("div", "bar" + (char === st.next ? " target" : ""));
      bar.appendChild(el("span", "c", shown(char)));
      const b = el("span", "b");
      b.style.width = `${Math.max(1, Math.round(p * 240))}px`;
      bar.appendChild(b);
      bar.appendChild(el("span", "p", p.toFixed(4)));
      bar.title = `p(${quoted(char)}) = ${p}`;
      tb.appendChild(bar);
    });
    markSel();
    renderEquations();
  }

  function markSel() {
    $("heatmaps").querySelectorAll(".cell").forEach((c) => {
      c.classList.toggle("sel", Number(c.dataset.layer) === S.sel.layer && Number(c.dataset.unit) === S.sel.unit);
    });
  }

  function renderEquations() {
    const st = S.step, { layer, unit } = S.sel;
    if (!st || !st.layers[layer] || unit >= st.layers[layer].h.length) return;
    const ld = st.layers[layer];
    const look = (path) => path.split(".").reduce((v, k) => v[k], ld)[unit];
    $("unitname").textContent = `layer ${layer} unit ${unit}`;
    $("equations").textContent = `position ${st.t}, reads ${quoted(st.char)}\n` + S.info.equations.map(
      (line) => line.replace(/\{\{([\w.]+)\}\}/g, (m, path) => look(path).toFixed(4))).join("\n");
  }

  function selectUnit(layer, unit) {
    S.sel = { layer, unit };
    $("layer").value = layer;
    $("unit").value = unit;
    markSel();
    renderEquations();
  }

  // -- units: colour, rank, pattern search -----------------------------------------------------------
  async function colourBy(layer, unit, kind) {
    const r = await api("/api/activations", { text: S.text, layer, kind, units: [unit] });
    const values = r.values.map((row) => row[0]);
    S.mode = "unit";
    S.shade = { values, kind, scale: scaleOf(values, kind), label: `layer ${layer} unit ${unit} (${kind})` };
    if (Number.isInteger(layer) && Number.isInteger(unit)) selectUnit(layer, unit);
    paintText();
    document.body.dataset.coloured = `${layer}/${unit}/${kind}`;
  }

  async function rank() {
    const kind = $("kind").value, feature = $("feature").value || null;
    const r = await api("/api/rank", { text: S.text, kind, feature });
    const ol = $("ranking");
    ol.textContent = "";
    if (!r.units.length) ol.appendChild(el("li", "", "no feature varies on this text"));
    r.units.forEach(({ r: corr, layer, unit, feature: f }) => {
      const li = el("li", "", `layer ${layer} unit ${unit}: r = ${corr >= 0 ? "+" : ""}${corr.toFixed(3)} ` +
                              `with ${S.info.features[f] || f}`);
      Object.assign(li.dataset, { layer: String(layer), unit: String(unit), kind });
      li.addEventListener("click", () => act(() => colourBy(layer, unit, kind)));
      ol.appendChild(li);
    });
  }

  async function search() {
    const start = intOrRaw($("span-start").value), end = intOrRaw($("span-end").value);
    const body = { text: S.text, start, end, threshold: numOrRaw($("threshold").value),
                   layer: intOrRaw($("layer").value), kind: $("kind").value };
    const r = await api("/api/search", body);
    const box = $("search-results");
    box.textContent = "";
    S.mode = "search";
    S.shade = null;
    S.picked = [start, end];
    S.hits = r.matches;
    if (r.note) {
      box.appendChild(el("p", "", r.note));
    } else {
      const p = el("p", "", `${r.units.length} unit(s) of layer ${body.layer} on through ` +
                            `${quoted(S.text.slice(start, end))}: `);
      const u = el("span", "units", r.units.join(", "));
      u.dataset.units = JSON.stringify(r.units);
      p.appendChild(u);
      box.appendChild(p);
      const more = r.count > r.matches.length ? ` (the ${r.matches.length} longest):` : ":";
      box.appendChild(el("p", "", `${r.count} other span(s) where all of them are on${more}`));
      const ul = el("ul");
      r.matches.forEach((m) => {
        const li = el("li", "match", `${m.start}..${m.end}: ${quoted(m.text)}`);
        Object.assign(li.dataset, { start: String(m.start), end: String(m.end) });
        li.addEventListener("click", () => act(() => goto(m.start)));
        ul.appendChild(li);
      });
      box.appendChild(ul);
    }
    paintText();
    document.body.dataset.searched = String(Number(document.body.dataset.searched || 0) + 1);
  }

  function spanFromSelection() {
    const sel = window.getSelection();
    if (!sel || sel.isCollapsed) return false;
    const idx = [sel.anchorNode, sel.focusNode].map((n) => {
      const e = n && (n.nodeType === 3 ? n.parentElement : n);
      return e && e.dataset && e.dataset.t !== undefined ? Number(e.dataset.t) : null;
    });
    if (idx.includes(null)) return false;
    $("span-start").value = Math.min(...idx);
    $("span-end").value = Math.max(...idx) + 1;
    return true;
  }

  // -- influence -----------------------------------------------------------------------------------
  async function influence() {
    const r = await api("/api/influence", { text: S.text, t: S.t });
    const max = Math.max(...r.norms);
    S.mode = "influence";
    S.shade = { norms: r.norms, max: max > 0 ? max : 1, t: r.t };
    S.hits = null;
    S.picked = null;
    $("influence-info").textContent =
      `loss at position ${r.t} (predicting ${quoted(r.target)}): ${r.loss.toFixed(4)} nats; ` +
      `the largest |dL/dx_k| is ${max.toExponential(3)}, at k = ${r.norms.indexOf(max)}`;
    paintText();
    document.body.dataset.influence = String(r.t);
  }

  // -- sampling, streamed --------------------------------------------------------------------------
  async function generate() {
    if (BAKED) throw needsServer("sampling");
    const body = { prime: $("prime").value, length: intOrRaw($("length").value),
                   temperature: numOrRaw($("temperature").value), top_k: optional($("top-k").value, intOrRaw),
                   top_p: numOrRaw($("top-p").value), seed: optional($("seed").value, intOrRaw) };
    document.body.dataset.sample = "running";
    const r = await fetch("/api/generate", { method: "POST", headers: { "Content-Type": "application/json" },
                                             body: JSON.stringify(body) });
    if (!r.ok) {
      let d = null;
      try { d = await r.json(); } catch (e) { d = null; }
      document.body.dataset.sample = "failed";
      throw new Error((d && d.error) || `the server answered ${r.status}`);
    }
    const out = $("sample"), status = $("gen-status");
    out.textContent = body.prime;
    status.textContent = "sampling ...";
    const reader = r.body.getReader(), dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (!line.trim()) continue;
        const m = JSON.parse(line);
        if (m.error) { document.body.dataset.sample = "failed"; throw new Error(m.error); }
        if (m.text !== undefined) out.textContent += m.text;
        if (m.done) status.textContent = `${m.chars} characters sampled`;
      }
    }
    $("read-sample").disabled = false;
    document.body.dataset.sample = "done";
  }

  // -- wiring ---------------------------------------------------------------------------------------
  function applyInfo(info) {
    S.info = info;
    $("model").textContent = info.checkpoint + (info.trained_steps == null ? "" : ` (step ${info.trained_steps})`) +
      `: ${info.cell.toUpperCase()}, ${info.layers} layer(s) of ${info.hidden} units, ${info.vocab.length} symbols` +
      (BAKED ? " \u2014 a saved page: its own text only" : "");
    $("kind").textContent = "";
    info.kinds.forEach((k) => $("kind").appendChild(Object.assign(el("option", "", k), { value: k })));
    $("feature").length = 1;
    Object.entries(info.features).forEach(([name, what]) =>
      $("feature").appendChild(Object.assign(el("option", "", `${name}: ${what}`), { value: name })));
    $("layer").max = info.layers - 1;
    $("unit").max = info.hidden - 1;
  }

  async function load() {
    const info = await api("/api/load", { checkpoint: $("ckpt").value });
    applyInfo(info);
    document.body.dataset.loaded = info.checkpoint;
    if (S.text) await readText(S.text);
  }

  async function init() {
    applyInfo(await api("/api/info"));
    $("text").placeholder = "type or paste text made of the model's characters, then Read";
    if (BAKED) {
      $("text").value = BAKED.text;
      $("text").readOnly = true;
      ["read", "search", "generate", "load"].forEach((id) => {
        $(id).disabled = true;
        $(id).title = "needs `lstm-engine explore`";
      });
      await readText(BAKED.text);
    }
    document.body.dataset.ready = "1";
  }

  $("read").addEventListener("click", () => act(() => readText($("text").value)));
  $("load").addEventListener("click", () => act(load));
  $("prev").addEventListener("click", () => act(() => goto(S.t - 1)));
  $("next").addEventListener("click", () => act(() => goto(S.t + 1)));
  $("colour").addEventListener("click", () => act(() =>
    colourBy(intOrRaw($("layer").value), intOrRaw($("unit").value), $("kind").value)));
  $("rank").addEventListener("click", () => act(rank));
  $("search").addEventListener("click", () => act(search));
  $("influence").addEventListener("click", () => act(influence));
  $("generate").addEventListener("click", () => act(generate));
  $("read-sample").addEventListener("click", () => act(() => {
    $("text").value = $("sample").textContent;
    return readText($("text").value);
  }));
  $("heatmaps").addEventListener("click", (e) => {
    const c = e.target.closest(".cell");
    if (c) selectUnit(Number(c.dataset.layer), Number(c.dataset.unit));
  });
  $("textview").addEventListener("mouseup", spanFromSelection);
  $("textview").addEventListener("click", (e) => {
    const span = e.target.closest(".ch"), sel = window.getSelection();
    if (span && (!sel || sel.isCollapsed)) act(() => goto(Number(span.dataset.t)));
  });
  document.addEventListener("keydown", (e) => {
    const tag = (e.target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "textarea" || tag === "select") return;
    if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
      e.preventDefault();
      act(() => goto(S.t + (e.key === "ArrowRight" ? 1 : -1)));
    }
  });
  act(init);
})();
