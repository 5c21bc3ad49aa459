// Explain a photo's best detections in the browser with an onnxcam detector bundle's two
// graphs (features.onnx, head.onnx) and onnxruntime-web (WebAssembly). Served statically with
// detector.mjs (the pipeline, shared with examples/node/explain_detector.mjs);
// onnxruntime-web comes from ./node_modules (npm install).
//
// URL parameters: bundle (directory URL, default "bundle/"), image (default "photo.png"),
// top (how many detections, default 3), method (gradcam or layercam, default layercam as in
// Python), conf
// (confidence threshold, default 0.25).
//
// The photo is letterboxed (or resized and cropped) and scaled as manifest.preprocessing says.
// The result is left in window.onnxcam = {input, inputShape, heatmaps, heatmapShape,
// detections} for tests (heatmaps [1, K, H, W], K the detections found, at most top);
// window.onnxcamError holds an error message.
import * as ort from "./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs";
import { fetchOk, jet, loadImage, startPage } from "./page.mjs";
import {
  DEFAULT_CONF, DEFAULT_METHOD, checkOptions, explainImage, openDetector,
} from "./detector.mjs";

ort.env.wasm.wasmPaths = new URL("./node_modules/onnxruntime-web/dist/", import.meta.url).href;
ort.env.wasm.numThreads = 1; // threads need a cross-origin-isolated page

const params = new URLSearchParams(location.search);
const bundleUrl = new URL(params.get("bundle") ?? "bundle/", location.href);
const options = {
  top: Number(params.get("top") ?? 3),
  conf: Number(params.get("conf") ?? DEFAULT_CONF),
  method: params.get("method") ?? DEFAULT_METHOD,
};
const DISPLAY = 192; // the smallest displayed side: small model inputs are drawn enlarged

async function loadBundle() {
  checkOptions(options);
  const manifest = await (await fetchOk(new URL("manifest.json", bundleUrl), "manifest")).json();
  const bytes = async (name) => new Uint8Array(
    await (await fetchOk(new URL(name, bundleUrl), name)).arrayBuffer());
  // a bundle's larger weights live in weights.onnx.data, shared by both graphs (if any)
  const weights = await fetch(new URL("weights.onnx.data", bundleUrl));
  const externalData = weights.ok
    ? [{ path: "weights.onnx.data", data: new Uint8Array(await weights.arrayBuffer()) }] : [];
  const create = async (name) => ort.InferenceSession.create(await bytes(name),
    { externalData, executionProviders: ["wasm"] });
  const [features, head] = [await create("features.onnx"), await create("head.onnx")];
  return openDetector(ort, manifest, features, head, bundleUrl.pathname);
}

// Python's round(): halves to even
function roundHalfEven(v) {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

const pair = (v) => [].concat(v, v).slice(0, 2);

// Where the photo goes on the model input: Ultralytics' LetterBox where the manifest has a
// letterbox (scaled to fit, grey padding), else torchvision-style Resize + CenterCrop.
function placement(img, pre, shape) {
  const [h, w] = [img.naturalHeight, img.naturalWidth];
  if (pre.letterbox != null) {
    let [ch, cw] = Number.isInteger(pre.letterbox) ? [0, 0] : pair(pre.letterbox);
    const ratio = Number.isInteger(pre.letterbox) ? pre.letterbox / Math.max(w, h)
      : Math.min(ch / h, cw / w);
    const [newW, newH] = [Math.max(1, roundHalfEven(w * ratio)),
      Math.max(1, roundHalfEven(h * ratio))];
    if (Number.isInteger(pre.letterbox)) {  // pad only to a multiple of the stride
      [cw, ch] = [newW, newH].map((s) => Math.ceil(s / pre.stride) * pre.stride);
    }
    const topleft = pre.letterbox_align === "topleft";
    const left = topleft ? 0 : roundHalfEven((cw - newW) / 2 - 0.1);
    const top = topleft ? 0 : roundHalfEven((ch - newH) / 2 - 0.1);
    return { outH: ch, outW: cw, left, top, w: newW, h: newH, pad: pre.pad_value ?? 114 };
  }
  const [outH, outW] = pre.crop != null ? pair(pre.crop)
    : (Array.isArray(pre.resize) ? pre.resize : [shape[2], shape[3]]);
  let [rh, rw] = [h, w];
  if (Array.isArray(pre.resize)) [rh, rw] = pre.resize;
  else if (pre.resize != null) {
    const s = pre.resize / Math.min(h, w);
    [rh, rw] = [Math.round(h * s), Math.round(w * s)];
  }
  return { outH, outW, left: -Math.round((rw - outW) / 2), top: -Math.round((rh - outH) / 2),
    w: rw, h: rh, pad: null };
}

function preprocess(img, pre, shape) {
  const p = placement(img, pre, shape);
  const canvas = new OffscreenCanvas(p.outW, p.outH);
  const ctx = canvas.getContext("2d");
  if (p.pad != null) {
    ctx.fillStyle = `rgb(${p.pad}, ${p.pad}, ${p.pad})`;
    ctx.fillRect(0, 0, p.outW, p.outH);
  }
  ctx.drawImage(img, p.left, p.top, p.w, p.h);
  const rgba = ctx.getImageData(0, 0, p.outW, p.outH).data;
  const n = p.outH * p.outW;
  const order = pre.channels === "BGR" ? [2, 1, 0] : [0, 1, 2];
  const x = new Float32Array(3 * n);
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < n; i++) {
      x[c * n + i] = (rgba[4 * i + order[c]] * pre.scale - pre.mean[c]) / pre.std[c];
    }
  }
  return { x, canvas, shape: [1, 3, p.outH, p.outW] };
}

