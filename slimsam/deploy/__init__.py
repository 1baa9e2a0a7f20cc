"""Running models outside PyTorch: ONNX graphs in the layout transformers.js reads, int8 and fp16 variants,
the report that proves each one still computes what the PyTorch model computes, and `slimsam web`'s page,
which segments in the browser with an export (transformers.js on onnxruntime-web), with its file server."""
