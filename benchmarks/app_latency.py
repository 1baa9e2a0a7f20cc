"""What a user of the comparison app waits for: segment-everything, and a click until both masks show.

    python benchmarks/app_latency.py --app-root OLD_CHECKOUT --app-root NEW_CHECKOUT --out DIR

Every checkout given (e.g. an older commit's `git archive` and this working tree) is measured in one run,
its samples interleaved with the others' (A, B, A, B, ...), so that the ratios share the machine and its
load, which on a shared 2-core VM drifts by a third within minutes:
  1. segment-everything in-process: `MaskGenerator(predictor, **demo.handlers.EVERYTHING_OPTIONS).generate()`
     on a SlimSAM-77-sized model (random weights) and the first example photo, the embedding cached, in one
     long-lived process per checkout set up as that checkout's app.py sets itself up (slimsam.infer.heap) and
     warmed up by one untimed run; once with the app's thresholds and once with every mask kept (thresholds
     off: the most upscaling there can be); wall and CPU seconds (CPU time counts only while the process ran,
     so it is less at the mercy of other jobs than wall time);
  2. the page in headless Chromium (Debian's chromium + chromedriver, via Selenium), one `python app.py` per
     checkout running side by side with a SlimSAM-77-sized random model in each pane: pick the first example,
     then click at random spots (the same spots for every checkout) and time each click, from the browser's
     click event to both panes' new images having loaded (their `load` events); then "Segment everything",
     from the click to both panes' texts reporting masks.

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
    # A worker: set up as this checkout's app.py sets itself up, the example photo encoded, one untimed run of
    # each setting; then one timed run per line read ("app thresholds" or "every mask kept"), answered as JSON.
    import inspect, json, sys, time
    import numpy as np
    import torch
    from demo import handlers
    from slimsam import SamPredictor, load_model
    from slimsam.data.samples import sample_photos
    from slimsam.infer.everything import MaskGenerator
    from slimsam.infer import heap
    if "large_blocks" in inspect.signature(heap.keep_freed_memory_in_heap).parameters:  # newer app.py
        heap.keep_freed_memory_in_heap(large_blocks=True)
    else:
        heap.keep_freed_memory_in_heap()
    torch.set_num_threads(int(sys.argv[2]))
    model, processor = load_model(sys.argv[1])
    predictor = SamPredictor(model, processor)
    predictor.set_image(np.asarray(sample_photos()[0]))
    SETTINGS = {"app thresholds": {}, "every mask kept": dict(pred_iou_thresh=-1e9, stability_score_thresh=-1e9)}

    def run(setting):
        wall, cpu = time.perf_counter(), time.process_time()
        found = MaskGenerator(predictor, **{**handlers.EVERYTHING_OPTIONS, **SETTINGS[setting]}).generate()
        return {"seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu, "masks": len(found)}
    for setting in SETTINGS:
        run(setting)
    print("ready", flush=True)
    for line in sys.stdin:
        print(json.dumps(run(line.strip())), flush=True)
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


class EverythingWorker:
    """One checkout's EVERYTHING_SCRIPT, kept running (warm) between timed runs."""

    def __init__(self, root: Path, model: Path, threads: int) -> None:
        env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
        self.process = subprocess.Popen([sys.executable, "-c", EVERYTHING_SCRIPT, str(model), str(threads)], cwd=root,
                                        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the segment-everything worker for {root} did not start")

    def run(self, setting: str) -> dict:
        self.process.stdin.write(setting + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


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
    deadline = time.time() + 600  # a loaded 2-core machine can take minutes to import gradio and torch
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"app.py exited: {log_path.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, f"http://127.0.0.1:{port}/"
        except OSError:
            if time.time() > deadline:
                server.terminate()
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


class Page:
    """One checkout's app in its own headless Chromium tab, the first example photo picked and encoded."""

    def __init__(self, url: str, width: int, height: int) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait
        self.driver = browser(width, height)
        self.driver.get(url)
        wait = WebDriverWait(self.driver, 300)
        wait.until(lambda _: self.driver.find_elements(By.CSS_SELECTOR, "#examples button.thumbnail-item"))
        self.driver.find_elements(By.CSS_SELECTOR, "#examples button.thumbnail-item")[0].click()
        wait.until(lambda _: all("encode" in text for text in self.pane_texts()))
        # Older pages take clicks on a separate photo, newer ones on the panes themselves.
        self.target = (self.driver.find_elements(By.CSS_SELECTOR, "#photo img") or
                       self.driver.find_elements(By.CSS_SELECTOR, "#left-overlay img"))[0]

    def pane_texts(self) -> list[str]:
        from selenium.webdriver.common.by import By
        return [self.driver.find_element(By.ID, f"{side}-text").text for side in ("left", "right")]

    def click_ms(self, dx: float, dy: float) -> float:
        """Click at (dx, dy) of the photo's size from its centre; ms until both panes' new images have loaded."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.support.ui import WebDriverWait
        self.driver.execute_script(WATCH_SCRIPT)
        box = self.target.size
        ActionChains(self.driver).move_to_element_with_offset(
            self.target, int(dx * box["width"]), int(dy * box["height"])).click().perform()
        WebDriverWait(self.driver, 120, poll_frequency=0.02).until(
            lambda _: self.driver.execute_script("return Object.keys(window.__bench.loads).length") == 2)
        bench = self.driver.execute_script("return window.__bench")
        time.sleep(0.5)  # let the follow-up events (downloads, agreement line) finish
        return max(bench["loads"].values()) - bench["click"]

    def everything_s(self) -> float:
        """Seconds from a click on "Segment everything" until both panes report their masks."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait
        button = next(b for b in self.driver.find_elements(By.TAG_NAME, "button") if "everything" in b.text.lower())
        start = time.perf_counter()
        button.click()
        WebDriverWait(self.driver, 900, poll_frequency=0.05).until(
            lambda _: all(" masks" in text for text in self.pane_texts()))
        return time.perf_counter() - start


def checkout_name(root: Path) -> str:
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return f"{root.name}@{commit}" if commit else root.name


def main() -> None:
    import random
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app-root", type=Path, action="append", required=True,
                        help="a checkout of this repository whose app.py to measure (repeatable)")
    parser.add_argument("--models", type=Path, default=Path("/tmp/slimsam-app-bench-models"))
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="in-process segment-everything runs per checkout")
    parser.add_argument("--everything-in-page", type=int, default=1, help="segment-everything runs in the page")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--window", default="1280x800", help="browser window WxH")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/app"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    left, right = make_models(args.models)
    width, height = (int(v) for v in args.window.split("x"))
    roots = [root.resolve() for root in args.app_root]
    names = [checkout_name(root) for root in roots]
    results = {name: {"everything_in_process": {}, "click_ms": [], "everything_page_s": []} for name in names}
    workers = [EverythingWorker(root, left, args.threads) for root in roots] if args.repeats else []
    for round_ in range(args.repeats):  # A, B, A, B, ...: the checkouts share the machine's moods
        for setting in ("app thresholds", "every mask kept"):
            for worker, name in zip(workers, names):
                figures = worker.run(setting)
                process = results[name]["everything_in_process"].setdefault(setting,
                                                                            {"seconds": [], "cpu_seconds": []})
                process["seconds"].append(figures["seconds"])
                process["cpu_seconds"].append(figures["cpu_seconds"])
                results[name].setdefault("everything_masks", {})[setting] = figures["masks"]
                print(f"everything in-process, round {round_ + 1}, {setting}, {name}: {json.dumps(figures)}",
                      flush=True)
    for worker in workers:
        worker.close()
    (args.out / "app_latency.json").write_text(json.dumps(results, indent=2))  # kept if the page part fails
    servers, pages = [], []
    try:
        for root in roots if args.clicks or args.everything_in_page else ():
            servers.append(start_app(root, left, right, args.out / f"server-{root.name}.log"))
        pages = [Page(url, width, height) for _, url in servers]
        rng = random.Random(0)
        for index in range(args.warmup + args.clicks):
            dx, dy = rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4)
            for name, page in zip(names, pages):  # the same spot, one checkout after the other
                milliseconds = page.click_ms(dx, dy)
                if index >= args.warmup:
                    results[name]["click_ms"].append(milliseconds)
        for _ in range(args.everything_in_page):
            for name, page in zip(names, pages):
                results[name]["everything_page_s"].append(page.everything_s())
    finally:
        for page in pages:
            page.driver.quit()
        for server, _ in servers:
            server.terminate()
            server.wait(timeout=30)
    (args.out / "app_latency.json").write_text(json.dumps(results, indent=2))
    print("\n| checkout | everything, app thresholds (s, median (CPU s); masks) | everything, every mask kept "
          "(s, median (CPU s); masks) | click to both masks (ms, median; min-max) | everything in the page, both "
          "panes (s) |\n|---|---|---|---|---|")

    def median(values: list[float], digits: int) -> str:
        return f"{statistics.median(values):.{digits}f}" if values else "-"

    for name, figures in results.items():
        process, clicks = figures["everything_in_process"], figures["click_ms"]
        masks = figures.get("everything_masks", {})
        spread = f" ({min(clicks):.0f}-{max(clicks):.0f})" if clicks else ""
        settings = [f"{median(process.get(setting, {}).get('seconds', []), 2)} (CPU "
                    f"{median(process.get(setting, {}).get('cpu_seconds', []), 2)}); {masks.get(setting, '-')}"
                    for setting in ("app thresholds", "every mask kept")]
        print(f"| {name} | {settings[0]} | {settings[1]} | {median(clicks, 0)}{spread} | "
              f"{', '.join(f'{s:.1f}' for s in figures['everything_page_s'])} |")


if __name__ == "__main__":
    main()
