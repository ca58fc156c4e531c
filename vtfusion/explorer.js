// Front end of vtfusion.explorer.HeatmapExplorer, an anywidget ESM module.
//
// Plain DOM and 2D canvases, no library and no network: it decodes the images and maps that
// travel in the widget's `payload` (uint8, zlib, base64; see vtfusion/explorer.py) and draws
// everything here, so it responds the same with a kernel (JupyterLab) and without one (the
// static book, where the html-manager renders saved widget state).

const PANEL = 256; // longer side of a drawn panel, in canvas (and CSS) pixels
const HIST = {w: 300, h: 170, left: 36, right: 10, top: 22, bottom: 30};
const GROUPS = [
  {label: 0, name: "normal", fill: "rgba(31, 119, 180, 0.6)"},
  {label: 1, name: "defective", fill: "rgba(255, 127, 14, 0.6)"},
  {label: null, name: "unlabelled", fill: "rgba(127, 127, 127, 0.6)"},
];

function bytesOf(base64) {
  const text = atob(base64);
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}

// zlib-wrapped deflate, what Python's zlib.compress writes.
async function inflate(base64) {
  const stream = new Blob([bytesOf(base64)]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function unpackBits(bytes, count) {
  const out = new Uint8Array(count);
  for (let i = 0; i < count; i++) out[i] = (bytes[i >> 3] >> (7 - (i & 7))) & 1;
  return out;
}

async function decode(payload) {
  const [h, w] = payload.size;
  const maps = {};
  for (const m of payload.maps) maps[m.name] = {...m, data: await inflate(m.data)};
  return {
    h, w, count: payload.count, maps, names: payload.maps.map((m) => m.name),
    images: await inflate(payload.images),
    masks: payload.masks ? unpackBits(await inflate(payload.masks), payload.count * h * w) : null,
    lut: bytesOf(payload.lut), titles: payload.titles, labels: payload.labels,
    scores: payload.scores, bins: payload.bins,
  };
}

// Source coordinates of each output pixel along one axis, as torch's bilinear resize with
// align_corners=False: index below, index above, weight of the one above.
function axis(outSize, inSize) {
  const lo = new Int32Array(outSize), hi = new Int32Array(outSize), f = new Float32Array(outSize);
  for (let o = 0; o < outSize; o++) {
    const s = Math.min(Math.max((o + 0.5) * inSize / outSize - 0.5, 0), inSize - 1);
    lo[o] = Math.floor(s);
    hi[o] = Math.min(lo[o] + 1, inSize - 1);
    f[o] = s - lo[o];
  }
  return {lo, hi, f};
}

function bilinear(src, base, width, stride, channel, ay, ax, y, x) {
  const r0 = base + ay.lo[y] * width, r1 = base + ay.hi[y] * width;
  const c0 = ax.lo[x], c1 = ax.hi[x], fx = ax.f[x], fy = ay.f[y];
  const top = src[(r0 + c0) * stride + channel] * (1 - fx) + src[(r0 + c1) * stride + channel] * fx;
  const bottom = src[(r1 + c0) * stride + channel] * (1 - fx) + src[(r1 + c1) * stride + channel] * fx;
  return top * (1 - fy) + bottom * fy;
}

// Pixels of `inside` with a neighbour (within the panel) outside get `rgb`: a one-pixel outline.
function outline(pixels, inside, width, height, rgb) {
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const p = y * width + x;
      if (!inside[p]) continue;
      const edge = (x > 0 && !inside[p - 1]) || (x < width - 1 && !inside[p + 1]) ||
                   (y > 0 && !inside[p - width]) || (y < height - 1 && !inside[p + width]);
      if (edge) pixels.set(rgb, 4 * p);
    }
  }
}

