"""The build pipelines: `build` (task data -> package) and `compile` (ONNX model -> package)."""
