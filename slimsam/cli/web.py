"""`slimsam web EXPORT_DIR [--port P]`: segment photos in the browser with an ONNX export (slimsam.deploy.web)."""
from __future__ import annotations

import errno

from slimsam.cli.errors import CliError
from slimsam.deploy.web import make_server


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("web", help="a page that runs an ONNX export in the browser (transformers.js)")
    parser.add_argument("export_dir", metavar="EXPORT_DIR", help="a `slimsam export MODEL --format onnx` folder")
    parser.add_argument("--port", type=int, default=7870, help="port on 127.0.0.1 (default 7870; 0: any free one)")
    parser.set_defaults(run=run)


def run(args) -> None:
    if not 0 <= args.port <= 65535:
        raise CliError(f"--port must be between 0 and 65535, got {args.port}")
    try:
        server = make_server(args.export_dir, args.port)
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        raise CliError(f"port {args.port} is in use: pick another with --port") from None
    print(f"serving {args.export_dir} on {server.url} (the model runs in the browser; Ctrl-C stops)", flush=True)
    with server:
        server.serve_forever()
