"""Deployed models as converters write them: onnxcam against the source framework's Grad-CAM.

The corpus (``tests/converter_corpus.py``) holds ONNX files from tf2onnx (Keras 3), torch.onnx
(dynamo and TorchScript, timm and Hugging Face models), onnxslim, float16 conversion and int8
QDQ quantization, each with the Grad-CAM its source framework computes by its own autograd. An
entry is built into ``build/converters`` the first time a test asks for it
(``ONNXCAM_CONVERTER_CORPUS`` to choose another folder; ``ONNXCAM_CONVERTER_FULL=1`` adds the
slowest exports) and reused while it exists. This module does not import torch: where torch
is missing, the entries already built are tested and the others skip.

For every entry ``export_onnx`` runs with the automatic target and the raw CAMs
(``Explanation.cams``) of the reference classes are compared with the reference:

* float32 graphs (converters' outputs and their onnxslim rewrites): relative L2 error at most
  1e-4 for every map, and :func:`exporters.check_gradients` passes;
* float16 and int8 graphs are explained as they run (their own activations and gradients, the
  reference classes) and compared with a reference through the same graph: the activation the
  bundle's features graph computed on this CPU, and the gradient of the model's own head from
  that tensor by an independent autodiff (``onnx-ad``, float64, straight-through through
  Quantize/DequantizeLinear; see :func:`same_graph_cams`), with the tolerances of the float32
  graphs. Their maps' Pearson correlation with the float32 reference is recorded, not bounded:
  it is a property of the quantization, and ONNX Runtime's int8 kernels differ by CPU (VNNI or
  not), so no bound on it holds on every CPU;
* ViT/DeiT (token transformers): ``target="auto"`` picks the patch embedding, the only spatial
  tensor, and the CAM there is compared with the source framework's (every transformer block
  is in the head); targets at token tensors (the reference's last-block ``norm1``) are next.
  Swin's NHWC stage outputs are spatial and compared like the CNNs.
* a ViT after ONNX Runtime's transformer optimizer has com.microsoft fused ops without gradient
  rules (next): it must fail with ``MissingGradientRule`` naming the op and its node.

A markdown table of the results is written to ``build/converter_corpus.md``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import converter_corpus as corpus  # noqa: E402
from locks import file_lock  # noqa: E402

from explainer import check_gradients  # noqa: E402
from exporters import OnnxExportError, candidate_layers, export_onnx  # noqa: E402
from exporters.autodiff import MissingGradientRule  # noqa: E402

pytestmark = pytest.mark.slow

#: Largest relative L2 error of a float32 map against the source framework. A map above it
#: passes when onnxcam is within max(MAX_REL_L2, ARBITRATION_FACTOR x the source's own float32
#: distance) of the source framework's float64 Grad-CAM (``cams64``): ReLU(sum) maps of a
#: non-top class can cancel so much that float32 itself cannot resolve them (Keras ResNet50:
#: TensorFlow float32 is 1.5e-4 from float64 on one map).
MAX_REL_L2 = 1e-4
ARBITRATION_FACTOR = 3.0
FULL = os.environ.get("ONNXCAM_CONVERTER_FULL", "") not in ("", "0")
CORPUS_DIR = Path(os.environ.get("ONNXCAM_CONVERTER_CORPUS", corpus.DEFAULT_DIR))
REPORT = corpus.ROOT / "build" / "converter_corpus.md"
HAS_TORCH = importlib.util.find_spec("torch") is not None
NAMES = list(corpus.ENTRIES)

_rows: list[dict] = []


def relative_l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """||a - b|| / ||b|| per map over the last two axes (0 when both maps are zero)."""
    diff = np.sqrt(((a.astype(np.float64) - b) ** 2).sum(axis=(-2, -1)))
    norm = np.sqrt((b.astype(np.float64) ** 2).sum(axis=(-2, -1)))
    return np.where((norm == 0) & (diff == 0), 0.0, diff / np.maximum(norm, 1e-12))


def correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation per map (1 when both maps are constant and equal)."""
    a = a.reshape(*a.shape[:-2], -1).astype(np.float64)
    b = b.reshape(*b.shape[:-2], -1).astype(np.float64)
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    same = (na == 0) & (nb == 0)
    return np.where(same, 1.0, (a * b).sum(-1) / np.maximum(na * nb, 1e-300))


