"""onnxcam exporters: split ONNX models and build gradient heads."""
