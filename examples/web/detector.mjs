// The detector pipeline of the onnxcam examples, shared by Node.js (examples/node/
// explain_detector.mjs, onnxruntime-node) and the browser (detector.html, onnxruntime-web):
// plain JavaScript that takes the `ort` namespace as a parameter.
//
// A detector bundle (manifest.task "detect") has two graphs: features.onnx (input -> cut
// tensors) and head.onnx (cut tensors + seed -> outputs, and the gradients of sum(seed * E) at
// every explained layer, E the explained tensor manifest.head.logits). The formats read here
// (manifest.format.name), as explainer/detection_formats.py reads them:
//   yolov8   output [N, 4+C, A]: centre-xywh, C class probabilities; E the class logits
//            [N, C, A] (manifest.format.explained "logits") or the output itself;
//   yolov5   output [N, A, 5+C]: centre-xywh, objectness, C class probabilities; a candidate's
//            score is objectness x class probability (float32); E the output;
//   yolox    as yolov5, the boxes still grid offsets and log sizes (YOLOX exported without
//            decoding): per stride s of format.strides (default 8, 16, 32), row-major cells
//            (x, y) of a ceil(H / s) x ceil(W / s) grid; centre (offset + cell) * s, size
//            exp(min(log size, 20)) * s; E the output;
//   end2end  output [N, K, 6]: x1, y1, x2, y2, score, class, the selection made in the graph
//            (no NMS here); E the output;
//   picodet  per stride s of format.strides, class probabilities [N, A_s, C] and box
//            distributions [N, A_s, 4 (R+1)] (format.outputs.scores, .boxes; R format.reg_max):
//            softmax over the R+1 bins, expectation x s, the distances (left, top, right,
//            bottom) from the cell's centre; E the probabilities concatenated [N, A, C]
//            (manifest.head.logits, a head output);
//   boxes_scores_labels  boxes [N, K, 4] (x1, y1, x2, y2), scores [N, K], labels [N, K] (int),
//            the selection made in the graph (torchvision's detectors); E the scores.
// E is always the head output manifest.head.logits, the seed's shape.
//
// Per image, as Python's Explainer(bundle).explain(x, targets="topK", conf=..., method=...):
//   1. the head with a zero seed gives the output; each candidate's box (centre-xywh to x1,
//      y1, x2, y2 in float32) and best class (the first of equal ones);
//   2. the candidates whose score is >= conf (compared in float32), then class-aware greedy NMS
//      at IoU 0.45 (each class's boxes shifted apart so that classes never suppress each other;
//      highest score first, equal scores by anchor order; a box overlapping a kept one with
//      IoU > 0.45 is dropped), stopping after K kept boxes: the image's detections, best first
//      (end2end: the rows by score, no NMS);
//   3. per detection, the head seeded with the gradient of its score's logit (the class logit
//      itself where E holds logits; else log(s / (1 - s)) of its confidence s, through the
//      product's terms: objectness and class probability) gives every explained layer's
//      gradient; each layer's CAM (Grad-CAM: ReLU(sum_c mean(g_c) A_c),
//      LayerCAM: ReLU(sum_c ReLU(g_c) A_c)) is upsampled (bilinear, half-pixel centres) to the
//      input size and min-max scaled (a constant CAM gives zeros); the layers' heatmaps are
//      averaged and min-max scaled again.
// A batch's heatmaps are [B, K, H, W] with K the most detections any image has (at most the
// K asked for); an image with fewer has zero maps in its remaining columns, as in Python.

export const METHODS = ["gradcam", "layercam"];
/** Python's default CAM method of a detector (Explainer.default_method): LayerCAM, since an
 * anchor's gradient is local and Grad-CAM's spatial mean washes it out. */