@pytest.fixture(scope="session")
def corpus_dir() -> dict:
    """The corpus, built lazily: {"dir": path, "errors": {entry: why}, "times": {...}}.

    An entry (and its parent) is built the first time a test asks for it (:func:`_entry`), so
    running one test builds one entry; the Keras entries are built together, by one
    TensorFlow subprocess.
    """
    return {"dir": CORPUS_DIR, "errors": {}, "times": {}}


def _build_missing(corpus_dir: dict, name: str) -> None:
    """Build ``name`` (its parent first) unless it is built; failures go to ``errors``."""
    errors, times, folder = corpus_dir["errors"], corpus_dir["times"], corpus_dir["dir"]
    if name in errors or corpus.is_built(folder, name):
        return
    entry = corpus.ENTRIES[name]
    if entry.parent:
        _build_missing(corpus_dir, entry.parent)
        parent_error = errors.get(entry.parent)
        if parent_error is not None:
            skip = "skip: " if parent_error.startswith("skip") else ""
            errors[name] = f"{skip}parent {entry.parent}: {parent_error}"
            return
    if not HAS_TORCH:
        errors[name] = (f"skip: {name} is not built in {folder} and torch is not installed here "
                        "(build it with `python tests/converter_corpus.py`)")
        return
    if entry.family != "keras":
        try:
            times.update(corpus.build(folder, [name]))
        except Exception as err:
            errors[name] = f"building {name} failed: {type(err).__name__}: {err}"
        return
    keras = [n for n in corpus.selected(None, full=FULL)
             if corpus.ENTRIES[n].family == "keras" and not corpus.is_built(folder, n)]
    keras += [] if name in keras else [name]
    if corpus.keras_python() is None:
        for n in keras:
            errors[n] = ("skip: the tf2onnx entries need the TensorFlow environment .venv-tf "
                         "(`make venv-tf`; it could not be built or is missing)")
        return
    t0 = time.perf_counter()
    try:
        times.update(corpus.build(folder, keras))
    except Exception as err:  # each entry's test reports it
        for n in keras:
            errors[n] = f"building the Keras entries failed: {err}"
    times["keras (all)"] = time.perf_counter() - t0


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if not _rows:
        return
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "| entry | converter | source layer | auto target tensor | shape | export s | "
        "build s | bundle s | max rel L2 | min corr | check_gradients |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in _rows:
        lines.append("| " + " | ".join(str(r.get(k, "")) for k in (
            "entry", "converter", "source_layer", "target", "shape", "export_s", "build_s",
            "bundle_s", "max_rel_l2", "min_corr", "gradients")) + " |")
    REPORT.write_text("\n".join(lines) + "\n")
    (REPORT.with_suffix(".json")).write_text(json.dumps(_rows, indent=1))


def _entry(corpus_dir: dict, name: str) -> dict:
    entry = corpus.ENTRIES[name]
    if entry.full_only and not FULL:
        pytest.skip(f"{name} is a slow export: set ONNXCAM_CONVERTER_FULL=1")
    if not corpus.is_built(corpus_dir["dir"], name):
        # parallel workers (or pytest runs) build an entry once: the others wait, then load it
        with file_lock(Path(corpus_dir["dir"]) / ".lock"):
            _build_missing(corpus_dir, name)
    error = corpus_dir["errors"].get(name)
    if error is not None:
        if error.startswith("skip:") or "skip: " in error:
            pytest.skip(error)
        pytest.fail(error)
    return corpus.load_entry(corpus.entry_dir(corpus_dir["dir"], name))


