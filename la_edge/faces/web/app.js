// la_edge chat page: streams answers from this server's /v1/chat/completions (SSE over fetch).
// Model text only ever reaches the DOM as text nodes (createElement + textContent/append), never as HTML.
"use strict";
(() => {
  const STORE = "la_edge.chat.v1", KEY_STORE = "la_edge.api_key";
  const API = new URL("v1/", document.baseURI);
  const DEFAULTS = { principle: "", ratio: 2, more: [], avoid: "", avoidRatio: 2, adaptive: false, negative: "",
    cfgScale: 3, documents: [], documentRatio: 1, temperature: 0.7, maxTokens: 256, compare: false };
  // more: the principle rows after the first; documents: [{name, text}]
  const MAX_DOC_BYTES = 256 * 1024, MAX_DOCS_BYTES = 768 * 1024; // the server reads at most 1 MiB a request
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  };

  let state = load();
  let models = []; // ids from /v1/models: the plain model first, then one MODEL:NAME per preset
  const base = () => models[0] || null;
  const chosen = () => (models.includes(state.settings.model) ? state.settings.model : base());
  const running = new Set(); // AbortControllers of the open streams
  const views = new Map(); // answer object -> {body, stats, note} elements

  // ---- storage ----------------------------------------------------------------------------
  function load() {
    let saved = {};
    try { saved = JSON.parse(localStorage.getItem(STORE)) || {}; } catch { saved = {}; }
    const turns = Array.isArray(saved.turns) ? saved.turns : [];
    for (const t of turns) for (const a of t.answers || []) {
      if (a.pending) { a.pending = false; a.stopped = true; } // the page was closed mid-answer
    }
    const settings = { ...DEFAULTS, ...(saved.settings || {}) };
    settings.more = (Array.isArray(settings.more) ? settings.more : []).filter((r) => r && typeof r === "object")
      .map((r) => ({ text: String(r.text || ""), ratio: Number.isFinite(r.ratio) ? r.ratio : 2 }));
    settings.documents = (Array.isArray(settings.documents) ? settings.documents : [])
      .filter((d) => d && typeof d.text === "string" && d.text.trim())
      .map((d) => ({ name: String(d.name || "document"), text: d.text }));
    return { settings, turns };
  }
  let saveTimer = null;
  function save() {
    clearTimeout(saveTimer);
    saveTimer = null;
    try { localStorage.setItem(STORE, JSON.stringify(state)); } catch (e) { status(`Could not save: ${e.message}`); }
  }
  // Typing: one write per pause, not per keystroke (the state holds the documents); pagehide flushes.
  function saveSoon() {
    clearTimeout(saveTimer);
    saveTimer = setTimeout(save, 400);
  }
  const apiKey = () => localStorage.getItem(KEY_STORE) || "";

  // ---- Markdown: paragraphs, **bold**, *italic*, `code`, fenced code, lists, headings -------
  const LIST = { ul: /^\s*[-*+]\s+/, ol: /^\s*(\d{1,9})[.)]\s+/ };
  const FENCE = /^\s*(```|~~~)\s*([\w+#.-]*)/;
  const HEADING = /^(#{1,6})\s+(.*)$/;
  const INLINE = /`([^`\n]+)`|\*\*(?=\S)(.+?)\*\*|\*(?=[^\s*])([^*]+?)\*/;
  const listKind = (line) => (LIST.ul.test(line) ? "ul" : LIST.ol.test(line) ? "ol" : null);
  const blockStart = (line) => FENCE.test(line) || HEADING.test(line) || listKind(line) !== null;

  function renderMarkdown(text, root) {
    root.replaceChildren();
    const lines = text.replace(/\r\n?/g, "\n").split("\n");
    for (let i = 0; i < lines.length;) {
      const line = lines[i];
      const fence = line.match(FENCE), heading = line.match(HEADING), kind = listKind(line);
      if (fence) {
        const body = [];
        for (i++; i < lines.length && !lines[i].trimStart().startsWith(fence[1]); i++) body.push(lines[i]);
        i++; // the closing fence (absent while the answer is still streaming)
        const pre = el("pre"), code = el("code", null, body.join("\n"));
        if (fence[2]) code.dataset.lang = fence[2];
        pre.append(code);
        root.append(pre);
      } else if (!line.trim()) {
        i++;
      } else if (heading) {
        const h = el(`h${Math.min(6, heading[1].length + 2)}`);
        inline(heading[2], h);
        root.append(h);
        i++;
      } else if (kind) {
        const list = el(kind);
        if (kind === "ol" && +line.match(LIST.ol)[1] !== 1) list.start = +line.match(LIST.ol)[1];
        for (; i < lines.length && listKind(lines[i]) === kind; i++) {
          const li = el("li");
          inline(lines[i].replace(LIST[kind], ""), li);
          list.append(li);
        }
        root.append(list);
      } else {
        const p = el("p");
        for (let first = true; i < lines.length && lines[i].trim() && (first || !blockStart(lines[i])); i++) {
          if (!first) p.append(el("br"));
          inline(lines[i], p);
          first = false;
        }
        root.append(p);
      }
    }
  }

  function inline(text, parent) {
    for (let m; (m = INLINE.exec(text));) {
      parent.append(text.slice(0, m.index)); // a string argument becomes a text node
      if (m[1] !== undefined) {
        parent.append(el("code", null, m[1]));
      } else {
        const e = el(m[2] !== undefined ? "strong" : "em");
        inline(m[2] !== undefined ? m[2] : m[3], e);
        parent.append(e);
      }
      text = text.slice(m.index + m[0].length);
    }
    parent.append(text);
  }

  // ---- conversation view ------------------------------------------------------------------
  function label(a) {
    if (a.kind === "plain") return "Plain (no guidance)";
    if (a.preset) return `Aligned · preset ${a.preset}`;
    if (!a.spec) return `Aligned · ratio ${a.ratio} · “${a.principle}”`;
    const sp = a.spec, docs = sp.documents || [];
    const parts = sp.principles.map((p) => `“${p.text}” (ratio ${p.ratio})`);
    if (sp.avoid) parts.push(`avoid “${sp.avoid.text}” (ratio ${sp.avoid.ratio})`);
    if (sp.negative) parts.push(`negative “${sp.negative.text}” (scale ${sp.negative.scale})`);
    if (docs.length) {
      parts.push(`${docs.length} document${docs.length > 1 ? "s" : ""}: ${docs.map((d) => d.name).join(", ")} ` +
        `(ratio ${sp.documentRatio ?? 1})`);
    }
    const head = sp.principles.length ? "Aligned" : "Guided"; // a negative or documents, no principle
    return `${head}${sp.adaptive ? " · adaptive" : ""} · ${parts.join(" · ")}`;
  }

  function renderAll() {
    const conv = $("conversation");
    views.clear();
    conv.replaceChildren();
    for (const turn of state.turns) {
      conv.append(el("div", "msg user", turn.user));
      const row = el("div", `answers n${turn.answers.length}`);
      for (const a of turn.answers) {
        const box = el("div", `msg assistant ${a.kind}`);
        const view = { body: el("div", "body"), stats: el("div", "stats"), note: el("div", "note") };
        box.append(el("div", "label", label(a)), view.body, view.note, view.stats);
        row.append(box);
        views.set(a, view);
        paint(a);
      }
      conv.append(row);
    }
    conv.scrollTop = conv.scrollHeight;
  }

  function paint(a) {
    const v = views.get(a);
    if (!v) return;
    renderMarkdown(a.text, v.body);
    v.body.classList.toggle("waiting", a.pending && !a.text);
    v.note.textContent = a.error || (a.stopped ? "Stopped." : "");
    v.note.className = a.error ? "note error" : "note";
    v.stats.textContent = stats(a);
  }

  let frame = 0;
  const dirty = new Set();
  function schedule(a) { // repaint at most once a frame while tokens stream in
    dirty.add(a);
    if (frame) return;
    frame = requestAnimationFrame(() => {
      const conv = $("conversation");
      const atEnd = conv.scrollHeight - conv.scrollTop - conv.clientHeight < 40;
      frame = 0;
      dirty.forEach(paint);
      dirty.clear();
      if (atEnd) conv.scrollTop = conv.scrollHeight;
    });
  }

  function stats(a) {
    if (a.pending) return a.text ? "streaming…" : "waiting for the first token…";
    const parts = [];
    if (a.usage) parts.push(`${a.usage.completion_tokens} tokens`);
    else if (a.chunks) parts.push(`≈${a.chunks} tokens`);
    if (a.tps != null) parts.push(`${a.tps.toFixed(1)} tok/s`);
    if (a.ttftMs != null) parts.push(`first token ${Math.round(a.ttftMs)} ms`);
    return parts.join(" · ");
  }

  const status = (text) => { $("status").textContent = text; };

  // ---- requests ---------------------------------------------------------------------------
  class ServerError extends Error {
    constructor(status, err, retryAfter) {
      super((err && err.message) || `HTTP ${status}`);
      Object.assign(this, { status, code: err && err.code, param: err && err.param, retryAfter });
    }
  }

  function headers() {
    const h = { "Content-Type": "application/json" };
    if (apiKey()) h.Authorization = `Bearer ${apiKey()}`;
    return h;
  }

  async function readError(res) {
    const text = await res.text().catch(() => "");
    try { return JSON.parse(text).error || { message: text }; } catch { return { message: text.slice(0, 300) || res.statusText }; }
  }

  function describe(e, withDocuments) {
    if (!(e instanceof ServerError)) {
      if (e instanceof TypeError) return `Network error: the server could not be reached (${e.message}).`;
      return `Error: ${e.message}`;
    }
    if (e.status === 401) return `Not authorized (401): ${e.message}. Set the server's API key in the settings.`;
    if (e.status === 429) return `The server is busy (429): ${e.message}.${e.retryAfter ? ` Try again in ${e.retryAfter} s.` : ""}`;
    if (e.code === "context_length_exceeded") {
      return `Too long for the model's context (400): ${e.message}. ` +
        `${withDocuments ? "Remove a document, start" : "Start"} a new chat or lower max tokens.`;
    }
    if (e.status === 503) return `The server cannot generate (503): ${e.message}`;
    if (e.status === 200) return `The answer failed mid-stream: ${e.message}`;
    const field = typeof e.param === "string" && e.param && !e.message.includes(e.param) ? ` (field ${e.param})` : "";
    return `Error ${e.status}: ${e.message}${field}`;
  }

  function history(turnIndex, kind) { // each column continues its own conversation
    const msgs = [];
    state.turns.slice(0, turnIndex).forEach((t) => {
      msgs.push({ role: "user", content: t.user });
      const a = t.answers.find((x) => x.kind === kind) || t.answers[t.answers.length - 1];
      if (a && a.text) msgs.push({ role: "assistant", content: a.text });
    });
    msgs.push({ role: "user", content: state.turns[turnIndex].user });
    return msgs;
  }

  function requestBody(turnIndex, a, documents) { // documents: the texts of a.spec.documents
    const s = state.settings;
    const body = { messages: history(turnIndex, a.kind), stream: true, stream_options: { include_usage: true } };
    const m = a.model || (a.kind === "plain" ? base() : chosen());
    if (m) body.model = m; // a preset's id aligns the answer to it (a principle in the body wins)
    if (Number.isFinite(s.temperature)) body.temperature = s.temperature;
    if (Number.isFinite(s.maxTokens)) body.max_tokens = s.maxTokens;
    if (a.kind === "aligned" && !a.spec && !a.preset) Object.assign(body, { principle: a.principle, alignment_ratio: a.ratio });
    if (a.kind === "aligned" && a.spec) {
      const sp = a.spec, avoid = [];
      if (sp.principles.length) body.principles = sp.principles.map((p) => ({ text: p.text, ratio: p.ratio }));
      if (sp.avoid) avoid.push({ text: sp.avoid.text, ratio: sp.avoid.ratio });
      // A negative prompt is a thing to avoid pushed at g - 1, as `--negative TEXT --cfg-scale g`.
      if (sp.negative) avoid.push({ text: sp.negative.text, ratio: sp.negative.scale - 1 });
      if (avoid.length) body.avoid = avoid;
      if (sp.documents.length) {
        body.documents = documents;
        if (Number.isFinite(sp.documentRatio)) body.document_ratio = sp.documentRatio;
      }
      if (sp.adaptive) body.ratio_schedule = "adaptive";
    }
    return body;
  }

  async function streamAnswer(a, body) {
    const ctrl = new AbortController();
    running.add(ctrl);
    const t0 = performance.now();
    let tFirst = null;
    try {
      const res = await fetch(new URL("chat/completions", API),
        { method: "POST", headers: headers(), body: JSON.stringify(body), signal: ctrl.signal });
      if (!res.ok) throw new ServerError(res.status, await readError(res), res.headers.get("Retry-After"));
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "", done = false;
      while (!done) {
        const { value, done: end } = await reader.read();
        if (end) break;
        buf += value;
        for (let cut; !done && (cut = buf.search(/\r?\n\r?\n/)) >= 0;) {
          const event = buf.slice(0, cut);
          buf = buf.slice(cut).replace(/^\r?\n\r?\n/, "");
          const data = event.split(/\r?\n/).filter((l) => l.startsWith("data:"))
            .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
          if (data === "[DONE]") done = true;
          else if (data) tFirst = onEvent(a, JSON.parse(data), tFirst);
        }
      }
      if (!done) throw new Error("the stream ended before it was complete (connection lost?)");
    } catch (e) {
      if (e.name === "AbortError") a.stopped = true;
      else a.error = describe(e, Boolean(body.documents));
    } finally {
      running.delete(ctrl);
      const tEnd = performance.now();
      if (tFirst != null) {
        a.ttftMs = tFirst - t0;
        const n = a.usage ? a.usage.completion_tokens : a.chunks;
        if (n > 1 && tEnd > tFirst) a.tps = ((n - 1) * 1000) / (tEnd - tFirst); // rate after the first token
      }
      a.pending = false;
      schedule(a);
    }
  }

  function onEvent(a, ev, tFirst) {
    if (ev.error) throw new ServerError(200, ev.error);
    const choice = ev.choices && ev.choices[0];
    const delta = choice && choice.delta && choice.delta.content;
    if (delta) {
      if (tFirst == null) tFirst = performance.now();
      a.text += delta;
      a.chunks = (a.chunks || 0) + 1;
      schedule(a);
    }
    if (choice && choice.finish_reason) a.finish = choice.finish_reason;
    if (ev.usage) a.usage = ev.usage;
    return tFirst;
  }

  async function send() {
    const text = $("input").value, s = state.settings;
    if (!text.trim() || running.size) return;
    const rows = [{ text: s.principle, ratio: s.ratio }, ...s.more]
      .map((r) => ({ text: r.text.trim(), ratio: r.ratio })).filter((r) => r.text);
    const avoid = s.avoid.trim(), negative = s.negative.trim(), scale = s.cfgScale, docs = s.documents;
    if (negative && !(Number.isFinite(scale) && scale >= 1 && scale <= 101)) {
      return status("The guidance scale must be a number in [1, 101] (1 = off).");
    }
    const neg = negative && scale > 1 ? { text: negative, scale } : null; // scale 1: no guidance, as TabbyAPI
    const guided = rows.length > 0 || Boolean(avoid) || Boolean(neg) || docs.length > 0;
    const model = chosen(), preset = model !== base() && !guided ? model : null;
    if (s.compare && !guided && !preset) {
      return status("Compare needs guidance: write a principle or a negative prompt, add a document, or pick a preset model.");
    }
    if (s.adaptive && !guided) {
      return status("The adaptive ratio scales guidance: write a principle or a negative prompt, or add a document.");
    }
    status("");
    // One principle and nothing else, a fixed ratio: the request of a single principle, as always.
    const spec = rows.length > 1 || avoid || neg || docs.length || s.adaptive ? {
      principles: rows, avoid: avoid ? { text: avoid, ratio: s.avoidRatio } : null, negative: neg,
      documents: docs.map((d) => ({ name: d.name, chars: d.text.length })), documentRatio: s.documentRatio,
      adaptive: s.adaptive } : null;
    const kinds = s.compare ? ["plain", "aligned"] : [guided || preset ? "aligned" : "plain"];
    const answers = kinds.map((kind) => {
      const aligned = kind === "aligned" && !preset;
      const a = { kind, principle: aligned && !spec ? rows[0].text : null, ratio: aligned && !spec ? rows[0].ratio : null,
        text: "", pending: true, model: kind === "plain" ? base() : model };
      if (kind === "aligned" && preset) a.preset = preset;
      if (aligned && spec) a.spec = spec;
      return a;
    });
    state.turns.push({ user: text, answers });
    $("input").value = "";
    const turnIndex = state.turns.length - 1;
    const texts = docs.map((d) => d.text);
    const bodies = answers.map((a) => requestBody(turnIndex, a, texts));
    renderAll();
    save();
    busy(true);
    await Promise.all(answers.map((a, i) => streamAnswer(a, bodies[i])));
    dirty.forEach(paint); // the last repaint now, not a frame later: once not busy, every answer is shown
    dirty.clear();
    busy(false);
    save();
  }

  function busy(on) {
    $("send").hidden = on;
    $("stop").hidden = !on;
    document.body.classList.toggle("busy", on);
  }

  function stop() { running.forEach((c) => c.abort()); }

  function exportChat() {
    const data = { format: STORE, exported_at: new Date().toISOString(), model: chosen(), settings: state.settings,
      turns: state.turns };
    const url = URL.createObjectURL(new Blob([JSON.stringify(data, null, 2)], { type: "application/json" }));
    const link = el("a");
    link.href = url;
    link.download = `la-edge-chat-${data.exported_at.replace(/[:.]/g, "-")}.json`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  async function loadModel() {
    try {
      const res = await fetch(new URL("models", API), { headers: headers() });
      if (!res.ok) {
        models = [];
        $("model").replaceChildren();
        return status(describe(new ServerError(res.status, await readError(res))));
      }
      const data = await res.json();
      models = (Array.isArray(data.data) ? data.data : []).map((m) => m && m.id).filter((id) => typeof id === "string");
      $("model").replaceChildren(...models.map((id, i) => {
        const opt = el("option", null, i ? `${id} (preset)` : id);
        opt.value = id;
        return opt;
      }));
      $("model").value = chosen() || "";
      status("");
    } catch (e) {
      status(describe(e));
    }
  }

  // ---- controls ---------------------------------------------------------------------------
  function bindSettings() {
    const s = state.settings, fields = { principle: "value", ratio: "valueAsNumber", avoid: "value",
      "avoid-ratio": "valueAsNumber", adaptive: "checked", negative: "value", "cfg-scale": "valueAsNumber",
      "document-ratio": "valueAsNumber", temperature: "valueAsNumber", "max-tokens": "valueAsNumber", compare: "checked" };
    const keyOf = (id) => ({ "max-tokens": "maxTokens", "avoid-ratio": "avoidRatio", "cfg-scale": "cfgScale",
      "document-ratio": "documentRatio" })[id] || id;
    const showRatios = () => {
      $("ratio-value").textContent = String(s.ratio);
      $("avoid-ratio-value").textContent = String(s.avoidRatio);
    };
    for (const [id, prop] of Object.entries(fields)) {
      const input = $(id), key = keyOf(id);
      if (s[key] != null && !(typeof s[key] === "number" && !Number.isFinite(s[key]))) input[prop] = s[key];
      input.addEventListener("input", () => {
        s[key] = input[prop];
        showRatios();
        saveSoon();
      });
    }
    showRatios();
    renderMore();
    bindDocuments();
    $("add-principle").addEventListener("click", () => {
      s.more.push({ text: "", ratio: 2 });
      save();
      renderMore();
      $("more-principles").lastChild.querySelector("textarea").focus();
    });
    $("api-key").value = apiKey();
    $("api-key").addEventListener("input", (e) => localStorage.setItem(KEY_STORE, e.target.value));
    $("api-key").addEventListener("change", loadModel);
    $("model").addEventListener("change", (e) => { s.model = e.target.value; save(); });
  }

  function renderMore() { // the principle rows after the first, each with its own ratio and a remove button
    const s = state.settings, root = $("more-principles");
    root.replaceChildren();
    s.more.forEach((r, i) => {
      const row = el("div", "principle-row"), n = i + 2;
      const text = el("textarea"), ratio = el("input"), value = el("output", null, String(r.ratio));
      const remove = el("button", "remove", "Remove");
      text.rows = 2;
      text.value = r.text;
      text.setAttribute("aria-label", `Principle ${n}`);
      Object.assign(ratio, { type: "range", min: 0, max: 10, step: 0.5, value: r.ratio });
      ratio.setAttribute("aria-label", `Ratio of principle ${n}`);
      remove.type = "button";
      text.addEventListener("input", () => { r.text = text.value; saveSoon(); });
      ratio.addEventListener("input", () => {
        r.ratio = ratio.valueAsNumber;
        value.textContent = String(r.ratio);
        saveSoon();
      });
      remove.addEventListener("click", () => { s.more.splice(i, 1); save(); renderMore(); });
      const head = el("label", null, `Principle ${n} · ratio `);
      head.append(value);
      row.append(head, text, ratio, remove);
      root.append(row);
    });
  }

  // ---- documents: dropped or chosen files (text only, read in the browser), or pasted text ----
  const utf8Bytes = (text) => new TextEncoder().encode(text).length;
  const kib = (n) => `${Math.ceil(n / 1024)} KiB`;
  const docMessage = (text) => { $("doc-message").textContent = text; };

  function readDocument(file) { // the text of a UTF-8 text file; an Error saying why not
    return new Promise((resolve, reject) => {
      if (file.size > MAX_DOC_BYTES) {
        reject(new Error(`${file.name} is too large (${kib(file.size)}; a document holds at most ${kib(MAX_DOC_BYTES)}).`));
        return;
      }
      const reader = new FileReader();
      reader.onerror = () => reject(new Error(`${file.name} could not be read.`));
      reader.onload = () => {
        const bytes = new Uint8Array(reader.result);
        let text = null;
        if (!bytes.includes(0)) {
          try { text = new TextDecoder("utf-8", { fatal: true }).decode(bytes); } catch { text = null; }
        }
        if (text === null) reject(new Error(`${file.name} is not a text file (binary, or not UTF-8).`));
        else if (!text.trim()) reject(new Error(`${file.name} is empty.`));
        else resolve(text);
      };
      reader.readAsArrayBuffer(file);
    });
  }

  function addDocument(name, text) { // throws an Error (shown by the caller) when it does not fit a request
    const docs = state.settings.documents, size = utf8Bytes(text);
    if (size > MAX_DOC_BYTES) throw new Error(`${name} is too large (${kib(size)}; a document holds at most ${kib(MAX_DOC_BYTES)}).`);
    const total = docs.reduce((n, d) => n + utf8Bytes(d.text), size);
    if (total > MAX_DOCS_BYTES) throw new Error(`${name} does not fit: all documents together hold at most ${kib(MAX_DOCS_BYTES)}.`);
    docs.push({ name, text });
    save();
    renderDocuments();
  }

  async function addFiles(files) {
    const refused = [];
    for (const file of files) {
      try { addDocument(file.name, await readDocument(file)); } catch (e) { refused.push(e.message); }
    }
    docMessage(refused.join(" "));
  }

  function renderDocuments() {
    const docs = state.settings.documents;
    $("documents").replaceChildren(...docs.map((d, i) => {
      const item = el("li", "document"), remove = el("button", "remove", "Remove");
      remove.type = "button";
      remove.setAttribute("aria-label", `Remove ${d.name}`);
      remove.addEventListener("click", () => { docs.splice(i, 1); save(); renderDocuments(); });
      item.append(el("span", "doc-name", d.name), el("span", "doc-size", ` · ${d.text.length} chars`), remove);
      return item;
    }));
  }

  function bindDocuments() {
    const zone = $("doc-drop"), hasFiles = (e) => Boolean(e.dataTransfer) && [...e.dataTransfer.types].includes("Files");
    // A file dropped beside the zone must not replace the page with the file.
    window.addEventListener("dragover", (e) => { if (hasFiles(e)) e.preventDefault(); });
    window.addEventListener("drop", (e) => { if (hasFiles(e)) e.preventDefault(); });
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      const files = [...(e.dataTransfer ? e.dataTransfer.files : [])];
      const dropped = e.dataTransfer ? e.dataTransfer.getData("text/plain") : "";
      if (files.length) addFiles(files);
      else if (dropped.trim()) addPasted(dropped);
    });
    $("doc-pick").addEventListener("click", () => $("doc-file").click());
    $("doc-file").addEventListener("change", (e) => { addFiles([...e.target.files]); e.target.value = ""; });
    $("add-document").addEventListener("click", () => {
      if (!$("doc-paste").value.trim()) return docMessage("Paste some text first.");
      if (addPasted($("doc-paste").value)) $("doc-paste").value = "";
    });
    renderDocuments();
  }

  function addPasted(text) {
    const names = new Set(state.settings.documents.map((d) => d.name));
    let n = 1;
    while (names.has(`pasted text ${n}`)) n++;
    try {
      addDocument(`pasted text ${n}`, text);
      docMessage("");
      return true;
    } catch (e) {
      docMessage(e.message);
      return false;
    }
  }

  bindSettings();
  if (window.matchMedia("(max-width: 760px)").matches) $("settings").open = false; // room for the chat
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  $("stop").addEventListener("click", stop);
  $("new-chat").addEventListener("click", () => { stop(); state.turns = []; save(); renderAll(); status(""); });
  $("export").addEventListener("click", exportChat);
  window.addEventListener("pagehide", save);
  renderAll();
  loadModel();
})();