export const DEFAULT_METHOD = "layercam";
/** Python's default confidence threshold (explainer.detection.DEFAULT_CONF). */
export const DEFAULT_CONF = 0.25;
/** The NMS IoU threshold (explainer.detection.DEFAULT_IOU). */
export const IOU = 0.45;
/** explainer.detection_formats.EPS: the floor of IoU denominators and of s (1 - s). */
const EPS = 1e-12;

/** A bundle or option this pipeline cannot run; its message names what to change. */
export class DetectorError extends Error {
  constructor(message) {
    super(message);
    this.name = "DetectorError";
  }
}

/** The detection formats this pipeline reads (manifest.format.name). */
export const FORMATS = ["yolov8", "yolov5", "yolox", "end2end", "picodet",
  "boxes_scores_labels"];

/**
 * Check that `manifest` describes a detector of a format in FORMATS with NCHW layers; return
 * its explained layers.
 */
export function detectorLayers(manifest, where = "bundle") {
  const format = manifest.format ?? {};
  if (manifest.task !== "detect") {
    throw new DetectorError(`${where}: not a detector bundle (task ` +
      `${JSON.stringify(manifest.task)}); a bundle with an explanation graph (a classifier, ` +
      "a segmenter) runs with explain.mjs / index.html");
  }
  if (!FORMATS.includes(format.name)) {
    throw new DetectorError(`${where}: detection format ${JSON.stringify(format.name)} is ` +
      `not read here (${FORMATS.join(", ")}); Python's Explainer reads every format`);
  }
  if (format.explained === "logits" && format.name !== "yolov8") {
    throw new DetectorError(`${where}: format ${format.name} with class logits as the ` +
      "explained tensor is not read here");
  }
  const layers = manifest.layers ??
    [{ tensor: manifest.target.tensor, gradient: manifest.head.gradient }];
  if (manifest.input.layout !== "NCHW" || layers.some((l) => (l.layout ?? "NCHW") !== "NCHW")) {
    throw new DetectorError(`${where}: this pipeline reads NCHW inputs and layers only`);
  }
  return layers;
}

/** Check the options of explainImage: top (int >= 1), conf in [0, 1], a known method. */
export function checkOptions({ top, conf, method }) {
  if (!Number.isInteger(top) || top < 1) {
    throw new DetectorError(`top must be a whole number >= 1, got ${top}`);
  }
  if (!(conf >= 0 && conf <= 1)) throw new DetectorError(`conf must be in [0, 1], got ${conf}`);
  if (!METHODS.includes(method)) {
    throw new DetectorError(
      `unknown method ${JSON.stringify(method)}; use ${METHODS.join(" or ")}`);
  }
}

/** The head outputs a format's candidates are read from (manifest.format.outputs). */
export function formatOutputs(spec) {
  return Object.values(spec.outputs).flat();
}

/**
 * Cell corners (x, y) and strides of a dense head at input size H x W, stride by stride,
 * row-major within each (explainer.detection_formats.anchor_grid).
 */
export function anchorGrid(H, W, strides) {
  const cells = [];
  for (const s of strides) {
    const h = Math.ceil(H / s);
    const w = Math.ceil(W / s);
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) cells.push([x, y, s]);
  }
  return cells;
}

/**
 * The candidates of one image (`outputs`: the head's outputs by name, at least those
 * formatOutputs(spec) names; `spec`: manifest.format): boxes [A][4] (x1, y1, x2, y2, float32
 * values), each candidate's best class and its score, and whether the graph selected them
 * already (end2end, boxes_scores_labels). `size` [H, W]: the model input's (the grids of yolox
 * and picodet).
 */
