"""What a user of the comparison app waits for: segment-everything, and a click until both masks show.

    python benchmarks/app_latency.py --app-root /path/to/checkout [--app-root another] --out DIR

For each checkout (e.g. an older commit in a git worktree, and this one), in one run so that the ratios
share the machine and its load:
  1. segment-everything in-process: `MaskGenerator(predictor, **demo.handlers.EVERYTHING_OPTIONS).generate()`
     on a SlimSAM-77-sized model (random weights) and the first example photo, the embedding cached; once with
     the app's thresholds and once with every mask kept (thresholds off: the most upscaling work there can be);
  2. the page in headless Chromium (Debian's chromium + chromedriver, via Selenium): `python app.py` with a
     SlimSAM-77-sized random model in each pane; pick the first example, then click at random spots on the
     photo and time each click, from the browser's click event to both panes' new images having loaded
     (their `load` events); then "Segment everything", from the click to both panes' texts reporting masks.

The models are real-size architectures with random weights (slimsam.model.random_weights), saved once with
save_pretrained into --models (default /tmp/slimsam-app-bench-models). Prints a markdown table and writes
app_latency.json into --out.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

EVERYTHING_SCRIPT = textwrap.dedent("""
    import json, statistics, sys, time
    import numpy as np
    import torch
    from demo import handlers
    from slimsam import SamPredictor, load_model
    from slimsam.data.samples import sample_photos
    from slimsam.infer.everything import MaskGenerator
    from slimsam.infer.heap import keep_freed_memory_in_heap
    keep_freed_memory_in_heap()
    torch.set_num_threads(int(sys.argv[3]))
    model, processor = load_model(sys.argv[1])
    predictor = SamPredictor(model, processor)
    predictor.set_image(np.asarray(sample_photos()[0]))
    figures = {}
    for name, extra in (("app thresholds", {}), ("every mask kept", dict(pred_iou_thresh=-1e9,
                                                                         stability_score_thresh=-1e9))):
        times, counts = [], []
        for _ in range(int(sys.argv[2])):
            start = time.perf_counter()
            found = MaskGenerator(predictor, **{**handlers.EVERYTHING_OPTIONS, **extra}).generate()
            times.append(time.perf_counter() - start)
            counts.append(len(found))
        figures[name] = {"seconds": times, "median_s": statistics.median(times), "masks": counts[-1]}
    print(json.dumps(figures))
