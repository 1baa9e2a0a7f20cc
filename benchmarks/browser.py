"""In-browser encode and decode times of an ONNX export (`slimsam web`'s page in headless Chromium), beside
PyTorch's on the same model and photo, in one run.

    python benchmarks/browser.py [--model DIR --export DIR] [--encodes 3] [--clicks 20] [--threads 1 2]
                                 [--json PATH] [--markdown PATH]

Without --model/--export it builds a random model of SlimSAM-77's size (random_model("slimsam-77"); timing does
not depend on weight values), saves it and exports it with `slimsam export MODEL --format onnx --quantize none
int8`. For each variant (fp32, int8) and wasm thread count, the page is opened in headless Chromium
(Debian's chromium + chromium-driver; every host but 127.0.0.1 unresolvable), the example photo (Grace Hopper,
512x600) is encoded 1 + `--encodes` times (the first, untimed, warms up) and clicked 3 + `--clicks` times at
random points (a new single-point prompt each time; 3 warm-up clicks). The times are the page's own
(performance.now() around transformers.js's model calls). PyTorch: `slimsam.load_model` of the same weights
(fast attention) on the same photo, before and after the browser runs: `model.get_image_embeddings` for
the encoder and `SamPredictor.predict` (fast decoder, three masks at the photo's size) per click.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from slimsam.bench.speed import machine_description, time_calls, time_decode
from slimsam.cli.main import main as slimsam_main
from slimsam.data.samples import sample_photos
from slimsam.deploy.web import make_server
from slimsam.infer.predictor import SamPredictor
from slimsam.model.checkpoints import load_model
from slimsam.model.random_weights import random_model


def random_export(folder: Path) -> tuple[Path, Path]:
    """A random SlimSAM-77-sized model saved in folder/model and exported (fp32 + int8) to folder/onnx."""
    model, processor = random_model("slimsam-77", seed=0)
    model.save_pretrained(folder / "model")
    processor.save_pretrained(folder / "model")
    command = ["export", str(folder / "model"), "--format", "onnx", "--out", str(folder / "onnx"),
               "--quantize", "none", "int8"]
    if slimsam_main(command) != 0:
        sys.exit(f"slimsam {' '.join(command)} failed")
    return folder / "model", folder / "onnx"


def pytorch_times(model_dir: Path, encodes: int, clicks: int) -> dict:
    model, processor = load_model(str(model_dir))
    photo = sample_photos()[0]
    pixel_values = processor(images=photo, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        encode = time_calls(lambda: model.get_image_embeddings(pixel_values), torch.device("cpu"), 1, encodes)
    predictor = SamPredictor(model, processor)
    predictor.set_image(photo)
    decode = time_decode(predictor, clicks, np.random.default_rng(0))
    return {"runtime": "PyTorch (fast attention)", "weights": "fp32", "threads": torch.get_num_threads(),
            "encode_ms": encode, "decode_ms": decode}


def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800",
                     "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def page_times(url: str, dtype: str, threads: int, encodes: int, clicks: int) -> dict:
    """The page's own timings for one variant: encodes of the first example photo, single-point clicks."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium()
    wait = WebDriverWait(driver, 900)

    def timed(element_id: str, action) -> tuple[float, float]:
        element = driver.find_element(By.ID, element_id)
        before = element.get_attribute("data-count")
        action()
        wait.until(lambda _: element.get_attribute("data-count") != before
                   or "error" in driver.find_element(By.ID, "status").get_attribute("class"))
        if "error" in driver.find_element(By.ID, "status").get_attribute("class"):
            sys.exit(f"the page says: {driver.find_element(By.ID, 'status').text}")
        return float(element.get_attribute("data-ms")), float(element.get_attribute("data-extra-ms"))

    try:
        driver.get(f"{url}?dtype={dtype}&threads={threads}")
        wait.until(lambda _: driver.find_element(By.ID, "encode-time").get_attribute("data-count"))  # the warm-up
        example = driver.find_element(By.CSS_SELECTOR, "#examples button")
        encode = [timed("encode-time", example.click) for _ in range(encodes)]
        view, rng = driver.find_element(By.ID, "view"), np.random.default_rng(0)
        decode = []
        for _ in range(3 + clicks):
            x, y = (rng.uniform(-0.45, 0.45, 2) * [view.size["width"], view.size["height"]]).astype(int)
            decode.append(timed("decode-time", ActionChains(driver).move_to_element_with_offset(view, x, y)
                                .click().perform))
            driver.find_element(By.ID, "clear").click()
        info = driver.find_element(By.ID, "model-info").text
    finally:
        driver.quit()
    return {"runtime": "browser, WebAssembly", "weights": {"fp32": "fp32", "q8": "int8"}[dtype], "model_info": info,
            "threads": threads, "encode_ms": [ms for ms, _ in encode], "preprocess_ms": [extra for _, extra in encode],
            "decode_ms": [ms for ms, _ in decode[3:]], "upscale_ms": [extra for _, extra in decode[3:]]}


def markdown(rows: list[dict]) -> str:
    def cell(values):
        return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})" if values else "-"
    header = ("| runtime | weights | threads | encode ms (median, min-max) | decode ms/click (median, min-max) "
              "| + mask upscaling ms (median) |")
    lines = [header, "|---|---|---|---|---|---|"]
    for row in rows:
        upscale = f"{statistics.median(row['upscale_ms']):,.0f}" if row.get("upscale_ms") else "included"
        lines.append(f"| {row['runtime']} | {row['weights']} | {row['threads']} | {cell(row['encode_ms'])} | "
                     f"{cell(row['decode_ms'])} | {upscale} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="the PyTorch model folder the export was made from")
    parser.add_argument("--export", type=Path, help="its `slimsam export --format onnx` folder (fp32 and int8)")
    parser.add_argument("--encodes", type=int, default=3)
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="wasm thread counts to try")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    if (args.model is None) != (args.export is None):
        parser.error("give both --model and --export, or neither")
    with tempfile.TemporaryDirectory() as scratch:
        model_dir, export_dir = (args.model, args.export) if args.model else random_export(Path(scratch))
        server = make_server(export_dir, port=0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        rows = [pytorch_times(model_dir, args.encodes, args.clicks)]
        for dtype in ("fp32", "q8"):
            for threads in args.threads:
                rows.append(page_times(server.url, dtype, threads, args.encodes, args.clicks))
                print(markdown(rows[-1:]).splitlines()[-1], flush=True)
        again = pytorch_times(model_dir, args.encodes, args.clicks)  # how much the machine drifted meanwhile
        rows.append(again | {"runtime": "PyTorch (fast attention), again"})
        server.shutdown()
    table = markdown(rows)
    print(table)
    machine = machine_description("cpu") | {"started_utc": started}
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
