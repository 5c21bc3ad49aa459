"""A corpus of real converter outputs, each with its source framework's own Grad-CAM.

Deployed ``.onnx`` files come from converters, not from onnxcam's torch front end. This module
builds such files from random-weight models and records, next to each one, the Grad-CAM the
source framework computes with its own autograd::

    python tests/converter_corpus.py [OUT_DIR] [--only NAME ...] [--full] [--list]

writes ``OUT_DIR/<entry>/`` (default ``build/converters``; entries already built are skipped):

* ``model.onnx`` (plus ``model.onnx.data`` when the converter writes external weights);
* ``inputs.npy``: scikit-image's ``chelsea`` and ``coffee`` resized to the model's input size
  and preprocessed the way the model expects (its own ``preprocess_input`` for Keras, the
  model's mean/std for timm);
* ``reference.npz``: ``cams`` [B, K, h, w] (``ReLU(sum_c mean_ij(dy/dA^c) A^c)`` with ``y``
  the pre-softmax logit), ``class_ids`` [B, K] (the top-1 class and class 7, or 8 when 7 is the
  top-1), ``logits`` [B, C] (pre-softmax) and ``meta`` (a JSON string: converter, framework
  versions, source layer, its layout, export time in seconds, build time); ``meta.json`` holds
  the same JSON.

Entries (``--list`` prints them):

* ``tf2onnx-*``: ``keras.applications`` models (Keras 3, random weights, their softmax heads,
  NHWC) converted by ``tf2onnx.convert.from_keras`` (opset 13). TensorFlow does not share an
  environment with torch here: this part runs in the separate ``.venv-tf`` (see the Makefile)
  as ``python tests/converter_corpus.py --keras-worker ...``, a subprocess of the builder.
  The reference is a ``tf.GradientTape`` Grad-CAM on ``keras.Model(model.input,
  [model.get_layer(L).output, model.output])`` with the classifier's activation switched to
  ``linear`` (same weights) so that the pre-softmax logits are differentiated. ``L`` is the
  last layer with a spatial output (what onnxcam's ``target="auto"`` should pick).
* ``timm-<model>-dynamo`` / ``timm-<model>-torchscript``: timm models (random weights,
  BatchNorm recalibrated) exported by plain ``torch.onnx.export`` of the model, with the dynamo
  exporter and with the TorchScript one (``dynamo=False``, opset 17). Reference: torch autograd
  at the output of the last stage before global pooling; for ViT/DeiT at the last block's
  ``norm1`` with the prefix tokens dropped and the patch tokens reshaped to a grid (as
  pytorch-grad-cam recommends; onnxcam cannot target token tensors yet).
* ``hf-vit-torchscript``: a Hugging Face ``ViTForImageClassification`` from a small
  ``ViTConfig`` (random weights) exported by torch.onnx.
* ``timm-vit_small_patch16_224-torchscript-ortopt``: that ViT after ONNX Runtime's transformer
  optimizer (``onnxruntime.transformers.optimizer``, ``model_type="vit"``), which fuses
  ``com.microsoft`` ``SkipLayerNormalization`` and ``BiasGelu`` ops into it.
* ViT/DeiT entries also hold ``cams_patch`` (and ``cams64_patch``): Grad-CAM at the patch
  embedding (``patch_embed.proj``), their only spatial tensor and what ``target="auto"`` picks.
  Every reference also has ``cams64``: the same Grad-CAM by the source framework in float64
  (a float64 copy of the model), to arbitrate maps float32 cannot resolve.
* variants of three CNNs (``tf2onnx-mobilenetv2``, ``timm-resnet50-dynamo``,
  ``timm-efficientnet_b0-torchscript``): ``-slim`` (onnxslim), ``-fp16``
  (``onnxconverter_common.float16``, ``keep_io_types=True``) and ``-int8``
  (``onnxruntime.quantization.quantize_static``, QDQ, calibrated on the two images and their
  mirror images). They reuse their parent's reference.

The default set is every entry not marked ``full_only``; ``--full`` builds those too. No entry is
marked at present: from scratch the whole corpus builds in about 5 minutes on 2 cores (Keras
entries 3-30 s each, timm exports 3-20 s, variants 0.2-4 s). Models are built with seeded
random weights only; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_DIR",
    "ENTRIES",
    "Entry",
    "build",
    "entry_dir",
    "keras_python",
    "load_entry",
]

log = logging.getLogger("converter_corpus")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / "build" / "converters"
FIXED_CLASS = 7
NUM_CLASSES = 1000


@dataclass(frozen=True)
class Entry:
    """One corpus entry.

    Attributes:
        name: folder name.
        family: ``"keras"``, ``"timm"``, ``"hf"`` or ``"variant"``.
        model: the source model name (keras application, timm name) or the parent entry.
        exporter: ``"tf2onnx"``, ``"dynamo"``, ``"torchscript"``, ``"onnxslim"``,
            ``"fp16"`` or ``"int8"``.
        size: input height and width.
        transformer: a transformer (its reference is at a token tensor).
        full_only: built only with ``--full``.
    """

    name: str
    family: str
    model: str
    exporter: str
    size: int = 224
    transformer: bool = False
    full_only: bool = False
    extra: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def parent(self) -> str | None:
        return self.model if self.family == "variant" else None


# keras application -> (module with preprocess_input, input size)
KERAS_MODELS: dict[str, tuple[str, int]] = {
    "VGG16": ("vgg16", 224),
    "ResNet50": ("resnet50", 224),
    "MobileNetV2": ("mobilenet_v2", 224),
    "MobileNetV3Small": ("mobilenet_v3", 224),
    "EfficientNetB0": ("efficientnet", 224),
    "DenseNet121": ("densenet", 224),
    "InceptionV3": ("inception_v3", 299),
    "Xception": ("xception", 299),
}
# timm model -> source layer (module path) of the reference
TIMM_MODELS: dict[str, str] = {
    "resnet50": "layer4",
    "efficientnet_b0": "bn2",
    "convnext_tiny": "stages.3",
    "regnetx_002": "s4",
    "mobilenetv3_large_100": "blocks",
    "vit_small_patch16_224": "blocks.11.norm1",
    "deit_tiny_patch16_224": "blocks.11.norm1",
    "swin_tiny_patch4_window7_224": "norm",
}
PATCH_LAYER = "patch_embed.proj"
TRANSFORMERS = {"vit_small_patch16_224", "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224"}
VARIANT_PARENTS = (
    "tf2onnx-mobilenetv2", "timm-resnet50-dynamo", "timm-efficientnet_b0-torchscript",
)


def _entries() -> dict[str, Entry]:
    entries: list[Entry] = []
    for model, (_, size) in KERAS_MODELS.items():
        entries.append(Entry(f"tf2onnx-{model.lower()}", "keras", model, "tf2onnx", size))
    for model in TIMM_MODELS:
        for exporter in ("dynamo", "torchscript"):
            name = f"timm-{model}-{exporter}"
            entries.append(Entry(name, "timm", model, exporter, 224, model in TRANSFORMERS))
    entries.append(Entry("hf-vit-torchscript", "hf", "ViTForImageClassification", "torchscript",
                         64, True))
    for parent in VARIANT_PARENTS:
        for exporter in ("onnxslim", "fp16", "int8"):
            suffix = {"onnxslim": "slim"}.get(exporter, exporter)
            entries.append(Entry(f"{parent}-{suffix}", "variant", parent, exporter))
    # a ViT as ONNX Runtime's transformer optimizer leaves it (com.microsoft fused ops)
    entries.append(Entry("timm-vit_small_patch16_224-torchscript-ortopt", "variant",
                         "timm-vit_small_patch16_224-torchscript", "ortopt", transformer=True))
    return {e.name: e for e in entries}


ENTRIES: dict[str, Entry] = _entries()


def entry_dir(out_dir: str | os.PathLike[str], name: str) -> Path:
    return Path(out_dir) / name


def is_built(out_dir: str | os.PathLike[str], name: str) -> bool:
    folder = entry_dir(out_dir, name)
    return all((folder / f).is_file() for f in ("model.onnx", "inputs.npy", "reference.npz"))


def load_entry(folder: str | os.PathLike[str]) -> dict:
    """``inputs``, ``cams``, ``class_ids``, ``logits`` arrays and the ``meta`` dict."""
    folder = Path(folder)
    with np.load(folder / "reference.npz") as ref:
        data = {k: ref[k] for k in ref.files}
    data["meta"] = json.loads(str(data["meta"]))
    data["inputs"] = np.load(folder / "inputs.npy")
    data["model"] = folder / "model.onnx"
    return data


# --------------------------------------------------------------------------- shared helpers


def photos(size: int) -> np.ndarray:
    """chelsea and coffee resized (whole image, bilinear) to size x size: uint8 [2, S, S, 3]."""
    from PIL import Image
    from skimage import data

    images = [Image.fromarray(f()).resize((size, size), Image.BILINEAR)
              for f in (data.chelsea, data.coffee)]
    return np.stack([np.asarray(i.convert("RGB")) for i in images])


def class_ids_from(logits: np.ndarray) -> np.ndarray:
    top = logits.argmax(axis=1)
    fixed = np.where(top == FIXED_CLASS, FIXED_CLASS + 1, FIXED_CLASS)
    return np.stack([top, fixed % logits.shape[1]], axis=1).astype(np.int64)


def _save(folder: Path, inputs: np.ndarray, cams: np.ndarray, class_ids: np.ndarray,
          logits: np.ndarray, meta: dict, cams64: np.ndarray | None = None,
          **extra: np.ndarray) -> None:
    """Write inputs.npy, meta.json and reference.npz (``extra``: more reference arrays)."""
    np.save(folder / "inputs.npy", np.ascontiguousarray(inputs))
    text = json.dumps(meta, indent=1, sort_keys=True)
    (folder / "meta.json").write_text(text + "\n")
    if cams64 is not None:
        extra["cams64"] = cams64.astype(np.float64)
    np.savez(folder / "reference.npz", cams=cams.astype(np.float32), class_ids=class_ids,
             logits=logits.astype(np.float32), meta=np.array(text), **extra)


def _versions(*packages: str) -> dict[str, str]:
    from importlib import metadata

    out = {}
    for package in packages:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return out


# --------------------------------------------------------------------------- Keras (.venv-tf)


def keras_python() -> Path | None:
    """The Python of the TensorFlow environment (``ONNXCAM_TF_PYTHON`` or ``.venv-tf``)."""
    given = os.environ.get("ONNXCAM_TF_PYTHON")
    path = Path(given) if given else ROOT / ".venv-tf" / "bin" / "python"
    return path if path.is_file() else None


def _keras_worker(out_dir: Path, names: list[str], photos_file: Path) -> None:
    """Build the Keras entries (runs in .venv-tf: TensorFlow, tf2onnx, no torch)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import gc
    import importlib

    import keras
    import tensorflow as tf
    import tf2onnx

    raw = dict(np.load(photos_file))
    for name in names:
        entry = ENTRIES[name]
        start = time.perf_counter()
        module_name, size = KERAS_MODELS[entry.model]
        module = importlib.import_module(f"keras.applications.{module_name}")
        keras.utils.set_random_seed(0)
        model = _keras_model(keras, entry.model, size)
        inputs = module.preprocess_input(raw[str(size)].astype(np.float32)).astype(np.float32)
        _recalibrate_keras(model, module, raw[str(size)])
        # the layer to explain: the last one with a spatial (rank 4, not 1x1) output
        index = next(
            i for i in range(len(model.layers) - 1, -1, -1)
            if len(model.layers[i].output.shape) == 4
            and tuple(model.layers[i].output.shape[1:3]) != (1, 1)
        )
        layer = model.layers[index]
        folder = entry_dir(out_dir, name)
        folder.mkdir(parents=True, exist_ok=True)
        spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name="input"),)
        t0 = time.perf_counter()
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=13)
        export_s = time.perf_counter() - t0
        import onnx

        onnx.save(proto, str(folder / "model.onnx"))
        del proto

        # reference: GradientTape on the pre-softmax logits (classifier activation -> linear)
        logits, class_ids, cams = _keras_gradcam(keras, tf, model, index, inputs, None)
        # the same weights in float64, to arbitrate maps that float32 cannot resolve
        keras.config.set_floatx("float64")
        keras.config.set_dtype_policy("float64")
        try:
            twin = _keras_model(keras, entry.model, size)
            twin.set_weights([w.astype(np.float64) for w in model.get_weights()])
            _, _, cams64 = _keras_gradcam(keras, tf, twin, index, inputs.astype(np.float64),
                                          class_ids)
        finally:
            keras.config.set_floatx("float32")
            keras.config.set_dtype_policy("float32")
        meta = {
            "entry": name, "converter": f"tf2onnx {tf2onnx.__version__}", "exporter": "tf2onnx",
            "framework": "keras", "model": entry.model, "source_layer": layer.name,
            "layout": "NHWC", "input_layout": "NHWC", "export_s": round(export_s, 2),
            "versions": {"tensorflow": tf.__version__, "keras": keras.__version__,
                         "tf2onnx": tf2onnx.__version__},
            "transformer": False,
        }
        meta["build_s"] = round(time.perf_counter() - start, 2)
        _save(folder, inputs, cams, class_ids, logits, meta, cams64)
        print(f"built {name} in {meta['build_s']} s (export {export_s:.1f} s)", flush=True)
        del model, twin
        keras.backend.clear_session()
        gc.collect()