def _explain(data: dict, explanation_graph: bool = True):
    from explainer import Explainer

    t0 = time.perf_counter()
    bundle = export_onnx(data["model"])
    seconds = time.perf_counter() - t0
    explainer = Explainer(bundle, threads=2, explanation_graph=explanation_graph)
    explanation = explainer.explain(data["inputs"], targets=data["class_ids"])
    return bundle, explainer, explanation, seconds


def _row(data: dict, bundle, seconds: float, **extra) -> dict:
    meta = data["meta"]
    row = {
        "entry": meta["entry"], "converter": meta["converter"],
        "source_layer": meta["source_layer"],
        "target": f"`{bundle.manifest['target']['tensor']}`" if bundle else "",
        "shape": bundle.manifest["target"]["shape"] if bundle else "",
        "export_s": meta["export_s"], "build_s": meta.get("build_s", ""),
        "bundle_s": round(seconds, 2) if seconds else "",
    }
    row.update(extra)
    _rows.append(row)
    return row


def _tokens(name: str) -> bool:
    """ViT-style entries: the reference layer holds tokens (no spatial tensor but the patches)."""
    entry = corpus.ENTRIES[name]
    return entry.transformer and not entry.model.startswith(("swin", "timm-swin"))


FLOAT32 = [n for n in NAMES if not _tokens(n)
           and corpus.ENTRIES[n].exporter not in ("fp16", "int8", "ortopt")]
REDUCED = [n for n in NAMES if corpus.ENTRIES[n].exporter in ("fp16", "int8")]
TOKENS = [n for n in NAMES if _tokens(n) and corpus.ENTRIES[n].exporter != "ortopt"]
FUSED = [n for n in NAMES if corpus.ENTRIES[n].exporter == "ortopt"]


def _compare(explanation, data: dict, cams: str = "cams") -> tuple[str, np.ndarray | None]:
    """Relative L2 to the reference, float64-arbitrated above :data:`MAX_REL_L2`.

    Returns:
        (text for the table, per-map failures mask or None when every map passes).
    """
    errors = relative_l2(explanation.cams, data[cams])
    above = errors > MAX_REL_L2
    text = f"{errors.max():.1e}"
    if not above.any():
        return text, None
    key64 = cams.replace("cams", "cams64")
    if key64 not in data:
        return text, above
    ours64 = relative_l2(explanation.cams, data[key64])
    source64 = relative_l2(data[cams], data[key64])
    text += (f"; {int(above.sum())} map(s) above {MAX_REL_L2:g}: to float64 ours "
             f"{ours64[above].max():.1e} / source float32 {source64[above].max():.1e}")
    allowed = np.maximum(MAX_REL_L2, ARBITRATION_FACTOR * source64)
    failed = above & (ours64 > allowed)
    return text, failed if failed.any() else None


def _matches_source(data: dict, bundle, explainer, explanation, seconds: float) -> None:
    """CAMs equal to the source framework's (float64-arbitrated), gradient self-check passed,
    and the row of the README table recorded."""
    text, failed = _compare(explanation, data)
    top1 = data["class_ids"][:, :1]
    report = check_gradients(bundle, data["inputs"], class_ids=top1, explainer=explainer)
    _row(data, bundle, seconds, max_rel_l2=text,
         gradients=f"{report.max_error:.1e} ({'pass' if report.passed else 'FAIL'})")
    assert failed is None, text
    assert report.passed, str(report)


@pytest.mark.parametrize("name", FLOAT32)
def test_float32_matches_source_framework(corpus_dir: dict, name: str) -> None:
    data = _entry(corpus_dir, name)
    bundle, explainer, explanation, seconds = _explain(data)
    assert explanation.cams.shape == data["cams"].shape, (
        f"auto target {bundle.manifest['target']['tensor']} is not the source layer "
        f"{data['meta']['source_layer']}"
    )
    _matches_source(data, bundle, explainer, explanation, seconds)


