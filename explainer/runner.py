"""The graph runs under an Explainer: sessions, static-batch chunking and IO binding.

:class:`Runner` owns the ONNX Runtime sessions of a bundle's graphs (features, gradient head,
the head pruned to its logits or to the model outputs it keeps, the guided input-gradient
graph), each created on first use, and runs them:

* static batch: a model exported with a fixed batch size S (common in TensorFlow/Keras
  conversions) runs in chunks of S rows, the last one padded by repeating its last row and the
  padding dropped from the results (:func:`explainer.sessions.run_chunked`);
* CUDA: inputs and outputs are bound with IO binding, and the features graph's outputs stay
  on the device for the head runs.

The CAM methods that run the model again get a per-batch, per-layer view of it
(:meth:`Runner.access`, a :class:`~explainer.methods.core.ModelAccess`). Self-checks and tools
use the ``run_*`` methods (:func:`explainer.gradcheck.check_gradients`, the pixel methods).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from .access import LayerAccess, Scorer
from .backward import SplitHead
from .bundle import Bundle, extract
from .errors import MethodError
from .manifest import LayerSpec, Manifest
from .maps import heatmap_feeds, heatmap_model
from .preprocessing import check_batch
from .sessions import SessionPool, run_chunked, run_once, to_numpy
from .sparse_seeds import Seeds, seed_column

__all__ = ["Runner"]


class Runner:
    """Graph runs of one bundle on ONNX Runtime.

    Args:
        bundle: the bundle whose graphs run.
        spec: its typed manifest (``bundle.spec``).
        providers: the ONNX Runtime provider list
            (:func:`explainer.sessions.resolve_providers`).
        options: the sessions' options (:func:`explainer.sessions.session_options`).
        spinning: the options of the composed prediction (thread spinning on during its run;
            None: ``options``).
    """

    def __init__(self, bundle: Bundle, spec: Manifest, providers: list[Any],
                 options: ort.SessionOptions, spinning: ort.SessionOptions | None = None
                 ) -> None:
        self.bundle = bundle
        self.spec = spec
        #: the input and outputs are bound with IO binding (CUDA)
        self.on_cuda = any(
            (p[0] if isinstance(p, tuple) else p) == "CUDAExecutionProvider" for p in providers
        )
        self._pool = SessionPool(providers, options, spinning=spinning)

    @property
    def head(self) -> onnx.ModelProto:
        """The gradient head graph."""
        return self.bundle.head

    # --- sessions -------------------------------------------------------------------------------
    @property
    def features_session(self) -> ort.InferenceSession:
        """The features graph's session (created on first use)."""
        return self._pool.get("features", lambda: self.bundle.features)

    @property
    def head_session(self) -> ort.InferenceSession:
        """The gradient head's session (created on first use)."""
        return self._pool.get("head", lambda: self.bundle.head)

    @property
    def logits_session(self) -> ort.InferenceSession:
        """The head pruned to its logits: the prediction pass for targets that depend on it.

        Built on first use (once, even when several threads ask at the same time), so
        explaining fixed classes never holds a second copy of the head's weights."""
        return self.logits_from(list(self.spec.head.inputs))

    @property
    def outputs_session(self) -> ort.InferenceSession:
        """The head pruned to the explained tensor and the model outputs it keeps (a
        detector's prediction pass), created on first use."""
        head = self.spec.head
        return self.logits_from(list(head.inputs), [head.logits, *head.outputs])

    def logits_from(self, inputs: list[str], outputs: list[str] | None = None
                    ) -> ort.InferenceSession:
        """The session of the head pruned to its logits (or ``outputs``), read from
        ``inputs`` (the head's own inputs, or a later layer's tensor inside it), created on
        first use.

        Raises:
            MethodError: the logits also depend on head tensors not in ``inputs`` (a skip
                connection passes a layer by).
        """
        wanted = outputs or [self.spec.head.logits]

        def pruned() -> onnx.ModelProto:
            part, bypass = extract(self.bundle.head, list(inputs), list(wanted))
            if bypass:
                raise MethodError(
                    f"the logits do not depend on layer tensor(s) {list(inputs)} alone (the "
                    f"head also reads {bypass} past them); this method replaces the layer's "
                    "activation, so use it on a layer every path to the logits goes through"
                )
            return part

        own = inputs == list(self.spec.head.inputs)
        key = "logits" if own else f"logits:{','.join(inputs)}"
        return self._pool.get(key if outputs is None else f"{key}>{','.join(wanted)}", pruned)

    # --- lifetime -------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._pool.closed

    def close(self) -> None:
        """Release every session (idempotent); later runs raise :class:`ExplainerError`."""
        self._pool.close()

    def check_open(self) -> None:
        """Raise :class:`~explainer.errors.ExplainerError` once closed."""
        self._pool.check_open()

    # --- runs -----------------------------------------------------------------------------------
    def check_input(self, x: Any) -> np.ndarray:
        """Validate a model input batch (rank, shape, dtype, finiteness) and return it
        contiguous, cast to float32 where the model takes floats.

        Raises:
            InputError: naming the input, the expected shape and what was given.
        """
        spec = self.spec.input
        return check_batch(x, spec.name, list(spec.shape), spec.layout, spec.dtype)

    def run(self, session: ort.InferenceSession, feeds: dict[str, Any],
            outputs: list[str]) -> list[Any]:
        """One graph run (in chunks of the static batch where the model has one)."""
        static = self.spec.input.static_batch
        if static is not None:
            return run_chunked(session, feeds, outputs, static, self.on_cuda)
        return run_once(session, feeds, outputs, self.on_cuda)

    to_numpy = staticmethod(to_numpy)

    def features(self, x: np.ndarray) -> dict[str, Any]:
        """The features graph on a checked batch: the cut tensors by name, left on the device
        on CUDA (``OrtValue``s) for the head runs."""
        inputs = list(self.spec.head.inputs)
        name = self.spec.input.name
        # specialized to the input's size where the graph accepts any (symbolic H/W cost speed)
        session = self._pool.get_sized("features", lambda: self.bundle.features, name, x.shape)
        if not self.on_cuda or self.spec.input.static_batch is not None:
            values = self.run(session, {name: x}, inputs)
            return dict(zip(inputs, values, strict=True))
        binding = session.io_binding()
        binding.bind_cpu_input(name, x)
        for output in inputs:
            binding.bind_output(output, "cuda")
        session.run_with_iobinding(binding)
        return dict(zip(inputs, binding.get_outputs()))

    @cached_property
    def split(self) -> SplitHead | None:
        """The gradient head as its forward, run once, and its backward, run per target
        (:mod:`explainer.backward`); None where the backward cannot run alone or the runs
        cannot hand tensors over as they are (on CUDA the head runs whole)."""
        if self.on_cuda:
            return None
        head = self.spec.head
        layers = [(layer.tensor, layer.gradient) for layer in self.spec.layers]
        return SplitHead.of(self.bundle.head, list(head.inputs), head.logits, head.seed,
                            list(head.outputs), layers)

    def split_for(self, batch: int) -> SplitHead | None:
        """:attr:`split` for a batch of ``batch`` rows: None where a static-batch graph runs
        it in chunks (the tensors handed over are not all rows of the batch)."""
        static = self.spec.input.static_batch
        return self.split if static is None or batch == static else None

    def predict(self, features: dict[str, Any]) -> dict[str, Any]:
        """The head's forward on cut tensors (:meth:`features`): the explained tensor and the
        model outputs the head keeps by name, and where the head splits, what its backward
        reads (pass the result to :meth:`gradients` as ``forward=``, so the forward runs once
        for all targets)."""
        head = self.spec.head
        split = self.split and self.split_for(len(features[head.inputs[0]]))
        if split is None:
            names = [head.logits, *head.outputs]
            return dict(zip(names, self.run(self.outputs_session, features, names)))
        session = self._pool.get("forward", split.forward_model)
        # one run: the split serves a static batch only at its own size (split_for)
        values = run_once(session, features, split.forward, self.on_cuda)
        return {**features, **dict(zip(split.forward, values))}

    def prediction(self, x: np.ndarray) -> tuple[dict[str, Any], dict[str, Any]]:
        """:meth:`features` and :meth:`predict` of a checked batch: (the cut tensors, the
        head's forward), in one run of the two graphs composed where the head splits
        (:meth:`SplitHead.prediction_model`; CPU, the batch a static-batch graph takes)."""
        split = self.split and self.split_for(len(x))
        if split is None:
            features = self.features(x)
            return features, self.predict(features)
        name, inputs = self.spec.input.name, list(self.spec.head.inputs)
        # thread spinning on: the call's one big run (as plain inference runs at its
        # defaults); the small runs after it keep it off (measured: 1.10x -> 1.0x inference),
        # and its threads stop spinning when it returns (ten YOLOv8n detections: 2.07-2.11x
        # -> 1.79-1.87x inference)
        session = self._pool.get_sized(
            "prediction", lambda: split.prediction_model(self.bundle.features), name, x.shape,
            spinning=True)
        names = list(dict.fromkeys([*inputs, *split.forward]))
        values = dict(zip(names, run_once(session, {name: x}, names, self.on_cuda)))
        return {n: values[n] for n in inputs}, values

    def backward(self, forward: dict[str, Any], seeds: Seeds, names: list[str],
                 out: dict[str, np.ndarray] | None = None,
                 regions: dict[str, list[tuple[Any, ...] | None]] | None = None
                 ) -> list[np.ndarray]:
        """The split head's backward for seed rows [B, K, ...] (K target columns, one run
        each; dense, or :class:`~explainer.sparse_seeds.SparseSeeds`) on the tensors of
        ``forward`` (:meth:`predict`): the gradients ``names`` [B, K, ...], written into
        ``out`` where given (arrays of those shapes, zeros or, for a reader of ``regions``
        only, unset: a window's gradients are set in place). A
        column whose seed is zero outside one part of the explained tensor (a detection's
        level) runs that part's backward alone, on the window of the maps its gradients reach
        where that pays (:class:`Window`; several windows at once on single-thread sessions,
        up to the sessions' thread count). ``regions``, where given, gets each gradient's
        list of per-column regions: the index of a column's gradient [B, ...] outside which
        it is zero (None: anywhere)."""
        split = self.split
        assert split is not None
        out = split.zeros(forward, names, seeds.shape[:2]) if out is None else out
        columns = [seed_column(seeds, c) for c in range(seeds.shape[1])]
        views = [{n: out[n][:, c] for n in names} for c in range(len(columns))]
        parts = [split.part_of(seed, forward) for seed in columns]
        windows = {part: split.window(part) for part in set(parts) - {None}}
        windowed = [(c, part) for c, part in enumerate(parts)
                    if part is not None and windows[part] is not None]
        # several windows at once, each run on one thread: a window's small convolutions keep
        # two threads of one run poorly busy (ten YOLOv8n detections' windows: 51 ms on two
        # single-thread sessions at once, 78 ms one after the other on two threads)
        single = 1 if len(windowed) > 1 and not self.on_cuda and self._pool.workers > 1 else None

        placed: list[dict[str, tuple[Any, ...]]] = [{} for _ in columns]

        def windowed_run(job: tuple[int, int]) -> bool:
            c, part = job
            window = windows[part]
            session = self._pool.get(f"window{single or ''}:{part}", lambda: window.model,
                                     threads=single)
            return window.run(session, split.part_seed(columns[c], forward, part), forward,
                              views[c], placed[c])

        ran = (self._pool.map(windowed_run, windowed) if single
               else [windowed_run(job) for job in windowed])
        done = {c for (c, _), finished in zip(windowed, ran, strict=True) if finished}
        for c, seed in enumerate(columns):
            if c in done:
                continue
            part = parts[c]
            model, zeros = split.backward_model(part)
            run = [n for n in names if n not in zeros]
            session = self._pool.get("backward" if part is None else f"backward:{part}",
                                     lambda m=model: m)
            values = run_once(session, {**{n: forward[n] for n in split.saved},
                                        self.spec.head.seed: np.asarray(seed)}, run,
                              self.on_cuda)
            for name, value in zip(run, values, strict=True):
                views[c][name][...] = value
            if regions is not None:  # the arrays may be unset: zero for this part
                for name in zeros & set(names):
                    views[c][name][...] = 0
        if regions is not None:
            nowhere = (Ellipsis, slice(0, 0), slice(0, 0))  # a gradient the window left zero
            regions.update({n: [placed[c].get(n, nowhere) if c in done else None
                                for c in range(len(columns))] for n in names})
        return [out[n] for n in names]

    def gradients(
        self, features: dict[str, Any], seeds: Seeds, extra: list[str],
        forward: dict[str, Any] | None = None, backward: bool = True,
        regions: dict[str, list[tuple[Any, ...] | None]] | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Head runs for seed rows [B, K, ...] (the explained tensor's shape past its batch):
        (logits [B, ...], {name: [B, K, ...]}) for the gradient and the ``extra`` outputs.
        With ``forward`` (:meth:`predict` of the same features) of a head that splits, only
        the backward runs, once per target column (:meth:`backward`, which also fills
        ``regions``), or not at all without ``backward`` (a method that reads no gradient:
        zeros in their place). Given ``regions``, the caller reads each column's gradients
        inside its regions only: outside a window's regions they are left unset."""
        head = self.spec.head
        batch, k = seeds.shape[:2]
        split = self.split_for(batch)
        if forward is not None and split is not None:
            wanted = [n for n in [head.gradient, *extra] if n in split.gradients]
            values = split.zeros(forward, wanted, (batch, k),
                                 filled=regions is None or not backward)
            if backward:  # otherwise the zeros stay (a method that reads no gradient)
                self.backward(forward, seeds, wanted, values, regions)
            values.update({name: np.asarray(forward[name])[:, None] for name in extra
                           if name not in values})  # a later layer's activation
            return np.asarray(forward[head.logits]), values
        outputs = [head.logits, head.gradient, *extra]
        seeds = np.asarray(seeds)  # dense: the whole head runs on it
        if k > 1 and not self.on_cuda and all(
                getattr(v, "ndim", 0) and v.shape[0] == batch and v.dtype.kind == "f"
                for v in features.values()):
            # Every cut tensor is a float batch: one run for all B*K (image, target) pairs.
            feeds = {name: np.repeat(value, k, axis=0) for name, value in features.items()}
            feeds[head.seed] = seeds.reshape(batch * k, *seeds.shape[2:])  # image-major
            logits, *values = self.run(self.head_session, feeds, outputs)
            return logits[::k], {
                name: v.reshape(batch, k, *v.shape[1:]) for name, v in zip(outputs[1:], values)
            }
        # Otherwise one run per target column: other cut tensors (e.g. indices computed from
        # the batch size) keep their batch, and on CUDA everything stays on the device.
        columns = []
        for column in range(k):
            seed = np.ascontiguousarray(seeds[:, column])
            logits, *values = self.run(self.head_session, {**features, head.seed: seed}, outputs)
            columns.append([to_numpy(v) for v in values])
        return logits, {name: np.stack([c[i] for c in columns], axis=1)
                        for i, name in enumerate(outputs[1:])}

    def heatmaps(self, layers: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
        """One layer's CAMs [N, h, w] upsampled to ``size`` and min-max scaled per map, or
        several layers' fused (:data:`explainer.layers.Heatmaps`), on ONNX Runtime
        (:func:`explainer.maps.heatmap_model`; numpy's result within float rounding)."""
        session = self._pool.get(f"heatmaps:{len(layers)}", lambda: heatmap_model(len(layers)))
        return run_once(session, heatmap_feeds(layers, size), ["heatmaps"], self.on_cuda)[0]

    def run_features(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run the features graph: the cut tensors (activation first) for an input batch, as
        numpy arrays (the batch is checked first)."""
        self.check_open()
        features = self.features(self.check_input(x))
        return {name: to_numpy(value) for name, value in features.items()}

    def run_logits(self, features: dict[str, Any]) -> np.ndarray:
        """Logits [B, C] of the head for cut tensors as :meth:`run_features` returns them."""
        self.check_open()
        return to_numpy(self.run(self.logits_session, features, [self.spec.head.logits])[0])

    def run_layer_logits(self, tensor: str, activation: np.ndarray) -> np.ndarray:
        """Logits [B, C] of the head run from ``tensor``, a later layer of a layer sweep (a
        tensor inside the head), set to ``activation``: the head from that tensor on,
        extracted on first use.

        Raises:
            MethodError: the logits do not depend on the head's inputs through ``tensor``
                alone (a skip connection passes it by).
        """
        self.check_open()
        session = self.logits_from([tensor])
        return to_numpy(self.run(session, {tensor: activation}, [self.spec.head.logits])[0])

    def run_head(
        self, features: dict[str, Any], seeds: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run the gradient head: (logits [B, C], gradient of ``sum(seeds * logits)`` with
        respect to the activation) for cut tensors and seed rows [B, C]."""
        self.check_open()
        head = self.spec.head
        logits, gradient = self.run(
            self.head_session, {**features, head.seed: np.asarray(seeds, np.float32)},
            [head.logits, head.gradient],
        )
        return to_numpy(logits), to_numpy(gradient)

    def run_input_gradient(self, x: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        """The guided gradient of ``sum(seeds * logits)`` w.r.t. the input rows ``x`` (the
        bundle's input-gradient graph; see :mod:`explainer.pixels`).

        Raises:
            MethodError: the bundle has no input-gradient graph.
        """
        entry = self.spec.input_gradient
        if entry is None:
            raise MethodError("this bundle has no input-gradient graph; export with "
                              "input_gradient=True")
        session = self._pool.get("input_gradient", lambda: self.bundle.input_gradient)
        feeds = {entry.input: self.check_input(x), entry.seed: np.asarray(seeds, np.float32)}
        return to_numpy(self.run(session, feeds, [entry.gradient])[0])

    def access(self, inputs: np.ndarray, layer: LayerSpec | None = None,
               activation: np.ndarray | None = None, features: dict[str, Any] | None = None,
               scorer: Scorer | None = None) -> LayerAccess:
        """The :class:`~explainer.methods.core.ModelAccess` of the methods that run the model
        again, for the checked batch ``inputs`` at ``layer`` (None: the target), whose
        activation (in its own layout) and cut tensors are ``activation`` and ``features``;
        ``scorer`` reads a target's score (None: the logit of its class)."""
        return LayerAccess(self, inputs, layer, activation, features=features, scorer=scorer)
