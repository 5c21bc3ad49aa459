// Explain each image's top detection with an onnxcam detector bundle in Node.js
// (onnxruntime-node), from the bundle's two graphs: features.onnx and head.onnx.
//
//   node examples/node/explain_detector.mjs BUNDLE_DIR INPUT.npy OUTPUT.npy
//        [--method gradcam|layercam]
//
// The bundle: a YOLOv8-format detector (manifest.task "detect", manifest.format.name "yolov8",
// output [N, 4+C, A]) whose explained tensor is the class logits [N, C, A]. INPUT.npy: a float32
// NCHW batch, preprocessed as the manifest says. OUTPUT.npy: the heatmaps [B, 1, H, W] float32
// in [0, 1]. Prints, one JSON line per image, the explained detection: its candidate (anchor),
// class_id, score (the class probability) and box [x1, y1, x2, y2] in model-input pixels.
//
// Per image: the features graph gives the cut tensors; the head with a zero seed gives the
// outputs, whose best (anchor, class) is the top detection; the head again, seeded one-hot at
// that detection's logit, gives every explained layer's gradient. Each layer's CAM is
// upsampled (bilinear, half-pixel centres) to the input size and min-max scaled; the layers'
// heatmaps are averaged and min-max scaled again.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import ort from "onnxruntime-node";
import { readNpy, writeNpy } from "./npy.mjs";

const METHODS = ["gradcam", "layercam"];

function usage(message) {
  console.error(message);
  process.exit(2);
}

// The best (anchor, class) of one image's output [1, 4+C, A]: each anchor's best class (the
// first of equal ones), the first anchor of the highest score (NMS keeps it first).
function topDetection(output) {
  const [, rows, anchors] = output.dims;
  const p = output.data;
  let best = { candidate: -1, class_id: -1, score: -Infinity };
  for (let a = 0; a < anchors; a++) {
    let c = 0;
    for (let k = 1; k < rows - 4; k++) {
      if (p[(4 + k) * anchors + a] > p[(4 + c) * anchors + a]) c = k;
    }
    const score = p[(4 + c) * anchors + a];
    if (score > best.score) best = { candidate: a, class_id: c, score };
  }
  const [cx, cy, w, h] = [0, 1, 2, 3].map((r) => p[r * anchors + best.candidate]);
  return { ...best, box: [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2] };
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

async function main(argv) {
  const args = argv.slice(2);
  const at = args.indexOf("--method");
  const method = at < 0 ? "gradcam" : args.splice(at, 2)[1];
  if (args.length !== 3 || !METHODS.includes(method)) {
    usage("usage: node explain_detector.mjs BUNDLE_DIR INPUT.npy OUTPUT.npy " +
      `[--method ${METHODS.join("|")}]`);
  }
  const [bundleDir, inputPath, outputPath] = args;
  const manifest = JSON.parse(readFileSync(join(bundleDir, "manifest.json"), "utf8"));
  const format = manifest.format ?? {};
  if (manifest.task !== "detect" || format.name !== "yolov8") {
    usage(`${bundleDir}: not a YOLOv8-format detector bundle (task ` +
      `${JSON.stringify(manifest.task)}, format ${JSON.stringify(format.name)}); a bundle ` +
      "with an explanation graph (a classifier, a segmenter) runs with explain.mjs");
  }
  if (format.explained !== "logits") {
    usage(`${bundleDir}: the explained tensor is ${JSON.stringify(format.explained)}, this ` +
      'script needs the class logits (manifest.format.explained "logits")');
  }
  const layers = manifest.layers ??
    [{ tensor: manifest.target.tensor, gradient: manifest.head.gradient }];
  if (manifest.input.layout !== "NCHW" || layers.some((l) => (l.layout ?? "NCHW") !== "NCHW")) {
    usage(`${bundleDir}: this script reads NCHW inputs and layers only`);
  }
  const head = manifest.head;
  const features = await ort.InferenceSession.create(join(bundleDir, "features.onnx"));
  const gradientHead = await ort.InferenceSession.create(join(bundleDir, "head.onnx"));
  // the seed's shape past the batch: the explained tensor's (a dynamic batch runs as 1)
  const seedMeta = gradientHead.inputMetadata.find((m) => m.name === head.seed);
  const seedShape = seedMeta.shape.map((d) => (typeof d === "number" ? d : 1));
  const seedSize = seedShape.reduce((a, b) => a * b, 1);
  // the later layers' activations and gradients are head outputs (a cut tensor's: a feature)
  const fetches = [head.gradient, ...layers.slice(1).flatMap((l) => [l.tensor, l.gradient])]
    .filter((name) => !head.inputs.includes(name));

  const x = readNpy(inputPath);
  const [batch, , H, W] = x.shape;
  const imageSize = x.data.length / batch;
  const heatmaps = new Float32Array(batch * H * W);
  for (let b = 0; b < batch; b++) {
    const image = x.data.subarray(b * imageSize, (b + 1) * imageSize);
    const cut = await features.run(
      { [manifest.input.name]: new ort.Tensor("float32", image, [1, ...x.shape.slice(1)]) });
    const feeds = Object.fromEntries(head.inputs.map((name) => [name, cut[name]]));
    const seed = new Float32Array(seedSize);
    const predictions = format.outputs.predictions;
    const forward = await gradientHead.run(
      { ...feeds, [head.seed]: new ort.Tensor("float32", seed, seedShape) }, [predictions]);
    const detection = topDetection(forward[predictions]);
    const anchors = seedShape[seedShape.length - 1];
    seed[detection.class_id * anchors + detection.candidate] = 1; // d logit[c, a]
    const backward = await gradientHead.run(
      { ...feeds, [head.seed]: new ort.Tensor("float32", seed, seedShape) }, fetches);
    const value = (name) => (head.inputs.includes(name) ? cut[name] : backward[name]);
    const fused = new Float64Array(H * W);
    layers.forEach((layer, i) => {
      const activation = i === 0 ? cut[head.inputs[0]] : value(layer.tensor);
      const gradient = backward[i === 0 ? head.gradient : layer.gradient];
      const [, , h, w] = activation.dims;
      const map = heatmap(cam(activation, gradient, method), h, w, H, W);
      map.forEach((v, j) => { fused[j] += v; });
    });
    heatmaps.set(normalize(fused), b * H * W);
    console.log(JSON.stringify(detection));
  }
  writeNpy(outputPath, heatmaps, [batch, 1, H, W]);
}

main(process.argv).catch((err) => {
  console.error(err.message ?? err);
  process.exit(1);
});