# --------------------------------------------------------------------------- same-graph reference
# A reduced-precision graph's map differs from the float32 model's by what the quantization
# does, and ONNX Runtime's int8 kernels differ per instruction set, so the float32 maps are no
# yardstick for it. The reference below goes through the same graph instead: the activation
# the bundle's features graph computed (on this CPU), and the gradient of the model's own
# head, from the target tensor to the explained logits, by onnx-ad (an independent autodiff)
# evaluated by ONNX's numpy reference runtime. Quantize/DequantizeLinear pairs get the
# straight-through gradient (the convention onnxcam's rules document): each pair becomes
# ``x * mask + delta`` with ``mask`` 1 where ``x`` does not saturate and ``delta`` the constant
# that makes the value the pair's own output, so forward values are the quantized graph's.


def _along(value: np.ndarray, axis: int, rank: int) -> np.ndarray:
    """A per-axis (1-d) quantization parameter shaped to broadcast along ``axis``."""
    if value.ndim == 1 and value.size > 1:
        shape = [1] * rank
        shape[axis % rank] = -1
        return value.reshape(shape)
    return value


def _dequantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None = None,
                axis: int = 1) -> np.ndarray:
    """``(x - zero_point) * scale`` in the scale's dtype (ONNX DequantizeLinear)."""
    zero = np.zeros((), np.int64) if zero_point is None else zero_point.astype(np.int64)
    q = x.astype(np.int64) - _along(zero, axis, x.ndim)
    return (q.astype(scale.dtype) * _along(scale, axis, x.ndim)).astype(scale.dtype)


class DequantizeLinear(OpRun):
    """:func:`_dequantize` for ONNX's numpy reference runtime (it has no opset-13 one)."""

    op_domain = ""

    def _run(self, x, scale, zero_point=None, axis=1, block_size=0, output_dtype=None):
        return (_dequantize(x, scale, zero_point, axis),)


class QuantizeLinear(OpRun):
    """``saturate(round_half_even(x / scale) + zero_point)`` for the numpy reference runtime."""

    op_domain = ""

    def _run(self, x, scale, zero_point=None, axis=1, saturate=1, block_size=0, output_dtype=0,
             precision=0):
        zero = np.zeros((), np.uint8) if zero_point is None else zero_point
        info = np.iinfo(zero.dtype)
        q = np.rint(x / _along(scale, axis, x.ndim)) + _along(zero.astype(np.int64), axis,
                                                                x.ndim)
        return (np.clip(q, info.min, info.max).astype(zero.dtype),)


_QDQ = [DequantizeLinear, QuantizeLinear]
_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)


