"""Perturbation methods: weights from extra graph runs instead of the gradient.

Both run the model again through :class:`~explainer.methods.core.ModelAccess`, in batches:

* Ablation-CAM runs only the head, on :data:`ABLATION_BATCH` ablated activations per run
  (C rows per image and target);
* Score-CAM runs features and head on :data:`SCORE_BATCH` masked inputs per run (C inputs per
  image and target), so it costs about C / batch-size inferences.
"""

from __future__ import annotations

import numpy as np

from ..maps import normalize_maps, upsample_bilinear
from .core import CamContext
from .spec import MethodSpec

__all__ = ["ABLATION_BATCH", "SCORE_BATCH", "SPECS", "ablationcam_weights", "scorecam_weights"]

#: ablated activations per head run (Ablation-CAM)
ABLATION_BATCH = 128
#: masked inputs per features + head run (Score-CAM)
SCORE_BATCH = 32


def ablationcam_weights(ctx: CamContext) -> np.ndarray:
    """Ablation-CAM (Desai & Ramaswamy, WACV 2020).

    ``w_k = (y_c - y_c^k) / y_c``, where ``y_c`` is the target logit and ``y_c^k`` the logit
    with channel k of the activation set to 0 (the head graph run on the ablated activation);
    channel weights [N, C].

    Deliberate difference: pytorch-grad-cam sets the ablated channel to ``min(A) - 1e7``
    instead of 0 when the activation has no zero minimum (layers not ending in a ReLU);
    onnxcam always zeroes it, as the paper does.
    """
    model = ctx.require_model("ablationcam")
    activation = ctx.activation
    n, c = activation.shape[:2]
    base = model.activation_scores(np.arange(n), activation, ctx.class_ids).astype(np.float64)
    ablated = np.zeros((n, c))
    for i in range(n):
        for start in range(0, c, ABLATION_BATCH):
            channels = np.arange(start, min(c, start + ABLATION_BATCH))
            batch = np.repeat(activation[i : i + 1], len(channels), axis=0)
            batch[np.arange(len(channels)), channels] = 0
            rows = np.full(len(channels), i)
            ablated[i, channels] = model.activation_scores(rows, batch, ctx.class_ids[rows])
    drop = base[:, None] - ablated
    scale = np.where(base != 0, base, 1)[:, None]
    return np.where(base[:, None] != 0, drop / scale, 0).astype(np.float32)


def scorecam_weights(ctx: CamContext) -> np.ndarray:
    """Score-CAM (Wang et al., CVPR Workshops 2020, arXiv:1910.01279).

    Each channel ``A^k`` is upsampled to the input size (bilinear, half-pixel centers) and
    min-max scaled to ``H^k`` in [0, 1]; the model scores the input multiplied by it,
    ``s_k = y_c(X * H^k)``, and ``w = softmax_k(s_k)``; channel weights [N, C]. The mask
    multiplies the model input as given (after normalization), like pytorch-grad-cam.

    Deliberate difference: pytorch-grad-cam upsamples with ``align_corners=True``
    (``UpsamplingBilinear2d``); onnxcam uses the half-pixel upsampling of its heatmaps.
    """
    model = ctx.require_model("scorecam")
    size = model.input_size()
    n, c = ctx.activation.shape[:2]
    scores = np.zeros((n, c))
    for i in range(n):
        for start in range(0, c, SCORE_BATCH):
            stop = min(c, start + SCORE_BATCH)
            masks = normalize_maps(upsample_bilinear(ctx.activation[i, start:stop], size))
            rows = np.full(stop - start, i)
            scores[i, start:stop] = model.input_scores(rows, masks, ctx.class_ids[rows])
    exp = np.exp(scores - scores.max(axis=1, keepdims=True))
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


#: this module's methods, in display order (:data:`explainer.methods.METHODS`)
SPECS = (
    MethodSpec(
        "ablationcam", "Ablation-CAM", "model", ablationcam_weights, None, uses_gradient=False,
        paper="Desai & Ramaswamy, WACV 2020",
        formula="`w_k = (y_c - y_c^k) / y_c`, `y_c^k` the score with channel k zeroed; "
                "`M = ReLU(sum_k w_k A^k)`",
        peers={"pytorch-grad-cam": "AblationCAM"},
    ),
    MethodSpec(
        "scorecam", "Score-CAM", "model", scorecam_weights, None, uses_gradient=False,
        paper="Wang et al., CVPR Workshops 2020, arXiv:1910.01279",
        formula="`s_k = y_c(X * H^k)`, `H^k` channel k upsampled and min-max scaled; "
                "`w = softmax_k(s_k)`; `M = ReLU(sum_k w_k A^k)`",
        peers={"pytorch-grad-cam": "ScoreCAM", "torchcam": "ScoreCAM"},
    ),
)