export function candidates(outputs, spec, size) {
  const name = spec.name;
  if (name === "picodet") return picodetCandidates(outputs, spec, size);
  if (name === "boxes_scores_labels") return bslCandidates(outputs, spec);
  const output = outputs[spec.outputs.predictions];
  const p = output.data;
  const f = Math.fround; // numpy computes in float32
  const corners = (cx, cy, w, h) => [f(cx - f(w / 2)), f(cy - f(h / 2)), f(cx + f(w / 2)),
    f(cy + f(h / 2))];
  const [, d1, d2] = output.dims;
  const count = name === "yolov8" ? d2 : d1;
  let grid = null;
  if (name === "yolox") {
    if (size === null) throw new DetectorError("format yolox needs the input size");
    const strides = spec.strides ?? [8, 16, 32];
    grid = anchorGrid(size[0], size[1], strides);
    if (grid.length !== count) {
      throw new DetectorError(`format yolox: ${count} rows, but strides ` +
        `${JSON.stringify(strides)} give ${grid.length} cells at ${size[0]}x${size[1]}; ` +
        "set the format's strides");
    }
  }
  const boxes = [];
  const classes = new Int32Array(count);
  const scores = new Float64Array(count);
  for (let a = 0; a < count; a++) {
    if (name === "yolov8") { // [4+C, A]
      const at = (r) => p[r * d2 + a];
      let c = 0;
      for (let k = 1; k < d1 - 4; k++) if (at(4 + k) > at(4 + c)) c = k;
      classes[a] = c;
      scores[a] = at(4 + c);
      boxes.push(corners(at(0), at(1), at(2), at(3)));
    } else if (name === "yolov5" || name === "yolox") { // [A, 5+C]: objectness x class
      const row = p.subarray(a * d2, (a + 1) * d2);
      let c = 0;
      let best = f(row[4] * row[5]);
      for (let k = 1; k < d2 - 5; k++) {
        const s = f(row[4] * row[5 + k]);
        if (s > best) { best = s; c = k; }
      }
      classes[a] = c;
      scores[a] = best;
      if (grid === null) {
        boxes.push(corners(row[0], row[1], row[2], row[3]));
      } else { // grid offsets and log sizes, in float32 as numpy
        const [x, y, s] = grid[a];
        const size = (v) => f(f(Math.exp(Math.min(v, 20))) * s);
        boxes.push(corners(f(f(row[0] + x) * s), f(f(row[1] + y) * s), size(row[2]),
          size(row[3])));
      }
    } else { // end2end [K, 6]: x1, y1, x2, y2, score, class
      const row = p.subarray(a * d2, (a + 1) * d2);
      scores[a] = row[4];
      classes[a] = row[4] > 0 ? Math.max(Math.trunc(row[5]), 0) : 0; // a zero score: class 0
      boxes.push([row[0], row[1], row[2], row[3]]);
    }
  }
  return { boxes, classes, scores, selected: name === "end2end" };
}

/**
 * The candidates of a picodet head (explainer.detection_formats' _decode_picodet): `outputs`
 * maps format.outputs' names to tensors; the candidates are the strides' cells in order.
 */
function picodetCandidates(outputs, spec, size) {
  const f = Math.fround;
  const bins = spec.reg_max + 1;
  const boxes = [];
  const classes = [];
  const scores = [];
  spec.strides.forEach((stride, level) => {
    const probabilities = outputs[spec.outputs.scores[level]];
    const distances = outputs[spec.outputs.boxes[level]].data;
    const C = probabilities.dims[probabilities.dims.length - 1];
    const cells = anchorGrid(size[0], size[1], [stride]);
    if (cells.length * C !== probabilities.data.length ||
        cells.length * 4 * bins !== distances.length) {
      throw new DetectorError(`format picodet: output ${JSON.stringify(spec.outputs.boxes[level])} ` +
        `does not have the ${cells.length} rows that stride ${stride} gives at ` +
        `${size[0]}x${size[1]}`);
    }
    cells.forEach(([x, y], a) => {
      const row = probabilities.data.subarray(a * C, (a + 1) * C);
      let c = 0;
      for (let k = 1; k < C; k++) if (row[k] > row[c]) c = k;
      classes.push(c);
      scores.push(row[c]);
      const side = (j) => { // softmax over the bins, then the expectation (float64)
        const d = distances.subarray((a * 4 + j) * bins, (a * 4 + j + 1) * bins);
        const top = Math.max(...d);
        const e = Array.from(d, (v) => Math.exp(v - top));
        const sum = e.reduce((u, v) => u + v, 0);
        return e.reduce((u, v, i) => u + (v / sum) * i, 0) * stride;
      };
      const cx = f(x + 0.5) * stride;
      const cy = f(y + 0.5) * stride;
      boxes.push([f(cx - side(0)), f(cy - side(1)), f(cx + side(2)), f(cy + side(3))]);
    });
  });
  return { boxes, classes: Int32Array.from(classes), scores: Float64Array.from(scores),
    selected: false };
}

