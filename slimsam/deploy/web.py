"""`slimsam web`: a page that segments photos in the browser with an ONNX export, through transformers.js.

Everything runs in the browser (onnxruntime-web, WebAssembly): the page encodes a photo once and decodes each
click itself. The server only serves files, listed once at start-up, from 127.0.0.1; the page fetches nothing
from anywhere else:

    /                                  the page (slimsam/deploy/page/index.html; /page/... its script and style)
    /site.json                         what the page needs to know: the export's variants, the example photos
    /transformers/transformers.min.js  transformers.js's browser bundle (onnxruntime-web inside), from npm
    /ort/ort-wasm-simd-threaded.asyncify.{mjs,wasm}  onnxruntime-web's WebAssembly runtime (transformers.js would
                                       otherwise load it from cdn.jsdelivr.net)
    /models/export/...                 the export folder (the page sets env.localModelPath = '/models/')
    /examples/N.jpg|png                sample photos (slimsam.data.samples)

The npm files come from clients/js/node_modules (`npm ci` in clients/js). The headers make the page
cross-origin isolated, which onnxruntime-web needs to run WebAssembly threads.
"""
from __future__ import annotations

import json
import logging
import mimetypes
import shutil
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from slimsam.data.samples import sample_photo_paths

LOG = logging.getLogger(__name__)

PAGE = Path(__file__).parent / "page"
NODE_MODULES = Path(__file__).parents[2] / "clients" / "js" / "node_modules"
NPM_FILES = {  # URL -> path inside node_modules
    "/transformers/transformers.min.js": "@huggingface/transformers/dist/transformers.min.js",
    "/ort/ort-wasm-simd-threaded.asyncify.mjs": "onnxruntime-web/dist/ort-wasm-simd-threaded.asyncify.mjs",
    "/ort/ort-wasm-simd-threaded.asyncify.wasm": "onnxruntime-web/dist/ort-wasm-simd-threaded.asyncify.wasm",
}
MODEL_URL = "/models/export/"
# transformers.js `dtype` -> the file suffix it loads (onnx/vision_encoder{suffix}.onnx) and what the page calls it
VARIANTS = (("fp32", "", "fp32"), ("q8", "_quantized", "int8"), ("fp16", "_fp16", "fp16"))
GRAPHS = ("vision_encoder", "prompt_encoder_mask_decoder")
HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",  # these two make the page cross-origin isolated:
    "Cross-Origin-Embedder-Policy": "require-corp",  # SharedArrayBuffer, so wasm threads
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-cache",  # an export re-written under the same port must not come from the cache
}
TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
         ".json": "application/json", ".onnx": "application/octet-stream"}


def export_variants(export_dir: Path) -> list[dict]:
    """The variants whose two graphs are both in `export_dir`: dtype (transformers.js's name), label, MB."""
    variants = []
    for dtype, suffix, label in VARIANTS:
        files = [export_dir / "onnx" / f"{graph}{suffix}.onnx" for graph in GRAPHS]
        if all(file.is_file() for file in files):
            variants.append({"dtype": dtype, "label": label,
                             "megabytes": round(sum(file.stat().st_size for file in files) / 1e6, 1)})
    return variants


def check_export(export_dir: Path) -> list[dict]:
    """The export's variants; FileNotFoundError with what to do if `export_dir` is not an ONNX export."""
    if not export_dir.is_dir():
        raise FileNotFoundError(f"no folder {export_dir}: make one with `slimsam export MODEL --format onnx --out DIR`")
    missing = [name for name in ("config.json", "preprocessor_config.json") if not (export_dir / name).is_file()]
    variants = export_variants(export_dir)
    if missing or not variants:
        what = ", ".join(missing) if missing else f"onnx/{GRAPHS[0]}.onnx + onnx/{GRAPHS[1]}.onnx"
        raise FileNotFoundError(f"{export_dir} is not an ONNX export (no {what}): make one with "
                                f"`slimsam export MODEL --format onnx --out {export_dir}`")
    return variants


def npm_routes(node_modules: Path) -> dict[str, Path]:
    routes = {url: node_modules / relative for url, relative in NPM_FILES.items()}
    missing = [str(path) for path in routes.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"the page needs transformers.js from npm, and {missing[0]} is missing: "
                                f"run `npm ci` in {node_modules.parent}")
    return routes


def site_routes(export_dir: str | Path, node_modules: Path | None = None) -> tuple[dict[str, Path], dict]:
    """Every URL the server answers, mapped to its file, and the page's site.json. Raises FileNotFoundError
    (one line: what to do) for a folder that is not an ONNX export or missing npm packages.
    node_modules: where `npm ci` put transformers.js (default NODE_MODULES: clients/js/node_modules)."""
    export_dir = Path(export_dir).resolve()
    variants = check_export(export_dir)
    routes = {"/": PAGE / "index.html", **{f"/page/{path.name}": path for path in sorted(PAGE.iterdir())},
              **npm_routes(node_modules or NODE_MODULES)}
    routes.update({MODEL_URL + path.relative_to(export_dir).as_posix(): path
                   for path in sorted(export_dir.rglob("*")) if path.is_file() and not path.name.startswith(".")})
    examples = []
    for index, path in enumerate(sample_photo_paths()):
        url = f"/examples/{index}{path.suffix.lower()}"
        routes[url] = path
        examples.append({"url": url, "name": path.stem.replace("_", " ")})
    config = json.loads((export_dir / "config.json").read_text())
    site = {"name": export_dir.name, "image_size": config.get("vision_config", {}).get("image_size", 1024),
            "variants": variants, "examples": examples}
    return routes, site


class PageHandler(BaseHTTPRequestHandler):
    """GET and HEAD of the listed files; anything else is 404 (unlisted path) or 501 (other methods)."""

    server: PageServer

    def _send_headers(self, status: int, content_type: str, length: int) -> None:
        self.send_response(status)
        for name, value in HEADERS.items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def _answer(self, with_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        self.server.requests.append(path)
        if path == "/site.json":
            body = json.dumps(self.server.site).encode()
            self._send_headers(200, "application/json", len(body))
            if with_body:
                self.wfile.write(body)
            return
        file = self.server.routes.get(path)
        if file is None or not file.is_file():
            self._send_headers(404, "text/plain", 0)
            return
        content_type = TYPES.get(file.suffix) or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        self._send_headers(200, content_type, file.stat().st_size)
        if with_body:
            with open(file, "rb") as handle:
                shutil.copyfileobj(handle, self.wfile)

    def do_GET(self) -> None:  # http.server's names
        self._answer(with_body=True)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def log_message(self, format: str, *args) -> None:
        LOG.debug("%s %s", self.address_string(), format % args)


class PageServer(ThreadingHTTPServer):
    """The page's file server on 127.0.0.1. `requests` lists every path asked for, in order."""

    daemon_threads = True

    def __init__(self, routes: dict[str, Path], site: dict, port: int) -> None:
        self.routes, self.site, self.requests = routes, site, []
        super().__init__(("127.0.0.1", port), PageHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


def make_server(export_dir: str | Path, port: int = 7870, node_modules: Path | None = None) -> PageServer:
    """A server for `export_dir` on 127.0.0.1:port (0: any free port), not yet serving: call serve_forever().
    FileNotFoundError for a folder that is not an export or missing npm files; OSError if the port is taken."""
    routes, site = site_routes(export_dir, node_modules)
    return PageServer(routes, site, port)
