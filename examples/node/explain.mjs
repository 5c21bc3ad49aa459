// Explain a batch with an onnxcam bundle's explanation graph in Node.js (onnxruntime-node).
//
//   node examples/node/explain.mjs BUNDLE_DIR INPUT.npy OUTPUT.npy [--top-k K] [--method NAME]
//
// INPUT.npy: a float32 batch in the model's input layout, preprocessed as the bundle's
// manifest says. OUTPUT.npy: the heatmaps [B, K, H, W] float32 in [0, 1]. Prints the explained
// class ids (and probabilities) of each image as JSON, one line per image.
//
// One session run per batch: the graph selects the targets (top_k | least | class_ids), runs
// the gradient head for every (image, target) pair, computes the CAM method chosen by its
// index in manifest.explanation.methods (default: the first, gradcam), and returns finished
// heatmaps.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import ort from "onnxruntime-node";
import { readNpy, writeNpy } from "./npy.mjs";

async function main(argv) {
  const args = argv.slice(2);
  const option = (flag, fallback) => {
    const at = args.indexOf(flag);
    if (at < 0) return fallback;
    const value = args[at + 1];
    args.splice(at, 2);
    return value;
  };
  const topK = Number(option("--top-k", 1));
  const method = option("--method", null);
  if (args.length !== 3 || !(topK >= 1)) {
    console.error("usage: node explain.mjs BUNDLE_DIR INPUT.npy OUTPUT.npy [--top-k K] " +
      "[--method NAME]");
    process.exit(2);
  }
  const [bundleDir, inputPath, outputPath] = args;
  const manifest = JSON.parse(readFileSync(join(bundleDir, "manifest.json"), "utf8"));
  const graph = manifest.explanation;
  if (!graph) throw new Error(`${bundleDir}: no explanation graph (schema ${manifest.schema_version})`);
  const methods = graph.methods ?? [graph.method];
  const index = method === null ? 0 : methods.indexOf(method);
  if (index < 0) {
    console.error(`method ${JSON.stringify(method)} is not in this explanation graph; ` +
      `choose one of ${methods.join(", ")}`);
    process.exit(2);
  }
  // weights.onnx.data is found next to the graph file
  const session = await ort.InferenceSession.create(join(bundleDir, graph.file));
  const x = readNpy(inputPath);
  const feeds = {
    [graph.inputs.input]: new ort.Tensor("float32", x.data, x.shape),
    [graph.inputs.top_k]: new ort.Tensor("int64", BigInt64Array.from([BigInt(topK)]), [1]),
    [graph.inputs.least]: new ort.Tensor("int64", BigInt64Array.from([0n]), [1]),
    [graph.inputs.class_ids]: new ort.Tensor("int64", new BigInt64Array(0), [1, 0]),
  };
  if (graph.inputs.method) {
    feeds[graph.inputs.method] = new ort.Tensor("int64", BigInt64Array.from([BigInt(index)]), [1]);
  }
  const out = await session.run(feeds);
  const heatmaps = out[graph.outputs.heatmaps];
  writeNpy(outputPath, heatmaps.data, heatmaps.dims);
  const ids = out[graph.outputs.target_ids];
  const probabilities = out[graph.outputs.probabilities];
  const [batch, targets] = ids.dims;
  for (let b = 0; b < batch; b++) {
    const row = [];
    for (let j = 0; j < targets; j++) {
      row.push({ class_id: Number(ids.data[b * targets + j]),
        probability: probabilities.data[b * targets + j] });
    }
    console.log(JSON.stringify(row));
  }
}

main(process.argv).catch((err) => {
  console.error(err.message ?? err);
  process.exit(1);
});