def _head_of(path: Path, tensor: str, output: str) -> onnx.ModelProto:
    """The model's own subgraph from ``tensor`` to ``output`` (onnx's extractor)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    return onnx.utils.Extractor(model).extract_model([tensor], [output])


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _straight_through(head: onnx.ModelProto, activation: np.ndarray) -> onnx.ModelProto:
    """``head`` without Quantize/DequantizeLinear: weights dequantized into constants, each
    activation pair turned into ``x * mask + delta`` (values of ``head`` at ``activation``)."""
    graph = head.graph
    constants = _constants(graph)
    producers = {o: n for n in graph.node for o in n.output}
    pairs = [n for n in graph.node if n.op_type == "DequantizeLinear"
             and n.input[0] not in constants]
    values: dict[str, np.ndarray] = {}
    if pairs:  # the forward values: what each pair reads and what it gives
        probe = onnx.ModelProto()
        probe.CopyFrom(head)
        del probe.graph.output[:]
        names = [t for n in pairs for t in (producers[n.input[0]].input[0], n.output[0])]
        probe.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in names)
        run = ReferenceEvaluator(probe, new_ops=_QDQ)
        values = dict(zip(names, run.run(None, {graph.input[0].name: activation}), strict=True))
    nodes, added = [], []
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            continue  # only its DequantizeLinear consumers read it (checked below)
        if node.op_type != "DequantizeLinear":
            nodes.append(node)
            continue
        inputs = [constants.get(t) if t else None for t in node.input]
        if inputs[0] is not None:  # a quantized weight or bias: its float value
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            weight = _dequantize(*inputs, axis=axis)
            added.append(numpy_helper.from_array(weight, node.output[0]))
            continue
        quantize = producers.get(node.input[0])
        if quantize is None or quantize.op_type != "QuantizeLinear":
            raise NotImplementedError(f"DequantizeLinear {node.name!r} reads no QuantizeLinear")
        x, y = quantize.input[0], node.output[0]
        scale = constants[quantize.input[1]]
        zero = constants[quantize.input[2]] if len(quantize.input) > 2 and quantize.input[2] \
            else np.zeros((), np.uint8)
        if scale.size != 1:
            raise NotImplementedError(f"per-axis activation quantization at {x!r}")
        info = np.iinfo(zero.dtype)
        level = values[x] / scale + zero.astype(np.float64)
        mask = ((level > info.min - 0.5) & (level < info.max + 0.5)).astype(values[y].dtype)
        delta = values[y] - values[x] * mask
        added += [numpy_helper.from_array(mask, f"{y}__mask"),
                  numpy_helper.from_array(delta, f"{y}__delta")]
        nodes += [helper.make_node("Mul", [x, f"{y}__mask"], [f"{y}__masked"]),
                  helper.make_node("Add", [f"{y}__masked", f"{y}__delta"], [y])]
    read = {t for n in nodes for t in n.input}
    stray = [n.output[0] for n in graph.node if n.op_type == "QuantizeLinear"
             and n.output[0] in read]
    if stray:
        raise NotImplementedError(f"QuantizeLinear outputs {stray} are read by other ops")
    out = helper.make_model(
        helper.make_graph(nodes, graph.name, list(graph.input), list(graph.output),
                          [*graph.initializer, *added]),
        opset_imports=head.opset_import,
    )
    out.ir_version = head.ir_version
    return out


def _as_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every floating-point constant, cast and graph input/output of ``model`` in float64."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    for init in graph.initializer:
        if init.data_type in _FLOATS:
            value = numpy_helper.to_array(init).astype(np.float64)
            init.CopyFrom(numpy_helper.from_array(value, init.name))
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i in _FLOATS:
                attr.i = TensorProto.DOUBLE
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in _FLOATS:
                attr.t.CopyFrom(numpy_helper.from_array(
                    numpy_helper.to_array(attr.t).astype(np.float64), attr.t.name))
    for value in [*graph.input, *graph.output]:
        if value.type.tensor_type.elem_type in _FLOATS:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    return out


def _static(model: onnx.ModelProto, shape: tuple[int, ...]) -> onnx.ModelProto:
    """``model`` with its input fixed to ``shape`` (onnx-ad's Conv rule needs static shapes)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for dim, size in zip(out.graph.input[0].type.tensor_type.shape.dim, shape, strict=True):
        dim.Clear()
        dim.dim_value = int(size)
    for value in out.graph.output:
        value.type.tensor_type.ClearField("shape")
    del out.graph.value_info[:]
    return out


def same_graph_gradients(path: Path, tensor: str, output: str, activation: np.ndarray,
                         class_ids: np.ndarray, float64: bool) -> np.ndarray:
    """Gradients [B, K, ...] of ``output[b, class_ids[b, k]]`` with respect to ``tensor`` set
    to ``activation``, through the model's own head (float64, or the head's own precision)."""
    import onnx_ad

    head = _straight_through(_head_of(path, tensor, output), activation)
    x = activation.astype(np.float64) if float64 else activation
    head = _static(_as_float64(head) if float64 else head, activation.shape)
    (logits,) = ReferenceEvaluator(head).run(None, {tensor: x})
    adjoint = onnx_ad.reverse(head, inputs=[tensor], outputs=[output], layout="onnx")
    (seed_name,) = [i.name for i in adjoint.graph.input if i.name != tensor]
    batch, k = class_ids.shape
    seed = np.zeros((*logits.shape, k), logits.dtype)
    for j in range(k):
        seed[np.arange(batch), class_ids[:, j], j] = 1
    (gradient,) = ReferenceEvaluator(adjoint).run([adjoint.graph.output[-1].name],
                                                  {tensor: x, seed_name: seed})
    return np.moveaxis(gradient, -1, 1)


def same_graph_cams(data: dict, bundle, explainer) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM through the same graph: (float64 maps, the head's own precision maps).

    The activation is what the bundle's features graph gives on this CPU. The float64 maps
    take the gradient and the weighted sum in float64; the other ones the gradient in the
    head's own precision (float16 for a float16 graph) and the weighted sum in float32, as
    the explainer computes it: how far such a graph resolves a map, the float64 arbitration
    of :func:`_compare`.
    """
    target = bundle.manifest["target"]
    activation = explainer.runner.run_features(data["inputs"])[target["tensor"]]
    output = explainer.spec.head.logits
    producer = {o: n for n in bundle.head.graph.node for o in n.output}.get(output)
    if producer is not None and producer.op_type == "Cast" and output not in {
            o for n in onnx.load(str(data["model"]), load_external_data=False).graph.node
            for o in n.output}:
        output = producer.input[0]  # the float16 logits before the export's Cast to float32
    maps = []
    for float64 in (True, False):
        gradient = same_graph_gradients(data["model"], target["tensor"], output,
                                        activation, data["class_ids"], float64)
        a = activation.astype(np.float64 if float64 else np.float32)
        g = gradient.astype(np.float64 if float64 else np.float32)
        if target["layout"] == "NHWC":
            a, g = np.moveaxis(a, -1, 1), np.moveaxis(g, -1, 2)
        weights = g.mean(axis=(-2, -1))  # [B, K, C]
        maps.append(np.maximum(np.einsum("bkc,bchw->bkhw", weights, a), 0))
    return maps[0], maps[1]


def _cpu() -> str:
    """The CPU's model name and its VNNI flags (ONNX Runtime's int8 kernels depend on them)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                  if line.startswith("model name")), platform.machine())
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines()
                  if line.startswith("flags")), [])
    vnni = [f for f in flags if "vnni" in f]
    return f"{model} ({', '.join(vnni) if vnni else 'no VNNI'})"