def _keras_model(keras, model_name: str, size: int):
    if model_name == "VGG16":  # the fine-tune way: the full top needs > 24 GB to convert
        base = keras.applications.VGG16(include_top=False, weights=None,
                                        input_shape=(size, size, 3))
        x = keras.layers.Flatten(name="flatten")(base.output)
        x = keras.layers.Dense(256, activation="relu", name="fc")(x)
        x = keras.layers.Dense(NUM_CLASSES, activation="softmax", name="predictions")(x)
        return keras.Model(base.input, x, name="vgg16_finetune")
    return getattr(keras.applications, model_name)(weights=None, input_shape=(size, size, 3))


def _keras_gradcam(keras, tf, model, index: int, inputs: np.ndarray, class_ids):
    """(pre-softmax logits, class ids, cams [B, K, h, w]) by tf.GradientTape at layer ``index``.

    The classifier's activation is switched to ``linear`` first (same weights): the tape then
    differentiates the pre-softmax logits.
    """
    model.layers[-1].activation = keras.activations.linear
    sub = keras.Model(model.inputs, [model.layers[index].output, model.output])
    x = tf.constant(inputs)
    _, logits = sub(x, training=False)
    logits = logits.numpy()
    if class_ids is None:
        class_ids = class_ids_from(logits)
    cams = []
    for k in range(class_ids.shape[1]):
        onehot = tf.one_hot(class_ids[:, k], logits.shape[-1], dtype=x.dtype)
        with tf.GradientTape() as tape:
            activation, out = sub(x, training=False)
            score = tf.reduce_sum(out * onehot)
        grad = tape.gradient(score, activation)  # NHWC
        weights = tf.reduce_mean(grad, axis=(1, 2), keepdims=True)
        cams.append(tf.nn.relu(tf.reduce_sum(weights * activation, axis=-1)).numpy())
    return logits, class_ids, np.stack(cams, 1)


