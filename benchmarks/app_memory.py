"""The comparison app's memory: per session, for huge uploads, for segment-everything.

    python benchmarks/app_memory.py --app-root CHECKOUT [--app-root ANOTHER] [--photo-side 13000]

For each checkout, in fresh processes set up as that checkout's app.py sets itself up (slimsam.infer.heap),
with a SlimSAM-77-sized random model (as benchmarks/app_latency.py makes it):
  1. a session after typical use: the example photo, a click decoded by the model in both panes, its
     downloads: the bytes its photo, embeddings, masks and picture hold;
  2. segment-everything on the example photo: the peak while it runs and the resident memory after;
  3. uploads: four threads each load a PHOTO_SIDE x PHOTO_SIDE PNG into its own session at once (the app's
     `load_photo` handler); the process's peak and its resident memory afterwards (the four 2048 px working
     copies included, 50 MB), above where it started.
Resident memory is /proc/self/statm's; the peak is getrusage's maxrss (both of the whole process).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import inspect, json, resource, sys, threading
    import numpy as np
    from PIL import Image
    from slimsam.infer import heap
    if "large_blocks" in inspect.signature(heap.keep_freed_memory_in_heap).parameters:
        heap.keep_freed_memory_in_heap(large_blocks=True)
    else:
        heap.keep_freed_memory_in_heap()
    from demo import handlers
    from demo.models import ModelStore
    from demo.session import Session

    def resident_mb():
        return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2 ** 20

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    photo, model, example, what = sys.argv[1:5]
    new_api = "ctx" in inspect.signature(handlers.load_photo).parameters
    store = ModelStore({"M": model}, device="cpu")
    store.get("M")
    ctx = handlers.AppContext(store, {"left": "M", "right": "M"}) if new_api else \\
        handlers.AppContext(store, {"left": "M", "right": "M"}, __import__("pathlib").Path("/tmp"))

    def load(session, path):
        if new_api:
            handlers.load_photo(ctx, session, path)
        else:
            handlers.load_photo(session, path)

    figures = {}
    if what == "uploads":  # in a process of its own: the peak is the process's
        start = resident_mb()
        sessions = [Session() for _ in range(4)]
        threads = [threading.Thread(target=load, args=(session, photo)) for session in sessions]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        figures["uploads"] = {"peak_above_start_mb": round(peak_mb() - start),
                              "after_mb": round(resident_mb() - start), "working_copy": list(sessions[0].image.shape)}
        print(json.dumps(figures))
        sys.exit()
    session = Session()
    load(session, example)
    handlers.add_click(session, "Positive point", 250, 300)
    for side in ("left", "right"):
        handlers.run_pane(ctx, side, "M", True, session)
        if new_api:
            handlers.show_pane(side, session)
            handlers.pane_downloads(side, session)
    held = {"photo": session.image.nbytes,
            "embeddings": sum(t.nbytes for entry in session.cache._entries.values()
                              for t in (entry.embedding, *(v for v in vars(entry.decoder_context).values()
                                                           if hasattr(v, "nbytes")))),
            "masks": sum(r.masks.nbytes for r in session.results.values() if r.masks is not None)}
    if new_api:
        held["picture"] = session.backdrop().base.nbytes + session.backdrop().tinted.nbytes
    figures["session_mb"] = {name: round(value / 2 ** 20, 1) for name, value in held.items()}
    figures["session_mb"]["total"] = round(sum(held.values()) / 2 ** 20, 1)
    figures["embeddings_cached"] = len(session.cache)

    before, peak_before = resident_mb(), peak_mb()
    handlers.segment_everything(session)
    handlers.run_pane(ctx, "left", "M", True, session)
    figures["everything"] = {"peak_growth_mb": round(peak_mb() - max(peak_before, before)),  # above all before
                             "after_mb": round(resident_mb() - before)}
    print(json.dumps(figures))
""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app-root", type=Path, action="append", required=True)
    parser.add_argument("--models", type=Path, default=Path("/tmp/slimsam-app-bench-models"))
    parser.add_argument("--photo-side", type=int, default=13000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/app"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(Path(__file__).parent))
    from app_latency import make_models
    model, _ = make_models(args.models)
    photo = args.models / f"upload-{args.photo_side}.png"
    if not photo.exists():
        from PIL import Image
        Image.new("RGB", (args.photo_side, args.photo_side), (90, 140, 200)).save(photo, compress_level=1)
    from slimsam.data.samples import sample_photo_paths
    example = str(sample_photo_paths()[0])
    results = {}
    for root in args.app_root:
        root = root.resolve()
        env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
        results[root.name] = {}
        for what in ("uploads", "session"):  # a fresh process each
            output = subprocess.run([sys.executable, "-W", "ignore", "-c", SCRIPT, str(photo), str(model), example,
                                     what], cwd=root, env=env, capture_output=True, text=True, check=True).stdout
            results[root.name].update(json.loads(output.splitlines()[-1]))
        print(root.name, json.dumps(results[root.name]), flush=True)
    (args.out / "app_memory.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
