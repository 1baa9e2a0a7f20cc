"""`python app.py`: parse the options (or their environment variables, for Spaces) and serve the app."""
from __future__ import annotations

import argparse
import logging
import os

from demo.models import DEFAULT_LEFT, DEFAULT_RIGHT, STANDARD_MODELS, ModelStore, default_pane, menu_with
from demo.ui import CSS, SESSION_TTL, build_app
from slimsam.infer.heap import keep_freed_memory_in_heap


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
    parser.add_argument("--share", action="store_true", default=env("GRADIO_SHARE", "") in ("1", "true", "True"),
                        help="also serve on a temporary public gradio.live link (env GRADIO_SHARE=1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("demo").setLevel(logging.INFO)  # the app's own notes (e.g. a session released)
    # Clicks allocate MB-sized tensors and segment-everything's batches ~270 MB ones: reuse them instead of
    # faulting pages in afresh (the handlers give the heap back after segment-everything and huge photos).
    keep_freed_memory_in_heap(large_blocks=True)
    left, menu = menu_with(args.left or DEFAULT_LEFT, STANDARD_MODELS)
    right, menu = menu_with(args.right or DEFAULT_RIGHT, menu)
    store = ModelStore(menu)
    left = left if args.left else default_pane(left, store)  # offline, a first visitor still sees real masks
    right = right if args.right else default_pane(right, store)
    app = build_app(store, left, right, args.session_ttl)
    app.queue(default_concurrency_limit=2).launch(server_name=args.host, server_port=args.port, share=args.share,
                                                  css=CSS)
