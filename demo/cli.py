"""`python app.py`: parse the options (or their environment variables, for Spaces) and serve the app."""
from __future__ import annotations

import argparse
import logging
import os

from demo.models import DEFAULT_LEFT, DEFAULT_RIGHT, STANDARD_MODELS, ModelStore, default_pane, menu_with
from demo.ui import CSS, SESSION_TTL, build_app
from slimsam.infer.heap import keep_freed_memory_in_heap
from slimsam.infer.predictor import ALL_DTYPES, ONNX_DTYPES, RUNTIMES, TORCH_DTYPES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python app.py", description="Compare SAM and SlimSAM side by side.")
    parser.add_argument("--left", default=env("SLIMSAM_LEFT"),
                        help="left pane's model: a menu name (SAM-B, SAM-L, SAM-H, SlimSAM-50, SlimSAM-77, toy-sam), "
                             f"a Hub id or a local model folder (env SLIMSAM_LEFT; default {DEFAULT_LEFT}, or the "
                             "toy SAM when its weights are not here)")
    parser.add_argument("--right", default=env("SLIMSAM_RIGHT"),
                        help=f"right pane's model, as --left (env SLIMSAM_RIGHT; default {DEFAULT_RIGHT}, or the "
                             "toy SAM)")
    parser.add_argument("--host", default=env("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to serve on; 0.0.0.0 for all interfaces (env GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, default=int(env("GRADIO_SERVER_PORT", "7860")),
                        help="port (env GRADIO_SERVER_PORT; default %(default)s)")
    parser.add_argument("--session-ttl", type=float, default=float(env("SLIMSAM_SESSION_TTL", SESSION_TTL)),
                        help="seconds after an API client's last request that its session's memory is released "
                             "(a browser tab's is released when it closes; env SLIMSAM_SESSION_TTL; "
                             "default %(default)g)")
    parser.add_argument("--runtime", choices=RUNTIMES, default=env("SLIMSAM_RUNTIME") or None,
                        help="what runs every pane's model: pytorch, or onnxruntime (a model given as weights is "
                             "exported to ONNX when first chosen; needs the onnx extra). Default: each model's own "
                             "(ONNX export folders on onnxruntime, weights on PyTorch; env SLIMSAM_RUNTIME)")
    parser.add_argument("--dtype", choices=ALL_DTYPES, default=env("SLIMSAM_DTYPE") or None,
                        help="numbers the models compute in: PyTorch fp32, bf16 or fp16 weights; onnxruntime fp32, "
                             "int8 or fp16 graphs. Default fp32: exact, and the fastest exact path measured "
                             "(env SLIMSAM_DTYPE)")
    parser.add_argument("--share", action="store_true", default=env("GRADIO_SHARE", "") in ("1", "true", "True"),
                        help="also serve on a temporary public gradio.live link (env GRADIO_SHARE=1)")
    args = parser.parse_args(argv)
    for option, value, allowed in (("--runtime", args.runtime, RUNTIMES), ("--dtype", args.dtype, ALL_DTYPES)):
        if value is not None and value not in allowed:  # from the environment, which argparse does not check
            parser.error(f"{option} must be one of {', '.join(allowed)}, got {value!r}")
    allowed = {"pytorch": tuple(TORCH_DTYPES), "onnxruntime": ONNX_DTYPES}.get(args.runtime, ALL_DTYPES)
    if args.dtype is not None and args.dtype not in allowed:
        parser.error(f"--runtime {args.runtime} has no {args.dtype}: choose --dtype from {', '.join(allowed)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("demo").setLevel(logging.INFO)  # the app's own notes (e.g. a session released)
    # Clicks allocate MB-sized tensors and segment-everything's batches ~270 MB ones: reuse them instead of
    # faulting pages in afresh (the handlers give the heap back after segment-everything and huge photos).
    keep_freed_memory_in_heap(large_blocks=True)
    left, menu = menu_with(args.left or DEFAULT_LEFT, STANDARD_MODELS)
    right, menu = menu_with(args.right or DEFAULT_RIGHT, menu)
    store = ModelStore(menu, runtime=args.runtime, dtype=args.dtype)
    left = left if args.left else default_pane(left, store)  # offline, a first visitor still sees real masks
    right = right if args.right else default_pane(right, store)
    app = build_app(store, left, right, args.session_ttl)
    app.queue(default_concurrency_limit=2).launch(server_name=args.host, server_port=args.port, share=args.share,
                                                  css=CSS)
