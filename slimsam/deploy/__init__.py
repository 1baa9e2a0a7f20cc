"""Running a model outside PyTorch: `slimsam web`'s page, which segments in the browser with an ONNX export
(transformers.js on onnxruntime-web), and the file server behind it."""
