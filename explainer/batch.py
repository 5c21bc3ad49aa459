"""Folder runs: explain many image files in batches, writing overlays and ``summary.json``.

What ``onnxcam explain`` does with its paths, usable from Python too::

    images = collect_images(["photos/", "more/*.jpg"], recursive=True)
    run = FolderRun(explainer, images, "out", RunOptions(top_k=3, save_npy=True))
    summary = run.run()

Every image is decoded on its own (a file that fails is recorded with its error and the rest
still runs), preprocessed to the model's input size and explained in batches of
``batch_size`` (images whose preprocessed sizes differ go in separate batches). Outputs are
written atomically (:mod:`explainer.outputs`), and ``summary.json`` is rewritten as the run
goes, so a killed run can be continued with ``resume=True``: images recorded as done, whose
files exist, are skipped.

Per image the folder gets ``NAME_cam.png`` (the input and one overlay per target) and, with
``save_npy``, ``NAME_cam.npy`` (heatmaps [K, H, W]). For a detector the targets are its
detections: the figure draws each detection's box on its own overlay (and all of them, numbered,
on the input), the summary row lists them (``detections``: box in model-input pixels,
``image_box`` in the original image's, score, class, label), and an image with no detection
above the threshold gets the input alone and a note, not an error. A segmenter's regions are
drawn and listed likewise (``regions``); a text recognizer's row gives the decoded ``text`` and
its ``characters``, and a text line's figure lays the maps out one per row. A layer-sweep bundle
adds
each layer's overlay figure, ``NAME_cam_LAYER.png`` (the layer name made filesystem-safe; the
top-level overlay is the fused map). The pixel-space methods add each target's pixel map drawn by
:func:`explainer.visualize.pixel_image`, ``NAME_pixels.png`` (``NAME_pixels_J.png`` for target
column J when there are several), and with ``save_npy`` ``NAME_pixels.npy`` ([K, C, H, W]).
"""

from __future__ import annotations

from .explained import Explained, explain_batch, write_outputs
from .folder_run import SUMMARY, FolderRun, layer_file_names
from .inputs import collect_images
from .run_options import RunOptions

__all__ = [
    "SUMMARY",
    "Explained",
    "FolderRun",
    "RunOptions",
    "collect_images",
    "explain_batch",
    "layer_file_names",
    "write_outputs",
]
