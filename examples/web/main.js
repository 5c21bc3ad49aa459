// Explain a photo in the browser with an onnxcam bundle's explanation graph (onnxruntime-web,
// WebAssembly). Served statically; onnxruntime-web comes from ./node_modules (npm install).
//
// URL parameters: bundle (directory URL, default "bundle/"), image (default "photo.png"),
// topk (default 3), method (a CAM method of manifest.explanation.methods, default gradcam),
// labels (class names, one per line, default "labels.txt"; used when the
// manifest names a label set instead of listing the names).
//
// The result is left in window.onnxcam = {input, inputShape, heatmaps, heatmapShape, classIds,
// probabilities} for tests; window.onnxcamError holds an error message.
import * as ort from "./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs";
import { fetchOk, jet, loadImage, startPage } from "./page.mjs";

ort.env.wasm.wasmPaths = new URL("./node_modules/onnxruntime-web/dist/", import.meta.url).href;
ort.env.wasm.numThreads = 1; // threads need a cross-origin-isolated page

const params = new URLSearchParams(location.search);
const bundleUrl = new URL(params.get("bundle") ?? "bundle/", location.href);
const topK = Number(params.get("topk") ?? 3);
const method = params.get("method") ?? "gradcam";

async function loadBundle() {
  const manifest = await (await fetchOk(new URL("manifest.json", bundleUrl), "manifest")).json();
  const graph = manifest.explanation;
  if (!graph) throw new Error(`bundle schema ${manifest.schema_version} has no explanation graph`);
  const model = new Uint8Array(await (await fetchOk(new URL(graph.file, bundleUrl), "graph"))
    .arrayBuffer());
  // the graph's weights live in weights.onnx.data (shared with features.onnx and head.onnx)
  const weights = await fetch(new URL("weights.onnx.data", bundleUrl));
  const externalData = weights.ok
    ? [{ path: "weights.onnx.data", data: new Uint8Array(await weights.arrayBuffer()) }] : [];
  const session = await ort.InferenceSession.create(model, { externalData,
    executionProviders: ["wasm"] });
  let names = Array.isArray(manifest.labels) ? manifest.labels : null;
  if (!names && manifest.labels) {
    const response = await fetch(params.get("labels") ?? "labels.txt");
    if (response.ok) names = (await response.text()).split("\n").filter((s) => s.length);
  }
  return { manifest, graph, session, names };
}

// torchvision-style Resize (shorter side, or exact [h, w]) + CenterCrop, then scale/mean/std
function preprocess(img, pre, shape) {
  const [outH, outW] = pre.crop != null ? [].concat(pre.crop, pre.crop).slice(0, 2)
    : (Array.isArray(pre.resize) ? pre.resize : [shape[2], shape[3]]);
  let [h, w] = [img.naturalHeight, img.naturalWidth];
  if (Array.isArray(pre.resize)) [h, w] = pre.resize;
  else if (pre.resize != null) {
    const s = pre.resize / Math.min(h, w);
    [h, w] = [Math.round(h * s), Math.round(w * s)];
  }
  const canvas = new OffscreenCanvas(outW, outH);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, -Math.round((w - outW) / 2), -Math.round((h - outH) / 2), w, h);
  const rgba = ctx.getImageData(0, 0, outW, outH).data;
  const x = new Float32Array(3 * outH * outW);
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < outH * outW; i++) {
      x[c * outH * outW + i] = (rgba[4 * i + c] * pre.scale - pre.mean[c]) / pre.std[c];
    }
  }
  return { x, canvas, shape: [1, 3, outH, outW] };
}

function drawFigure(row, photo, heatmap, h, w, title) {
  const canvas = document.createElement("canvas");
  [canvas.width, canvas.height] = [w, h];
  const ctx = canvas.getContext("2d");
  ctx.drawImage(photo, 0, 0);
  const pixels = ctx.getImageData(0, 0, w, h);
  for (let i = 0; i < h * w; i++) {
    const color = jet(heatmap[i]);
    for (let c = 0; c < 3; c++) {
      pixels.data[4 * i + c] = Math.round(0.5 * pixels.data[4 * i + c] + 0.5 * color[c]);
    }
  }
  ctx.putImageData(pixels, 0, 0);
  const figure = document.createElement("figure");
  const caption = document.createElement("figcaption");
  caption.textContent = title;
  figure.append(canvas, caption);
  row.append(figure);
}

async function explain(bundle, src) {
  const { manifest, graph, session, names } = bundle;
  const pre = manifest.preprocessing;
  if (!pre || (pre.layout ?? "NCHW") !== "NCHW" || (pre.dtype ?? "float32") !== "float32") {
    throw new Error("this page handles float32 NCHW bundles with recorded preprocessing");
  }
  const img = await loadImage(src);
  const { x, canvas, shape } = preprocess(img, pre, manifest.input.shape);
  const start = performance.now();
  const feeds = {
    [graph.inputs.input]: new ort.Tensor("float32", x, shape),
    [graph.inputs.top_k]: new ort.Tensor("int64", BigInt64Array.from([BigInt(topK)]), [1]),
    [graph.inputs.least]: new ort.Tensor("int64", BigInt64Array.from([0n]), [1]),
    [graph.inputs.class_ids]: new ort.Tensor("int64", new BigInt64Array(0), [1, 0]),
  };
  if (graph.inputs.method) {  // index of the CAM method in manifest.explanation.methods
    const methods = graph.methods ?? [graph.method];
    const index = methods.indexOf(method);
    if (index < 0) throw new Error(`method ${method} is not in this bundle: ${methods.join(", ")}`);
    feeds[graph.inputs.method] = new ort.Tensor("int64", BigInt64Array.from([BigInt(index)]), [1]);
  }
  const out = await session.run(feeds);
  const ms = performance.now() - start;
  const heatmaps = out[graph.outputs.heatmaps];
  const ids = Array.from(out[graph.outputs.target_ids].data, Number);
  const probabilities = Array.from(out[graph.outputs.probabilities].data);
  const [, k, h, w] = heatmaps.dims;
  const row = document.getElementById("row");
  row.replaceChildren();
  const original = document.createElement("figure");
  original.append(await toCanvas(canvas), Object.assign(document.createElement("figcaption"), { textContent: "input" }));
  row.append(original);
  const photo = await createImageBitmap(canvas);
  for (let j = 0; j < k; j++) {
    const name = names ? names[ids[j]] : `class ${ids[j]}`;
    drawFigure(row, photo, heatmaps.data.subarray(j * h * w, (j + 1) * h * w), h, w,
      `${name} ${probabilities[j].toPrecision(3)}`);
  }
  document.getElementById("status").textContent =
    `explained top-${k} in one onnxruntime-web run: ${ms.toFixed(0)} ms`;
  window.onnxcam = { input: Array.from(x), inputShape: shape, heatmaps: Array.from(heatmaps.data),
    heatmapShape: heatmaps.dims, classIds: ids, probabilities };
}

async function toCanvas(offscreen) {
  const canvas = document.createElement("canvas");
  [canvas.width, canvas.height] = [offscreen.width, offscreen.height];
  canvas.getContext("2d").drawImage(await createImageBitmap(offscreen), 0, 0);
  return canvas;
}

startPage(params, bundleUrl, loadBundle, explain);