// The RGBA pixels of one panel: the image and the map bilinearly resized to the panel, the map
// blended on top in jet colours, the region at or above `threshold` outlined in white and,
// with `truth`, the ground truth in red.
function panelPixels(data, index, map, threshold, opacity, truth) {
  const {h, w} = data;
  const scale = PANEL / Math.max(h, w);
  const height = Math.round(h * scale), width = Math.round(w * scale);
  const px = new Uint8ClampedArray(4 * width * height);
  const [mh, mw] = map.shape;
  const iy = axis(height, h), ix = axis(width, w), my = axis(height, mh), mx = axis(width, mw);
  const level = (threshold - map.lo) / (map.hi - map.lo) * 255; // threshold in stored units
  const above = new Uint8Array(width * height);
  const imageBase = index * h * w, mapBase = index * mh * mw;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const p = y * width + x;
      const v = bilinear(map.data, mapBase, mw, 1, 0, my, mx, y, x);
      const colour = 3 * Math.round(v);
      above[p] = v >= level ? 1 : 0;
      for (let c = 0; c < 3; c++) {
        const under = bilinear(data.images, imageBase, w, 3, c, iy, ix, y, x);
        px[4 * p + c] = (1 - opacity) * under + opacity * data.lut[colour + c];
      }
      px[4 * p + 3] = 255;
    }
  }
  outline(px, above, width, height, [255, 255, 255]);
  if (truth && data.masks) {
    const inside = new Uint8Array(width * height);
    for (let y = 0; y < height; y++) {
      const row = imageBase + Math.min(h - 1, Math.floor(y / scale)) * w;
      for (let x = 0; x < width; x++) {
        inside[y * width + x] = data.masks[row + Math.min(w - 1, Math.floor(x / scale))];
      }
    }
    outline(px, inside, width, height, [255, 0, 0]);
  }
  return {width, height, pixels: px};
}

function drawPanel(canvas, data, index, map, threshold, opacity, truth) {
  const {width, height, pixels} = panelPixels(data, index, map, threshold, opacity, truth);
  canvas.width = width;
  canvas.height = height;
  canvas.getContext("2d").putImageData(new ImageData(pixels, width, height), 0, 0);
}

function format(value) {
  const v = Number(value);
  return v !== 0 && Math.abs(v) < 1e-3 ? v.toExponential(1) : String(Number(v.toPrecision(3)));
}

function histX(map, value) {
  const span = HIST.w - HIST.left - HIST.right;
  return HIST.left + (value - map.lo) / (map.hi - map.lo) * span;
}

function drawHistogram(canvas, data, index, map, threshold) {
  canvas.width = HIST.w;
  canvas.height = HIST.h;
  const ctx = canvas.getContext("2d");
  const bottom = HIST.h - HIST.bottom, plotH = bottom - HIST.top;
  const bins = data.bins, counts = GROUPS.map(() => new Array(bins).fill(0));
  map.scores.forEach((s, i) => {
    const g = GROUPS.findIndex((grp) => grp.label === (data.labels[i] ?? null));
    const b = Math.min(bins - 1, Math.max(0, Math.floor((s - map.lo) / (map.hi - map.lo) * bins)));
    counts[g][b] += 1;
  });
  const top = Math.max(1, ...counts.flat());
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, HIST.w, HIST.h);
  const binW = (HIST.w - HIST.left - HIST.right) / bins;
  counts.forEach((row, g) => {
    ctx.fillStyle = GROUPS[g].fill;
    row.forEach((n, b) => {
      if (n) ctx.fillRect(HIST.left + b * binW + 1, bottom - n / top * plotH, binW - 2, n / top * plotH);
    });
  });
  ctx.strokeStyle = "#444";
  ctx.beginPath();
  ctx.moveTo(HIST.left, HIST.top);
  ctx.lineTo(HIST.left, bottom);
  ctx.lineTo(HIST.w - HIST.right, bottom);
  ctx.stroke();
  ctx.fillStyle = "#222";
  ctx.font = "10px sans-serif";
  ctx.textAlign = "left";
  ctx.fillText(format(map.lo), HIST.left, bottom + 12);
  ctx.textAlign = "right";
  ctx.fillText(format(map.hi), HIST.w - HIST.right, bottom + 12);
  ctx.fillText(String(top), HIST.left - 4, HIST.top + 8);
  ctx.fillText("0", HIST.left - 4, bottom);
  ctx.textAlign = "center";
  ctx.fillText("image score: max of the map", (HIST.left + HIST.w - HIST.right) / 2, HIST.h - 4);
  let legendX = HIST.left + 4;
  ctx.textAlign = "left";
  for (const [g, grp] of GROUPS.entries()) {
    if (!counts[g].some((n) => n)) continue;
    ctx.fillStyle = grp.fill;
    ctx.fillRect(legendX, 6, 10, 10);
    ctx.fillStyle = "#222";
    ctx.fillText(grp.name, legendX + 13, 15);
    legendX += 20 + ctx.measureText(grp.name).width;
  }
  const t = histX(map, Math.min(map.hi, Math.max(map.lo, threshold)));
  ctx.strokeStyle = "#d62728";
  ctx.lineWidth = 2;
  ctx.beginPath();
  ctx.moveTo(t, HIST.top - 4);
  ctx.lineTo(t, bottom);
  ctx.stroke();
  // the shown image's score, a triangle under the axis
  const s = Math.min(HIST.w - HIST.right - 4, histX(map, map.scores[index]));
  ctx.fillStyle = "#000";
  ctx.beginPath();
  ctx.moveTo(s, bottom + 1);
  ctx.lineTo(s - 4, bottom + 8);
  ctx.lineTo(s + 4, bottom + 8);
  ctx.fill();
}