@pytest.mark.parametrize("name", REDUCED)
def test_reduced_precision_matches_its_own_graph(corpus_dir: dict, name: str) -> None:
    """float16 and int8 QDQ graphs: the maps equal Grad-CAM through the same graph (see
    :func:`same_graph_cams`) within :data:`MAX_REL_L2`, or within :data:`ARBITRATION_FACTOR`
    times that graph's own precision where it is coarser. Their correlation with the float32
    model's maps and the top-1 agreement are recorded in the report, not asserted."""
    pytest.importorskip("onnx_ad")
    from explainer import Explainer

    data = _entry(corpus_dir, name)
    # the two graphs: the map is made from the very activation the reference reads
    bundle, explainer, explanation, seconds = _explain(data, explanation_graph=False)
    assert explanation.cams.shape == data["cams"].shape
    cams64, cams_own = same_graph_cams(data, bundle, explainer)
    errors = relative_l2(explanation.cams, cams64)
    own = relative_l2(cams_own, cams64)
    failed = errors > np.maximum(MAX_REL_L2, ARBITRATION_FACTOR * own)
    text = f"{errors.max():.1e} (same graph, float64; its own precision {own.max():.1e})"
    # the one-run explanation graph: ONNX Runtime may fuse the int8 ops around the cut
    # differently there (an activation a quantization step apart), so it is recorded only
    in_graph = Explainer(bundle, threads=2).explain(data["inputs"], targets=data["class_ids"])
    corr = correlation(explanation.cams, data["cams"])
    agree = explanation.logits.argmax(1) == data["class_ids"][:, 0]
    top1 = corr[agree, 0]
    _row(data, bundle, seconds, max_rel_l2=text,
         min_corr=f"{top1.min() if top1.size else float('nan'):.4f} (all maps {corr.min():.4f})",
         gradients=f"top-1 agrees on {int(agree.sum())}/{agree.size}",
         float32_correlation=corr.round(4).tolist(),
         float32_rel_l2=relative_l2(explanation.cams, data["cams"]).round(4).tolist(),
         explanation_graph_rel_l2=float(f"{relative_l2(in_graph.cams, cams64).max():.2e}"),
         cpu=_cpu())
    assert not failed.any(), (text, errors)


