"""Exporting models out of PyTorch: ONNX graphs in the layout transformers.js reads, int8 and fp16 variants, and
the report that proves each one still computes what the PyTorch model computes."""