function element(tag, props = {}, children = []) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function labelText(label) {
  return label === 1 ? "defective" : label === 0 ? "normal" : "unlabelled";
}

async function render({model, el}) {
  const data = await decode(model.get("payload"));
  const state = {
    index: Math.min(Math.max(model.get("image_index") || 0, 0), data.count - 1),
    map: data.names.includes(model.get("map_name")) ? model.get("map_name") : data.names[0],
    compare: data.names.includes(model.get("compare_name")) ? model.get("compare_name") : "",
    thresholds: {...model.get("thresholds")},
    opacity: model.get("opacity"),
    truth: model.get("show_truth"),
  };
  for (const name of data.names) {
    if (!(name in state.thresholds)) state.thresholds[name] = (data.maps[name].lo + data.maps[name].hi) / 2;
  }

  const imageSelect = element("select", {class: "vtf-image", "aria-label": "image"});
  data.titles.forEach((title, i) => {
    const score = data.scores ? ` · score ${format(data.scores[i])}` : "";
    imageSelect.append(element("option", {value: String(i), text: `${i}: ${title}${score}`}));
  });
  const prev = element("button", {class: "vtf-prev", type: "button", title: "previous image", text: "◀"});
  const next = element("button", {class: "vtf-next", type: "button", title: "next image", text: "▶"});
  const mapButtons = data.names.map((name) =>
    element("button", {class: "vtf-map", type: "button", "data-map": name, text: name}));
  const compareSelect = element("select", {class: "vtf-compare", "aria-label": "map beside"},
    [element("option", {value: "", text: "none"}),
     ...data.names.map((name) => element("option", {value: name, text: name}))]);
  const threshold = element("input", {class: "vtf-threshold", type: "range", "aria-label": "threshold"});
  const thresholdValue = element("span", {class: "vtf-value"});
  const opacity = element("input", {class: "vtf-opacity", type: "range", min: "0", max: "1",
                                    step: "0.01", "aria-label": "opacity"});
  const opacityValue = element("span", {class: "vtf-value"});
  const truth = element("input", {class: "vtf-truth", type: "checkbox"});
  const main = element("canvas", {class: "vtf-panel vtf-main"});
  const mainCaption = element("figcaption");
  const beside = element("canvas", {class: "vtf-panel vtf-beside"});
  const besideCaption = element("figcaption");
  const besideFigure = element("figure", {}, [beside, besideCaption]);
  const histogram = element("canvas", {class: "vtf-histogram", title: "click or drag: set the threshold"});
  const caption = element("div", {class: "vtf-caption"});
  if (!data.masks) truth.disabled = true;

  el.append(element("div", {class: "vtf-explorer"}, [
    element("div", {class: "vtf-row"}, [element("span", {text: "image"}), prev, imageSelect, next]),
    element("div", {class: "vtf-row"}, [element("span", {text: "map"}), ...mapButtons,
      element("label", {}, ["beside ", compareSelect])]),
    element("div", {class: "vtf-row"}, [
      element("label", {}, ["threshold ", threshold, thresholdValue]),
      element("label", {}, ["opacity ", opacity, opacityValue]),
      element("label", {}, [truth, " ground truth"])]),
    element("div", {class: "vtf-row vtf-figures"}, [
      element("figure", {}, [main, mainCaption]), besideFigure,
      element("figure", {}, [histogram, element("figcaption",
        {text: "image scores; click or drag to set the threshold"})])]),
    caption]));

  // Back to the kernel while there is one; a static page has no comm, and the view keeps
  // its state to itself.
  function share(fields) {
    for (const [k, v] of Object.entries(fields)) model.set(k, v);
    try { model.save_changes(); } catch (e) { /* no kernel */ }
  }

  function redraw() {
    const map = data.maps[state.map];
    const t = state.thresholds[state.map];
    imageSelect.value = String(state.index);
    for (const b of mapButtons) b.setAttribute("aria-pressed", String(b.dataset.map === state.map));
    compareSelect.value = state.compare;
    threshold.min = String(map.lo);
    threshold.max = String(map.hi);
    threshold.step = String((map.hi - map.lo) / 1000);
    threshold.value = String(t);
    thresholdValue.textContent = format(t);
    opacity.value = String(state.opacity);
    opacityValue.textContent = Number(state.opacity).toFixed(2);
    truth.checked = state.truth && !!data.masks;
    drawPanel(main, data, state.index, map, t, state.opacity, truth.checked);
    mainCaption.textContent = `${state.map} ≥ ${format(t)}`;
    besideFigure.style.display = state.compare ? "" : "none";
    if (state.compare) {
      const other = data.maps[state.compare], t2 = state.thresholds[state.compare];
      drawPanel(beside, data, state.index, other, t2, state.opacity, truth.checked);
      besideCaption.textContent = `${state.compare} ≥ ${format(t2)}`;
    }
    drawHistogram(histogram, data, state.index, map, t);
    const given = data.scores ? ` · score ${format(data.scores[state.index])}` : "";
    caption.textContent = `${data.titles[state.index]} · ${labelText(data.labels[state.index])}${given}` +
      ` · max of ${state.map}: ${format(map.scores[state.index])}` +
      " · red: ground truth, white: map ≥ threshold";
  }

  function setIndex(i) {
    state.index = (i + data.count) % data.count;
    share({image_index: state.index});
    redraw();
  }
  function setThreshold(value) {
    const map = data.maps[state.map];
    state.thresholds = {...state.thresholds, [state.map]: Math.min(map.hi, Math.max(map.lo, value))};
    share({thresholds: state.thresholds});
    redraw();
  }
  function fromHistogram(event) {
    const box = histogram.getBoundingClientRect();
    const x = (event.clientX - box.left) * histogram.width / box.width;
    const map = data.maps[state.map];
    setThreshold(map.lo + (x - HIST.left) / (HIST.w - HIST.left - HIST.right) * (map.hi - map.lo));
  }

  const listeners = [
    [imageSelect, "change", () => setIndex(Number(imageSelect.value))],
    [prev, "click", () => setIndex(state.index - 1)],
    [next, "click", () => setIndex(state.index + 1)],
    [compareSelect, "change", () => { state.compare = compareSelect.value; share({compare_name: state.compare}); redraw(); }],
    [threshold, "input", () => setThreshold(Number(threshold.value))],
    [opacity, "input", () => { state.opacity = Number(opacity.value); share({opacity: state.opacity}); redraw(); }],
    [truth, "change", () => { state.truth = truth.checked; share({show_truth: state.truth}); redraw(); }],
    [histogram, "pointerdown", (e) => { histogram.setPointerCapture?.(e.pointerId); fromHistogram(e); }],
    [histogram, "pointermove", (e) => { if (e.buttons & 1) fromHistogram(e); }],
    ...mapButtons.map((b) => [b, "click", () => { state.map = b.dataset.map; share({map_name: state.map}); redraw(); }]),
  ];
  for (const [target, type, handler] of listeners) target.addEventListener(type, handler);

  // Changes made from Python while a kernel runs.
  const fromKernel = {
    "change:image_index": () => { state.index = Math.min(Math.max(model.get("image_index"), 0), data.count - 1); },
    "change:map_name": () => { if (data.names.includes(model.get("map_name"))) state.map = model.get("map_name"); },
    "change:compare_name": () => { state.compare = data.names.includes(model.get("compare_name")) ? model.get("compare_name") : ""; },
    "change:thresholds": () => { state.thresholds = {...state.thresholds, ...model.get("thresholds")}; },
    "change:opacity": () => { state.opacity = model.get("opacity"); },
    "change:show_truth": () => { state.truth = model.get("show_truth"); },
  };
  const onKernel = Object.fromEntries(Object.entries(fromKernel).map(([k, f]) => [k, () => { f(); redraw(); }]));
  for (const [k, f] of Object.entries(onKernel)) model.on(k, f);
  redraw();
  return () => {
    for (const [target, type, handler] of listeners) target.removeEventListener(type, handler);
    for (const [k, f] of Object.entries(onKernel)) model.off(k, f);
  };
}

export default {render};
// For tests (tests/test_explorer.py runs them in Node): decoding and the panel pixels.
export {decode, panelPixels};