@pytest.mark.parametrize("name", TOKENS)
def test_vit_tokens_match_source_framework(corpus_dir: dict, name: str) -> None:
    """ViT/DeiT: the auto target is the last block's first LayerNorm (``norm1``), its tokens
    on their grid with the prefix tokens dropped, as pytorch-grad-cam recommends; compared
    with the source framework's Grad-CAM there, with the same reshape."""
    data = _entry(corpus_dir, name)
    bundle, explainer, explanation, seconds = _explain(data)
    target = bundle.manifest["target"]
    assert target["layout"] == "NLC", target
    assert explanation.cams.shape == data["cams"].shape, target
    _matches_source(data, bundle, explainer, explanation, seconds)


@pytest.mark.parametrize("name", TOKENS)
def test_vit_at_the_patch_embedding(corpus_dir: dict, name: str) -> None:
    """The same models explained from the patch embedding (an explicit target: the only
    spatial tensor), through every block of the head, against the source framework there."""
    data = _entry(corpus_dir, name)
    from explainer import Explainer

    patch = next(c for c in candidate_layers(data["model"]) if c.layout == "NCHW")
    bundle = export_onnx(data["model"], target=patch.tensor)
    explanation = Explainer(bundle).explain(data["inputs"], targets=data["class_ids"])
    assert explanation.cams.shape == data["cams_patch"].shape
    text, failed = _compare(explanation, data, "cams_patch")
    assert failed is None, text


@pytest.mark.parametrize("name", FUSED)
def test_fused_transformer_ops_raise_missing_gradient_rule(corpus_dir: dict, name: str) -> None:
    """ONNX Runtime's transformer optimizer fuses com.microsoft ops no rule differentiates yet
    (next): a given target fails with MissingGradientRule naming the op and its node, and the
    automatic target finds no differentiable candidate."""
    data = _entry(corpus_dir, name)
    candidates = candidate_layers(data["model"])
    blocked = [c for c in candidates if c.unsupported_ops]
    assert blocked, "expected ops without a gradient rule"
    first = blocked[0]
    with pytest.raises(MissingGradientRule) as info:
        export_onnx(data["model"], target=first.tensor)
    error = info.value
    assert error.node_name and error.node_name in str(error)
    assert f"com.microsoft::{error.op_type}'" in str(error)
    assert any(u.startswith(f"{error.op_type} (") for u in first.unsupported_ops)
    with pytest.raises(OnnxExportError, match="no spatial activation"):
        export_onnx(data["model"])
    ops = sorted({u.split(" (")[0] for c in blocked for u in c.unsupported_ops})
    _row(data, None, 0.0, max_rel_l2="next",
         gradients=f"MissingGradientRule: com.microsoft::{error.op_type} (node "
                   f"{error.node_name}); ops without rules: {', '.join(ops)}")


def test_keras_vgg16_explains_from_the_command_line(corpus_dir: dict, tmp_path) -> None:
    """A freshly made Keras VGG16 with a Dense/Softmax head, converted by tf2onnx:
    ``onnxcam explain model.onnx photo.jpg`` writes its overlay (auto target, exit 0)."""
    from PIL import Image

    from explainer.cli import main

    data = _entry(corpus_dir, "tf2onnx-vgg16")
    pixels = data["inputs"][0]
    pixels = (pixels - pixels.min()) / (np.ptp(pixels) or 1.0) * 255  # any photo will do
    photo = tmp_path / "photo.jpg"
    Image.fromarray(pixels.astype(np.uint8)).save(photo)
    out = tmp_path / "out"
    assert main(["explain", str(data["model"]), str(photo), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    (row,) = summary["images"]
    assert row["status"] == "ok" and (out / row["overlay"]).is_file()