""")

# Installed before the click: records the click's time and the first `load` of a new image in each pane.
WATCH_SCRIPT = """
window.__bench = {click: null, loads: {}};
document.addEventListener('click', (event) => {
  if (window.__bench.click === null) window.__bench.click = event.timeStamp;
}, true);
document.addEventListener('load', (event) => {
  const bench = window.__bench;
  if (bench.click === null || event.target.tagName !== 'IMG') return;
  for (const side of ['left', 'right']) {
    if (event.target.closest('#' + side + '-overlay') && !(side in bench.loads)) {
      bench.loads[side] = performance.now();
    }
  }
}, true);
"""


def make_models(folder: Path) -> tuple[Path, Path]:
    """Two SlimSAM-77-sized random models (different seeds) as save_pretrained folders, made once."""
    from slimsam.model.random_weights import random_model
    paths = folder / "slimsam77-seed0", folder / "slimsam77-seed1"
    for seed, path in enumerate(paths):
        if not (path / "config.json").exists():
            model, processor = random_model("slimsam-77", seed)
            model.save_pretrained(path)
            processor.save_pretrained(path)
    return paths


def everything_in_process(root: Path, model: Path, repeats: int, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    output = subprocess.run([sys.executable, "-c", EVERYTHING_SCRIPT, str(model), str(repeats), str(threads)],
                            cwd=root, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(output.splitlines()[-1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(root: Path, left: Path, right: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen([sys.executable, "app.py", "--left", str(left), "--right", str(right),
                               "--port", str(port)], cwd=root, env=env, stdout=open(log_path, "w"),
                              stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"app.py exited: {log_path.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, f"http://127.0.0.1:{port}/"
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


def browser(width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def page_figures(url: str, clicks: int, warmup: int, width: int, height: int, seed: int) -> dict:
    """Click-to-both-masks times (ms) and segment-everything time (s) in the page."""
    import random

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser(width, height)
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 300)

        def pane_texts():
            return [driver.find_element(By.ID, f"{side}-text").text for side in ("left", "right")]

        wait.until(lambda _: driver.find_elements(By.CSS_SELECTOR, "#examples button.thumbnail-item"))
        driver.find_elements(By.CSS_SELECTOR, "#examples button.thumbnail-item")[0].click()
        wait.until(lambda _: all("encode" in text for text in pane_texts()))
        # Older pages take clicks on a separate photo, newer ones on the panes themselves.
        targets = driver.find_elements(By.CSS_SELECTOR, "#photo img") or \
            driver.find_elements(By.CSS_SELECTOR, "#left-overlay img")
        target = targets[0]
        rng = random.Random(seed)
        times = []
        for index in range(warmup + clicks):
            driver.execute_script(WATCH_SCRIPT)
            box = target.size
            dx = rng.uniform(-0.4, 0.4) * box["width"]
            dy = rng.uniform(-0.4, 0.4) * box["height"]
            ActionChains(driver).move_to_element_with_offset(target, int(dx), int(dy)).click().perform()
            WebDriverWait(driver, 60, poll_frequency=0.02).until(
                lambda _: driver.execute_script("return Object.keys(window.__bench.loads).length") == 2)
            bench = driver.execute_script("return window.__bench")
            if index >= warmup:
                times.append(max(bench["loads"].values()) - bench["click"])
            time.sleep(0.3)  # let the follow-up events (agreement line) finish
        button = next(b for b in driver.find_elements(By.TAG_NAME, "button")
                      if "everything" in b.text.lower())
        start = time.perf_counter()
        button.click()
        WebDriverWait(driver, 600, poll_frequency=0.05).until(
            lambda _: all(" masks" in text for text in pane_texts()))
        everything = time.perf_counter() - start
    finally:
        driver.quit()
    return {"click_ms": times, "click_median_ms": statistics.median(times), "everything_page_s": everything}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app-root", type=Path, action="append", required=True,
                        help="a checkout of this repository whose app.py to measure (repeatable)")
    parser.add_argument("--models", type=Path, default=Path("/tmp/slimsam-app-bench-models"))
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="in-process segment-everything runs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--window", default="1280x800", help="browser window WxH")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/app"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    left, right = make_models(args.models)
    width, height = (int(v) for v in args.window.split("x"))
    results = {}
    for root in args.app_root:
        root = root.resolve()
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        name = f"{root.name}@{commit}"
        print(f"## {name}", flush=True)
        figures = {"everything_in_process": everything_in_process(root, left, args.repeats, args.threads)}
        print(json.dumps(figures), flush=True)
        server, url = start_app(root, left, right, args.out / f"server-{root.name}.log")
        try:
            figures["page"] = page_figures(url, args.clicks, args.warmup, width, height, seed=0)
        finally:
            server.terminate()
            server.wait(timeout=30)
        print(json.dumps(figures["page"]), flush=True)
        results[name] = figures
    (args.out / "app_latency.json").write_text(json.dumps(results, indent=2))
    print("\n| checkout | everything, app thresholds (s) | everything, every mask kept (s) | click to both masks, "
          "median (ms) | everything in the page, both panes (s) |\n|---|---|---|---|---|")
    for name, figures in results.items():
        process, page = figures["everything_in_process"], figures["page"]
        print(f"| {name} | {process['app thresholds']['median_s']:.2f} | {process['every mask kept']['median_s']:.2f} "
              f"| {page['click_median_ms']:.0f} | {page['everything_page_s']:.1f} |")


if __name__ == "__main__":
    main()