def calibration_images(raw: np.ndarray, noise: int = 4) -> np.ndarray:
    """The photos, their mirror images and uniform noise images: uint8-range float32 NHWC."""
    rng = np.random.default_rng(0)
    images = [raw, raw[:, :, ::-1], rng.uniform(0, 255, (noise, *raw.shape[1:]))]
    return np.concatenate(images).astype(np.float32)


def _recalibrate_keras(model, module, raw: np.ndarray) -> None:
    """BatchNorm moving statistics from one batch of :func:`calibration_images`.

    Random-init Keras models keep mean 0 / variance 1 statistics and their logits can vanish
    (MobileNetV2: ~1e-11). With ``momentum = 0`` one training-mode pass sets every moving
    statistic to the batch statistic of its input, each layer seeing normalized inputs.
    """
    import keras

    norms = [lyr for lyr in model.layers if isinstance(lyr, keras.layers.BatchNormalization)]
    if not norms:
        return
    momenta = [lyr.momentum for lyr in norms]
    for lyr in norms:
        lyr.momentum = 0.0
    model(module.preprocess_input(calibration_images(raw)), training=True)
    for lyr, momentum in zip(norms, momenta, strict=True):
        lyr.momentum = momentum


def _build_keras(out_dir: Path, names: list[str]) -> None:
    python = keras_python()
    if python is None:
        raise RuntimeError(
            "the Keras entries need the TensorFlow environment .venv-tf (make venv-tf), or "
            "ONNXCAM_TF_PYTHON pointing at a Python with tensorflow-cpu and tf2onnx"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    photos_file = out_dir / "_photos.npz"
    np.savez(photos_file, **{str(s): photos(s) for s in (224, 299)})
    command = [str(python), str(Path(__file__).resolve()), str(out_dir), "--keras-worker",
               "--only", *names]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run(command, check=True, env=env)


# --------------------------------------------------------------------------- torch (timm, HF)


def _torch_reference(model, layer, x, class_ids_fn, transform=None):
    """Grad-CAM by torch autograd at module ``layer``: (cams [B,K,h,w], class ids, logits).

    ``transform`` maps the hooked output to an NCHW activation ([B, T, C] tokens -> grid).
    """
    import torch

    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        with torch.enable_grad():
            logits = model(x)
            if not isinstance(logits, torch.Tensor):  # HF ModelOutput
                logits = logits.logits
    finally:
        handle.remove()
    hooked = store["a"]
    class_ids = class_ids_fn(logits.detach().numpy())
    cams = []
    for k in range(class_ids.shape[1]):
        score = logits.gather(1, torch.as_tensor(class_ids[:, k : k + 1])).sum()
        (grad,) = torch.autograd.grad(score, hooked, retain_graph=True)
        activation, gradient = (transform(hooked), transform(grad)) if transform else (hooked,
                                                                                        grad)
        weights = gradient.mean(dim=(2, 3), keepdim=True)
        cams.append(torch.relu((weights * activation).sum(dim=1)).detach())
    return torch.stack(cams, 1).numpy(), class_ids, logits.detach().numpy()


def _recalibrate_torch(model, batch) -> None:
    """BatchNorm running statistics from one batch of :func:`calibration_images`.

    Like :func:`exporters.torch.recalibrate_batchnorm` (reset, ``momentum=None``, a train-mode
    pass under ``no_grad``), but on the photos, their mirror images and noise rather than on
    noise alone: statistics from noise leave timm's efficientnet_b0 with logits ~300 on photos
    and so ill-conditioned that torch's own float32 CAMs are 3e-4 from float64 (6e-6 this way).
    """
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    if norms:
        model.train()
        with torch.no_grad():
            model(batch)
    model.eval()


def _torch_float64(model, layer_name: str, x, class_ids: np.ndarray, transform=None):
    """The same Grad-CAM by a float64 copy of the model (arbitrates ill-conditioned maps)."""
    import copy

    twin = copy.deepcopy(model).double().eval()
    cams, _, _ = _torch_reference(twin, twin.get_submodule(layer_name), x.double(),
                                  lambda logits: class_ids, transform)
    return cams


def _tokens_to_grid(prefix: int):
    def transform(t):
        tokens = t[:, prefix:, :]
        side = int(round(tokens.shape[1] ** 0.5))
        return tokens.reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)

    return transform