// The model input (with a heatmap blended in, when given) enlarged, and detection boxes.
async function figure(input, heatmap, boxes, title) {
  const [w, h] = [input.width, input.height];
  const small = new OffscreenCanvas(w, h);
  const ctx = small.getContext("2d");
  ctx.drawImage(input, 0, 0);
  if (heatmap) {
    const pixels = ctx.getImageData(0, 0, w, h);
    for (let i = 0; i < h * w; i++) {
      const color = jet(heatmap[i]);
      for (let c = 0; c < 3; c++) {
        pixels.data[4 * i + c] = Math.round(0.5 * pixels.data[4 * i + c] + 0.5 * color[c]);
      }
    }
    ctx.putImageData(pixels, 0, 0);
  }
  const scale = Math.max(1, Math.ceil(DISPLAY / Math.min(w, h)));
  const canvas = document.createElement("canvas");
  [canvas.width, canvas.height] = [w * scale, h * scale];
  const big = canvas.getContext("2d");
  big.imageSmoothingEnabled = false;
  big.drawImage(await createImageBitmap(small), 0, 0, w * scale, h * scale);
  big.font = "12px sans-serif";
  boxes.forEach(({ box, label }, j) => {
    const [x1, y1, x2, y2] = box.map((v) => v * scale);
    // labels stacked: the boxes of different classes may coincide
    const [tx, ty] = [Math.max(x1, 0) + 3, Math.max(y1, 0) + 13 * (j + 1)];
    // white on a black outline: seen on a white page as on a heatmap
    for (const [color, width] of [["black", 4], ["white", 2]]) {
      big.strokeStyle = color;
      big.lineWidth = width;
      big.strokeRect(x1, y1, x2 - x1, y2 - y1);
    }
    big.lineWidth = 3;
    big.strokeStyle = "black";
    big.strokeText(label, tx, ty);
    big.fillStyle = "white";
    big.fillText(label, tx, ty);
  });
  const fig = document.createElement("figure");
  fig.append(canvas, Object.assign(document.createElement("figcaption"), { textContent: title }));
  return fig;
}

async function explain(detector, src) {
  const pre = detector.manifest.preprocessing;
  if (!pre || (pre.layout ?? "NCHW") !== "NCHW" || (pre.dtype ?? "float32") !== "float32") {
    throw new Error("this page handles float32 NCHW bundles with recorded preprocessing");
  }
  const img = await loadImage(src);
  const { x, canvas, shape } = preprocess(img, pre, detector.manifest.input.shape);
  const start = performance.now();
  const { detections, heatmaps } = await explainImage(detector, x, shape, options);
  const ms = performance.now() - start;
  const [, , h, w] = shape;
  const names = Array.isArray(detector.manifest.labels) ? detector.manifest.labels : null;
  const label = (d) => `${names ? names[d.class_id] : `class ${d.class_id}`} ` +
    `${d.score.toPrecision(3)}`;
  const input = await createImageBitmap(canvas);
  const row = document.getElementById("row");
  row.replaceChildren(await figure(input, null,
    detections.map((d) => ({ box: d.box, label: label(d) })), "input and detections"));
  for (const [j, d] of detections.entries()) {
    row.append(await figure(input, heatmaps.subarray(j * h * w, (j + 1) * h * w),
      [{ box: d.box, label: "" }], `${label(d)} (anchor ${d.candidate})`));
  }
  document.getElementById("status").textContent = detections.length
    ? `explained ${detections.length} detection(s) with ${options.method}: ${ms.toFixed(0)} ms`
    : `no detection with a score >= ${options.conf}`;
  window.onnxcam = { input: Array.from(x), inputShape: shape, heatmaps: Array.from(heatmaps),
    heatmapShape: [1, detections.length, h, w], detections };
}

startPage(params, bundleUrl, loadBundle, explain);