/**
 * The candidates of a graph that selects its detections and gives them as three outputs
 * (explainer.detection_formats' _decode_bsl): `outputs` maps format.outputs' names to
 * tensors. A label is clipped to the format's classes; a zero score reads as class 0.
 */
function bslCandidates(outputs, spec) {
  const names = spec.outputs;
  const corners = outputs[names.boxes].data;
  const scores = Float64Array.from(outputs[names.scores].data);
  const labels = Array.from(outputs[names.labels].data, Number); // int64: BigInt values
  const classes = spec.classes || (labels.length ? Math.max(...labels) + 1 : 1);
  const boxes = [];
  for (let k = 0; k < scores.length; k++) boxes.push(Array.from(corners.subarray(4 * k, 4 * k + 4)));
  const best = labels.map((c, k) => (scores[k] > 0 ? Math.min(Math.max(c, 0), classes - 1) : 0));
  return { boxes, classes: Int32Array.from(best), scores, selected: true };
}

/**
 * Greedy class-aware NMS of the rows `rows` (indices into boxes/scores/classes): the kept
 * rows, best first, at most `limit`. Mirrors explainer.detection.nms in float64.
 */
export function nms(boxes, scores, classes, rows, iou, limit) {
  let span = 0;
  for (const r of rows) for (const v of boxes[r]) span = Math.max(span, Math.abs(v));
  span = span * 2 + 1;
  const shifted = rows.map((r) => boxes[r].map((v) => v + classes[r] * span));
  const area = (b) => Math.max(b[2] - b[0], 0) * Math.max(b[3] - b[1], 0);
  const areas = shifted.map(area);
  // highest score first; equal scores keep their anchor order (numpy's stable argsort)
  let order = rows.map((_, i) => i).sort((i, j) => scores[rows[j]] - scores[rows[i]] || i - j);
  const keep = [];
  while (order.length && keep.length < limit) {
    const best = order[0];
    keep.push(rows[best]);
    const b = shifted[best];
    order = order.slice(1).filter((o) => {
      const s = shifted[o];
      const w = Math.max(Math.min(b[2], s[2]) - Math.max(b[0], s[0]), 0);
      const h = Math.max(Math.min(b[3], s[3]) - Math.max(b[1], s[1]), 0);
      const inter = w * h;
      return inter / Math.max(areas[best] + areas[o] - inter, EPS) <= iou;
    });
  }
  return keep;
}

/**
 * One image's detections (Python's targets="topK"): candidates scoring >= conf (float32
 * comparison, as numpy does), class-aware NMS at IoU 0.45 (none where the graph selected
 * them), the best `top` of them. Each: {candidate, class_id, score, box}. `outputs`, `spec`
 * and `size` as for candidates.
 */
export function selectDetections(outputs, top, conf, spec, size) {
  const { boxes, classes, scores, selected } = candidates(outputs, spec, size);
  const threshold = Math.fround(conf);
  const rows = [];
  for (let a = 0; a < scores.length; a++) if (scores[a] >= threshold) rows.push(a);
  const kept = selected
    ? rows.map((r, i) => [r, i]).sort((x, y) => scores[y[0]] - scores[x[0]] || x[1] - y[1])
      .slice(0, top).map(([r]) => r)
    : nms(boxes, scores, classes, rows, IOU, top);
  return kept.map((a) => ({ candidate: a, class_id: classes[a], score: scores[a], box: boxes[a] }));
}