def _nhwc_to_nchw(t):
    return t.permute(0, 3, 1, 2)


def _torch_export(model, x, path: Path, exporter: str) -> float:
    import warnings

    import torch

    t0 = time.perf_counter()
    if exporter == "dynamo":
        torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["input"],
                          output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["input"],
                              output_names=["logits"], opset_version=17,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return time.perf_counter() - t0


def _build_timm(out_dir: Path, entry: Entry) -> None:
    import timm
    import torch

    start = time.perf_counter()
    torch.manual_seed(0)
    model = timm.create_model(entry.model, pretrained=False, num_classes=NUM_CLASSES)
    config = timm.data.resolve_data_config({}, model=model)
    mean = np.asarray(config["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(config["std"], np.float32).reshape(1, 3, 1, 1)

    def preprocess(images: np.ndarray) -> np.ndarray:
        x = images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        return np.ascontiguousarray((x - mean) / std, dtype=np.float32)

    raw = photos(entry.size)
    inputs = preprocess(raw)
    _recalibrate_torch(model, torch.from_numpy(preprocess(calibration_images(raw))))
    layer_name = TIMM_MODELS[entry.model]
    layer = model.get_submodule(layer_name)
    transform, layout = None, "NCHW"
    if entry.model.startswith(("vit", "deit")):
        transform, layout = _tokens_to_grid(model.num_prefix_tokens), "tokens"
    elif entry.model.startswith("swin"):
        transform, layout = _nhwc_to_nchw, "NHWC"
    x = torch.from_numpy(inputs)
    cams, class_ids, logits = _torch_reference(model, layer, x, class_ids_from, transform)
    cams64 = _torch_float64(model, layer_name, x, class_ids, transform)
    extra = {}
    if layout == "tokens":  # also at the patch embedding, the only spatial tensor of a ViT
        extra["cams_patch"], _, _ = _torch_reference(model, model.get_submodule(PATCH_LAYER), x,
                                                    lambda logits: class_ids)
        extra["cams64_patch"] = _torch_float64(model, PATCH_LAYER, x, class_ids)
    folder = entry_dir(out_dir, entry.name)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        export_s = _torch_export(model, x, folder / "model.onnx", entry.exporter)
    meta = {
        "entry": entry.name, "converter": f"torch.onnx ({entry.exporter})",
        "exporter": entry.exporter, "framework": "torch", "model": f"timm {entry.model}",
        "source_layer": layer_name, "layout": layout, "input_layout": "NCHW",
        "export_s": round(export_s, 2), "transformer": entry.transformer,
        "versions": _versions("torch", "timm", "onnx", "onnxscript"),
    }
    if extra:
        meta["patch_layer"] = PATCH_LAYER
    meta["build_s"] = round(time.perf_counter() - start, 2)
    _save(folder, inputs, cams, class_ids, logits, meta, cams64, **extra)


def _build_hf(out_dir: Path, entry: Entry) -> None:
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    start = time.perf_counter()
    torch.manual_seed(0)
    config = ViTConfig(image_size=entry.size, patch_size=8, hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=128, num_labels=10)
    model = ViTForImageClassification(config).eval()
    raw = photos(entry.size).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    inputs = np.ascontiguousarray((raw - 0.5) / 0.5, dtype=np.float32)
    # the last block's first norm (transformers 5 names it vit.layers.N, older vit.encoder.layer.N)
    names = dict(model.named_modules())
    layer_name = next(n for n in ("vit.layers.1.layernorm_before",
                                  "vit.encoder.layer.1.layernorm_before") if n in names)
    x = torch.from_numpy(inputs)
    cams, class_ids, logits = _torch_reference(
        model, names[layer_name], x, class_ids_from, _tokens_to_grid(1)
    )
    cams64 = _torch_float64(model, layer_name, x, class_ids, _tokens_to_grid(1))
    patch_layer = "vit.embeddings.patch_embeddings.projection"
    cams_patch, _, _ = _torch_reference(model, names[patch_layer], x, lambda logits: class_ids)
    cams64_patch = _torch_float64(model, patch_layer, x, class_ids)

    class Logits(torch.nn.Module):  # a deployed file has the logits as its output
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values):
            return self.inner(pixel_values=pixel_values).logits

    folder = entry_dir(out_dir, entry.name)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        export_s = _torch_export(Logits(model).eval(), x, folder / "model.onnx", entry.exporter)
    meta = {
        "entry": entry.name, "converter": f"torch.onnx ({entry.exporter})",
        "exporter": entry.exporter, "framework": "torch",
        "model": "transformers ViTForImageClassification (ViTConfig: 64 px, patch 8, 2 layers)",
        "source_layer": layer_name, "layout": "tokens", "input_layout": "NCHW",
        "export_s": round(export_s, 2), "transformer": True,
        "versions": _versions("torch", "transformers", "onnx"), "patch_layer": patch_layer,
    }
    meta["build_s"] = round(time.perf_counter() - start, 2)
    _save(folder, inputs, cams, class_ids, logits, meta, cams64, cams_patch=cams_patch,
          cams64_patch=cams64_patch)


# --------------------------------------------------------------------------- variants


def _build_variant(out_dir: Path, entry: Entry) -> None:
    import onnx

    start = time.perf_counter()
    parent = entry_dir(out_dir, entry.parent)
    folder = entry_dir(out_dir, entry.name)
    folder.mkdir(parents=True, exist_ok=True)
    source = parent / "model.onnx"
    target = folder / "model.onnx"
    inputs = np.load(parent / "inputs.npy")
    t0 = time.perf_counter()
    if entry.exporter == "onnxslim":
        import onnxslim

        slim = onnxslim.slim(onnx.load(str(source)))
        onnx.save(slim, str(target))
        converter = f"onnxslim {onnxslim.__version__}"
    elif entry.exporter == "fp16":
        from onnxconverter_common import float16

        half = float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
        onnx.save(half, str(target))
        converter = "onnxconverter-common float16 (keep_io_types=True)"
    elif entry.exporter == "int8":
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        axis = 2 if np.load(parent / "inputs.npy").shape[-1] == 3 else 3  # mirror W
        batches = [inputs[i : i + 1] for i in range(len(inputs))]
        batches += [np.ascontiguousarray(np.flip(b, axis=axis)) for b in batches]
        name = onnx.load(str(source), load_external_data=False).graph.input[0].name

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.items = iter([{name: b} for b in batches])

            def get_next(self):
                return next(self.items, None)

        quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        per_channel=True)
        converter = "onnxruntime.quantization.quantize_static (QDQ, int8, per-channel)"
    elif entry.exporter == "ortopt":
        from onnxruntime.transformers.optimizer import optimize_model

        inner = optimize_model(str(source), model_type="vit", num_heads=6, hidden_size=384)
        inner.save_model_to_file(str(target))
        converter = "onnxruntime.transformers.optimizer (model_type='vit')"
    else:
        raise ValueError(entry.exporter)
    export_s = time.perf_counter() - t0
    shutil.copy(parent / "inputs.npy", folder / "inputs.npy")
    shutil.copy(parent / "reference.npz", folder / "parent_reference.npz")
    ref = load_entry(parent)
    meta = {**ref["meta"], "entry": entry.name, "parent": entry.parent,
            "variant": entry.exporter, "converter": f"{ref['meta']['converter']} + {converter}",
            "export_s": round(export_s, 2),
            "versions": {**ref["meta"]["versions"],
                         **_versions("onnxslim", "onnxconverter-common", "onnxruntime")}}
    meta["build_s"] = round(time.perf_counter() - start, 2)
    extra = {k: v for k, v in ref.items() if k.startswith("cams") and k != "cams"}
    _save(folder, inputs, ref["cams"], ref["class_ids"], ref["logits"], meta, **extra)


