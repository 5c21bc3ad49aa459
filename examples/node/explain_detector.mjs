// Explain the best detections of each image with an onnxcam detector bundle in Node.js
// (onnxruntime-node), from the bundle's two graphs: features.onnx and head.onnx.
//
//   node examples/node/explain_detector.mjs BUNDLE_DIR INPUT.npy OUTPUT.npy
//        [--method gradcam|layercam] [--top K] [--conf C]
//
// The bundle: a detector (manifest.task "detect") of format yolov8 (output [N, 4+C, A]),
// yolov5 ([N, A, 5+C]), yolox (the same, boxes undecoded), end2end ([N, K, 6]),
// boxes_scores_labels (torchvision's three outputs) or picodet (per stride scores and box
// distributions), see ../web/detector.mjs. INPUT.npy: a float32
// NCHW batch, preprocessed as the manifest says. --method: the CAM method (default layercam,
// Python's default for detectors). --top K (default 1): explain each image's K best detections,
// as Python's Explainer(bundle).explain(x, targets="topK", conf=C,
// method=...); --conf C (default 0.25, Python's): the confidence threshold before the NMS.
// OUTPUT.npy: the heatmaps [B, K', H, W] float32 in [0, 1], K' the most detections any image
// has (at most K); an image with fewer has zero maps in its remaining columns. Prints, one JSON
// line per image, the list of its explained detections, best first: each one's candidate
// (anchor or row), class_id, score (its confidence) and box [x1, y1, x2, y2] in model-input
// pixels. The pipeline (candidates, class-aware NMS at IoU 0.45, one head backward per
// detection, the CAMs) is ../web/detector.mjs, shared with the browser page.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import ort from "onnxruntime-node";
import {
  DEFAULT_CONF, DEFAULT_METHOD, DetectorError, METHODS, checkOptions, detectorLayers,
  explainImage, openDetector, stackHeatmaps,
} from "../web/detector.mjs";
import { readNpy, writeNpy } from "./npy.mjs";

const USAGE = "usage: node explain_detector.mjs BUNDLE_DIR INPUT.npy OUTPUT.npy " +
  `[--method ${METHODS.join("|")}] [--top K] [--conf C]`;

function usage(message) {
  console.error(message);
  process.exit(2);
}

// Take "--name value" out of args: its value, else the fallback.
function option(args, name, fallback) {
  const at = args.indexOf(name);
  if (at < 0) return fallback;
  if (at + 1 >= args.length) usage(`${name} needs a value\n${USAGE}`);
  return args.splice(at, 2)[1];
}

async function main(argv) {
  const args = argv.slice(2);
  const method = option(args, "--method", DEFAULT_METHOD);
  const topText = option(args, "--top", "1");
  const confText = option(args, "--conf", String(DEFAULT_CONF));
  const top = /^\d+$/.test(topText) ? Number(topText) : NaN;
  const conf = confText.trim() === "" ? NaN : Number(confText);
  if (args.length !== 3) usage(USAGE);
  try {
    checkOptions({ top, conf, method });
  } catch (err) {
    usage(`${err.message}\n${USAGE}`);
  }
  const [bundleDir, inputPath, outputPath] = args;
  const manifest = JSON.parse(readFileSync(join(bundleDir, "manifest.json"), "utf8"));
  try {
    detectorLayers(manifest, bundleDir);
  } catch (err) {
    if (err instanceof DetectorError) usage(err.message);
    throw err;
  }
  const features = await ort.InferenceSession.create(join(bundleDir, "features.onnx"));
  const head = await ort.InferenceSession.create(join(bundleDir, "head.onnx"));
  const detector = openDetector(ort, manifest, features, head, bundleDir);

  const x = readNpy(inputPath);
  const [batch, , H, W] = x.shape;
  const imageSize = x.data.length / batch;
  const results = [];
  for (let b = 0; b < batch; b++) {
    const image = x.data.subarray(b * imageSize, (b + 1) * imageSize);
    const result = await explainImage(detector, image, [1, ...x.shape.slice(1)],
      { top, conf, method });
    console.log(JSON.stringify(result.detections));
    results.push(result);
  }
  const { heatmaps, shape } = stackHeatmaps(results, H, W);
  writeNpy(outputPath, heatmaps, shape);
}

main(process.argv).catch((err) => {
  console.error(err.message ?? err);
  process.exit(1);
});