/**
 * The seed of one detection over one image's explained tensor `explained` (a Float32Array
 * with `dims`, batch first): [flat index, value] pairs, as explainer.detection_formats.
 * seed_row computes them for score "logit" (float64, then float32). Class logits (yolov8 with
 * format.explained "logits"): 1 at the class's logit. Otherwise the confidence s is a product
 * of the output's terms and the seed holds d log(s / (1 - s)) over each term.
 */
export function seedTerms(format, explained, dims, detection) {
  const { candidate: a, class_id: c } = detection;
  if (format.name === "yolov8" && format.explained === "logits") {
    return [[c * dims[2] + a, 1]];
  }
  const indices = format.name === "yolov8" ? [(4 + c) * dims[2] + a]
    : format.name === "yolov5" || format.name === "yolox"
      ? [a * dims[2] + 4, a * dims[2] + 5 + c]
    : format.name === "picodet" ? [a * dims[2] + c]
    : format.name === "boxes_scores_labels" ? [a]
    : [a * dims[2] + 4];
  const values = indices.map((i) => explained[i]);
  const s = values.reduce((x, y) => x * y, 1);
  const scale = 1 / Math.max(s * (1 - s), EPS);
  return indices.map((i, k) => [i, scale * values.reduce((x, y, j) => (j === k ? x : x * y), 1)]);
}

// ReLU(sum_c w_c A_c): Grad-CAM's w_c is the gradient's spatial mean, LayerCAM's is ReLU(g)
// at each position. activation, gradient: [1, C, h, w] tensors -> CAM [h * w].
function cam(activation, gradient, method) {
  const [, channels, h, w] = activation.dims;
  const n = h * w;
  const A = activation.data;
  const G = gradient.data;
  const out = new Float64Array(n);
  for (let c = 0; c < channels; c++) {
    let mean = 0;
    for (let i = 0; i < n; i++) mean += G[c * n + i];
    mean /= n;
    for (let i = 0; i < n; i++) {
      const weight = method === "gradcam" ? mean : Math.max(G[c * n + i], 0);
      out[i] += weight * A[c * n + i];
    }
  }
  return out.map((v) => Math.max(v, 0));
}

// Source taps of 1-D linear interpolation with half-pixel centres (align_corners=False).
function taps(src, dst) {
  return Array.from({ length: dst }, (_, i) => {
    const pos = Math.min(Math.max((i + 0.5) * (src / dst) - 0.5, 0), src - 1);
    const lo = Math.floor(pos);
    return { lo, hi: Math.min(lo + 1, src - 1), frac: pos - lo };
  });
}

function range(map) {
  let low = Infinity;
  let high = -Infinity;
  for (const v of map) { low = Math.min(low, v); high = Math.max(high, v); }
  return [low, high];
}

function normalize(map) {
  const [low, high] = range(map);
  const span = high - low;
  return map.map((v) => (span > 0 ? (v - low) / span : 0));
}

// A CAM [h * w] as a heatmap [H * W] in [0, 1]; a constant CAM (a layer the score does not
// reach) is all zeros.
function heatmap(map, h, w, H, W) {
  const out = new Float64Array(H * W);
  const [low, high] = range(map);
  if (high <= low) return out;
  const xs = taps(w, W);
  const ys = taps(h, H);
  for (let y = 0; y < H; y++) {
    const { lo, hi, frac } = ys[y];
    for (let x = 0; x < W; x++) {
      const t = xs[x];
      const row = (r) => map[r * w + t.lo] * (1 - t.frac) + map[r * w + t.hi] * t.frac;
      out[y * W + x] = row(lo) * (1 - frac) + row(hi) * frac;
    }
  }
  return normalize(out);
}

/**
 * A detector from its manifest and its two sessions (features.onnx, head.onnx), created by
 * the caller with the same `ort` (onnxruntime-node or onnxruntime-web).
 */