# --------------------------------------------------------------------------- driver


def selected(only: list[str] | None = None, full: bool = False) -> list[str]:
    """Entry names to build: ``only`` (plus the parents of variants), else the default set."""
    if only:
        unknown = [n for n in only if n not in ENTRIES]
        if unknown:
            raise SystemExit(f"unknown entries {unknown}; see --list")
        names = list(only)
        for n in only:
            parent = ENTRIES[n].parent
            if parent and parent not in names:
                names.insert(0, parent)
        return names
    return [n for n, e in ENTRIES.items() if full or not e.full_only]


def build(out_dir: str | os.PathLike[str] = DEFAULT_DIR, only: list[str] | None = None,
          full: bool = False) -> dict[str, float]:
    """Build the missing entries; return {entry: seconds} of those built now.

    Raises:
        RuntimeError: the Keras entries are asked for and .venv-tf is missing; other
            failures propagate (a half-built entry is removed).
    """
    out_dir = Path(out_dir)
    names = [n for n in selected(only, full) if not is_built(out_dir, n)]
    times: dict[str, float] = {}
    keras_names = [n for n in names if ENTRIES[n].family == "keras"]
    if keras_names:
        t0 = time.perf_counter()
        try:
            _build_keras(out_dir, keras_names)
        finally:
            for n in keras_names:
                if not is_built(out_dir, n):
                    shutil.rmtree(entry_dir(out_dir, n), ignore_errors=True)
        times["(keras subprocess)"] = time.perf_counter() - t0
    builders = {"timm": _build_timm, "hf": _build_hf, "variant": _build_variant}
    for n in names:
        entry = ENTRIES[n]
        if entry.family == "keras":
            continue
        t0 = time.perf_counter()
        try:
            builders[entry.family](out_dir, entry)
        except BaseException:
            shutil.rmtree(entry_dir(out_dir, n), ignore_errors=True)
            raise
        times[n] = time.perf_counter() - t0
        print(f"built {n} in {times[n]:.1f} s", flush=True)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", nargs="?", default=str(DEFAULT_DIR))
    parser.add_argument("--only", nargs="+", metavar="NAME")
    parser.add_argument("--full", action="store_true", help="also the slowest entries")
    parser.add_argument("--list", action="store_true", help="print the entries and exit")
    parser.add_argument("--keras-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.list:
        for name, entry in ENTRIES.items():
            print(f"{name:48s} {entry.family:8s} {'full only' if entry.full_only else ''}")
        return 0
    if args.keras_worker:
        out = Path(args.out_dir)
        _keras_worker(out, args.only, out / "_photos.npz")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.path.insert(0, str(ROOT))
    t0 = time.perf_counter()
    times = build(args.out_dir, args.only, args.full)
    print(f"built {len(times)} entries in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
