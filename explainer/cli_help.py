"""The help texts of the ``onnxcam`` command: each subcommand's examples and notes."""

from __future__ import annotations

__all__ = ["CHECK_EXAMPLES", "EXAMPLES", "EXPLAIN_EXAMPLES", "EXPORT_EXAMPLES",
           "INSPECT_EXAMPLES"]

EXAMPLES = """examples:
  onnxcam inspect model.onnx                      # candidate layers, '*' marks the auto pick
  onnxcam explain model.onnx cat.jpg dog.jpg --top-k 3 --out cams/
  onnxcam explain model.onnx photos/ --recursive --report --out cams/   # then open cams/index.html
  onnxcam explain model.onnx cat.jpg --layer features --labels imagenet
  onnxcam export model.onnx --layer auto --labels imagenet -o model.onnxcam
  onnxcam export model.onnx --layer A --layer B --input-gradient -o sweep.onnxcam
  onnxcam explain model.onnxcam cat.jpg --targets top3+least --providers cuda
  onnxcam check model.onnx                        # gradient vs finite differences
  onnxcam evaluate model.onnx photos/ --methods gradcam,layercam --metrics deletion,sanity
  onnxcam explain yolov8n.onnx street.jpg --targets detections --out cams/   # a detector
  onnxcam explain ch_PP-OCRv4_det_infer.onnx page.png --threshold 0.3   # text regions (DBNet)
  onnxcam explain ch_PP-OCRv4_rec_infer.onnx line.png --labels keys.txt  # one map per character

exit codes:
  0  success
  1  a failure while explaining (a gradient that cannot be built, a failed self-check, some
     images of an explain run failed: see OUT/summary.json)
  2  a usage or input error (bad argument, unreadable model or bundle, bad labels, an output
     that exists without --overwrite/--resume)
"""
EXPLAIN_EXAMPLES = """examples:
  onnxcam explain model.onnx cat.jpg dog.jpg --top-k 3 --out cams/
  onnxcam explain model.onnx photos/ --recursive --batch-size 16 --report --out cams/
  onnxcam explain model.onnx 'photos/**/*.jpg' --recursive --save-npy --resume --out cams/
  onnxcam explain model.onnx cat.jpg --layer auto --cache-dir ~/.cache/onnxcam
  onnxcam explain resnet50.onnxcam cat.jpg --targets top3+least --providers cuda
  onnxcam explain model.onnx cat.jpg --targets 3 --contrast 5 --score probability
  onnxcam explain model.onnx photos/ --layer A --layer B --fuse max --out cams/
  onnxcam explain model.onnx cat.jpg --method guided-backprop --save-npy --out cams/
  onnxcam explain yolov8n.onnx street.jpg --targets detections --conf 0.4 --out cams/
  onnxcam explain yolov8n.onnx street.jpg --targets top3 --labels coco.txt
  onnxcam explain yolov8n.onnx street.jpg --targets person         # all persons, one map
  onnxcam explain yolov8n.onnx street.jpg --targets '{"box": [10, 20, 200, 300], "class": 0}'
  onnxcam explain common_det.onnx page.png --format yolox --preprocessing pre.json
  onnxcam explain deeplab.onnx street.jpg --targets person         # a class over its mask
  onnxcam explain dbnet.onnx page.png --targets regions --threshold 0.3
  onnxcam explain rec.onnx line.png --targets string+characters --labels keys.txt

Writes OUT/NAME_cam.png per image (NAME: the image's path below the inputs' common folder),
NAME_cam.npy with --save-npy, and OUT/summary.json (classes, probabilities, files or error per
image; a detector's boxes, scores and labels; a segmenter's regions; a text recognizer's
string and characters). A detector's figure draws each explained detection's box on its map (a
segmenter's regions likewise; a text line's maps are laid out one per row); an image with nothing
to explain gets the input alone and a note (not an error). A layer sweep (--layer repeated) adds
NAME_cam_LAYER.png per layer (the top-level overlay is the fused map); guided-backprop/
guided-gradcam add NAME_pixels.png (NAME_pixels_J.png per target J when several) and
NAME_pixels.npy with --save-npy. Exit code 0: all images explained; 1: some failed (the rest are
written); 2: a usage error. Existing outputs are replaced only with --overwrite; --resume
continues a run that was stopped.
"""
EXPORT_EXAMPLES = """examples:
  onnxcam export model.onnx -o model.onnxcam
  onnxcam export model.onnx --layer features --layout NHWC --labels imagenet -o model.onnxcam
  onnxcam export model.onnx --output logits --keep-softmax -o model.onnxcam
  onnxcam export model.onnx --layer relu_8 --layer features -o sweep.onnxcam   # layer sweep
  onnxcam export model.onnx --input-gradient -o model.onnxcam   # + guided-backprop/-gradcam
  onnxcam export cls.onnx --bgr --preprocessing '{"resize": [48, 192], "crop": null}' -o b/
  onnxcam export common_old.onnx --input-layout NCHW -o old.onnxcam   # a [1, 1, 64, W] input
"""
INSPECT_EXAMPLES = """examples:
  onnxcam inspect model.onnx
  onnxcam inspect model.onnx --output logits --last 10

columns: '*' the layer --layer auto picks; cut: every input->output path goes through the
tensor; grad: every op of the head past it has a gradient rule.
"""
CHECK_EXAMPLES = """examples:
  onnxcam check model.onnx
  onnxcam check model.onnxcam --images cat.jpg --directions 8 --eps 1e-2 1e-3
"""