export function openDetector(ort, manifest, features, head, where = "bundle") {
  const layers = detectorLayers(manifest, where);
  const names = manifest.head;
  // the seed's shape past the batch: the explained tensor's (a dynamic batch runs as 1)
  const seedMeta = head.inputMetadata?.find?.((m) => m.name === names.seed);
  const seedShape = seedMeta?.shape?.map((d) => (typeof d === "number" ? d : 1)) ??
    [1, manifest.format.classes ?? manifest.num_classes, -1];
  if (seedShape.some((d) => d < 1)) {
    throw new DetectorError(`${where}: cannot read the shape of the head's seed input ` +
      `${JSON.stringify(names.seed)}`);
  }
  // the later layers' activations and gradients are head outputs (a cut tensor's: a feature)
  const fetches = [names.gradient, ...layers.slice(1).flatMap((l) => [l.tensor, l.gradient])]
    .filter((name) => !names.inputs.includes(name));
  return { ort, manifest, features, head, layers, seedShape, fetches };
}

/**
 * Explain one image (`image`: float32 [C * H * W] of an NCHW input, `shape` [1, C, H, W]):
 * {detections, heatmaps} with heatmaps a Float32Array [detections.length * H * W].
 */
export async function explainImage(detector, image, shape, { top = 1, conf = DEFAULT_CONF,
  method = DEFAULT_METHOD } = {}) {
  checkOptions({ top, conf, method });
  const { ort, manifest, features, head, layers, seedShape, fetches } = detector;
  const names = manifest.head;
  const [, , H, W] = shape;
  const cut = await features.run(
    { [manifest.input.name]: new ort.Tensor("float32", image, shape) });
  const feeds = Object.fromEntries(names.inputs.map((name) => [name, cut[name]]));
  const seedSize = seedShape.reduce((a, b) => a * b, 1);
  const format = manifest.format;
  const forward = await head.run(
    { ...feeds, [names.seed]: new ort.Tensor("float32", new Float32Array(seedSize), seedShape) },
    [...new Set([names.logits, ...formatOutputs(format)])]);
  const detections = selectDetections(forward, top, conf, format, [H, W]);
  const explained = forward[names.logits]; // E: the seed has its shape
  const shapeOfE = explained.dims;
  const heatmaps = new Float32Array(detections.length * H * W);
  for (const [j, detection] of detections.entries()) {
    const seed = new Float32Array(shapeOfE.reduce((a, b) => a * b, 1));
    for (const [i, v] of seedTerms(format, explained.data, explained.dims, detection)) {
      seed[i] += v;
    }
    const backward = await head.run(
      { ...feeds, [names.seed]: new ort.Tensor("float32", seed, shapeOfE) }, fetches);
    const value = (name) => (names.inputs.includes(name) ? cut[name] : backward[name]);
    const fused = new Float64Array(H * W);
    layers.forEach((layer, i) => {
      const activation = i === 0 ? cut[names.inputs[0]] : value(layer.tensor);
      const gradient = backward[i === 0 ? names.gradient : layer.gradient];
      const [, , h, w] = activation.dims;
      const map = heatmap(cam(activation, gradient, method), h, w, H, W);
      map.forEach((v, k) => { fused[k] += v; });
    });
    heatmaps.set(normalize(fused), j * H * W);
  }
  return { detections, heatmaps };
}

/**
 * Per-image results of explainImage as one batch: {heatmaps: Float32Array [B * K * H * W],
 * shape: [B, K, H, W]}, K the most detections of any image; missing columns are zeros.
 */
export function stackHeatmaps(results, H, W) {
  const k = Math.max(0, ...results.map((r) => r.detections.length));
  const heatmaps = new Float32Array(results.length * k * H * W);
  results.forEach((r, b) => heatmaps.set(r.heatmaps, b * k * H * W));
  return { heatmaps, shape: [results.length, k, H, W] };
}
