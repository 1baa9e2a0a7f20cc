"""The SlimSAM paper's ablations at toy scale: mIoU on held-out synthetic shapes after the same distillation budget.

The teacher is the toy SAM (`slimsam.load_model("toy-sam")`, trained on seed 0's "train" split of
`slimsam.data.synthetic`). Every condition below runs at every --ratios and --seeds, and each result is the
point- and box-prompt mIoU (slimsam.evaluate.miou, the paper's protocol) of the slim model on the first
--test-count images of seed 0's "test" split:

    default          `slimsam slim` as it is (slimsam.distill.slim.slim): disturbed Taylor, alternate slimming
                     (step 1 embedding + bottleneck aligning, step 2 bottleneck + embedding aligning), head-block
                     embedding selection, the official step-2 features, rel-pos tables sliced
    taylor, magnitude, random   the same with SlimSettings.importance (labelled Taylor: SAM's mask loss)
    one-step         both dims pruned at once from one disturbed-Taylor gradient pass on the teacher
                     (slimsam.pruning: the scores of both steps, then prune_embedding_dim and prune_bottlenecks),
                     then ONE distillation of 2 x --epochs against the teacher's embedding only (the student
                     shares no other feature's shape with it): the same number of training epochs
    rel-pos-zeroed   the original code's flaw: the default run's bottleneck-pruned model with its rel-pos tables
                     zeroed, then embedding aligning as `slim` runs it (phases 1-3 are the default run's, copied:
                     `slim` is deterministic on CPU, so the two runs differ only in those tables)
    channels         SlimSettings.embedding_selection = "channels" (free channels instead of head blocks)
    block-outputs    SlimSettings.step2_features = "block-outputs" (the paper's Eq. 7 instead of the official
                     code's 2 x depth + 1 stream features)

The budget is the same for every condition: --train-count photos (seed 0's "train" split from index 3000 on:
images the teacher never saw), --epochs per alternate phase, the first --grad-size photos for each gradient
pass, mIoU validation on --val-count "val" images (which picks each phase's best epoch). The weight `a` of
the intermediate terms is scaled to the budget (--alpha-epochs: ceil(E / 2) and ceil(E / 2) + 1, which is the
official 10 and 11 at E = 20); everything else is `slim`'s default (Adam, lr 1e-4, batch 4).

Runs go --jobs at a time, each in its own process with --threads torch threads (tiny models: one thread
each is faster than two threads in one process). Each run writes OUT/runs/<ratio>/<condition>/seed<S>/
(the slim folder and result.json); a rerun skips finished runs and resumes unfinished ones. The table and the
comparisons with the default go to OUT/results.json and OUT/table.md.

    python benchmarks/toy_ablations.py --out runs/toy_ablations                # the whole ablation
    python benchmarks/toy_ablations.py --out /tmp/smoke --train-count 8 --val-count 2 --test-count 4 \\
        --epochs 2 --grad-size 4 --seeds 0 --ratios 0.5                        # a smoke test, minutes
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import logging
import math
import multiprocessing
import shutil
import statistics
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import torch

import slimsam
from slimsam.data import synthetic
from slimsam.data.annotations import AnnotatedDataset
from slimsam.data.files import write_folder_atomically, write_json_atomically
from slimsam.data.formats import open_annotations
from slimsam.data.images import iter_pixel_values, list_images
from slimsam.distill.slim import BOTTLENECK_PRUNED, EMBEDDING_PRUNED, FINAL, PHASES, SETTINGS_FILE, SlimSettings, slim
from slimsam.distill.train import TrainConfig, distill
from slimsam.evaluate.miou import evaluate
from slimsam.model.checkpoints import load_model, read_history, resolve, save_model
from slimsam.pruning.importance import accumulate_disturbed_taylor_gradients, bottleneck_scores, embedding_scores
from slimsam.pruning.steps import prune_bottlenecks, prune_embedding_dim

DEFAULT = "default"
CONDITIONS = {  # condition: what differs from the default recipe
    DEFAULT: "disturbed Taylor, alternate slimming, head blocks, official step-2 features, rel-pos sliced",
    "taylor": "labelled Taylor importance (SAM's mask loss)",
    "magnitude": "magnitude (L2) importance",
    "random": "random importance",
    "one-step": "one-step pruning: both dims at once, one distillation of 2 x E epochs",
    "rel-pos-zeroed": "rel-pos zeroed after bottleneck pruning (the original code)",
    "channels": "step 1 keeps free channels, not head blocks",
    "block-outputs": "step-2 features: block outputs only (the paper's Eq. 7)",
}
FIRST_TRAIN_INDEX = 3000  # the toy was trained on train images 0-2999: distil on images it never saw
ONE_STEP_PRUNED, ONE_STEP_DISTILL = "pruned", "distill"
RESULT_FILE = "result.json"
RESOLUTION = 0.001  # mIoU differences below this are not called larger than the seed spread


@dataclass(frozen=True)
class Job:
    """One run: a condition at a ratio and a seed, with the budget and the data."""

    condition: str
    ratio: float
    seed: int
    epochs: int
    grad_size: int
    teacher: str
    train: str
    val: str
    test: str
    folder: str
    teacher_sha256: str | None = None
    threads: int = 1

    @property
    def budget(self) -> dict:
        """What must be equal for two runs to be compared: the teacher's weights, the data and the budget."""
        return {"teacher_sha256": self.teacher_sha256, "epochs": self.epochs, "grad_size": self.grad_size,
                **{split: Path(folder).name for split, folder in (("train", self.train), ("val", self.val),
                                                                   ("test", self.test))}}

    @property
    def settings(self) -> SlimSettings:
        """What `slim` runs for this job (one-step uses only its training settings)."""
        half = math.ceil(self.epochs / 2)
        options = {"taylor": {"importance": "taylor"}, "magnitude": {"importance": "magnitude"},
                   "random": {"importance": "random"}, "channels": {"embedding_selection": "channels"},
                   "block-outputs": {"step2_features": "block-outputs"}}.get(self.condition, {})
        return SlimSettings(model=self.teacher, ratio=self.ratio, train=self.train, val=self.val, epochs=self.epochs,
                            grad_size=self.grad_size, seed=self.seed, alpha_epochs=(half, half + 1), **options)


# ---- data ----------------------------------------------------------------------------------------------

def write_data(folder: Path, train_count: int, val_count: int, test_count: int) -> dict[str, str]:
    """Seed 0's synthetic splits in the SA-1B layout (written once; a folder with the right count is reused)."""
    wanted = {"train": (train_count, FIRST_TRAIN_INDEX), "val": (val_count, 0), "test": (test_count, 0)}
    folders = {}
    for split, (count, start) in wanted.items():
        target = folder / f"{split}_{start}_{count}"
        if not target.exists():
            write = functools.partial(synthetic.write_split, split=split, count=count, seed=0, start=start)
            write_folder_atomically(target, write)
        folders[split] = str(target.resolve())
    return folders


def mious(folder: Path | str, test: str, prompts: tuple[str, ...] = ("point", "box")) -> dict[str, float]:
    """mIoU of a model folder (or alias) on the annotated test folder, per prompt kind."""
    model, processor = load_model(str(folder))
    dataset = AnnotatedDataset(open_annotations(test), processor)
    return {prompt: evaluate(model, processor, dataset, prompt, progress=False).miou for prompt in prompts}


# ---- the runs ------------------------------------------------------------------------------------------

def run_slim(job: Job) -> dict[str, float]:
    """`slim` with the job's settings; the point mIoU of its pruned models before their distillation (those of
    block-outputs are the default's: its settings change only the last phase)."""
    out = Path(job.folder)
    slim(job.settings, out, torch.device("cpu"))
    phases = () if job.condition == "block-outputs" else (EMBEDDING_PRUNED, BOTTLENECK_PRUNED)
    return {phase: mious(out / phase, job.test, ("point",))["point"] for phase in phases}


def run_rel_pos_zeroed(job: Job, default_folder: Path) -> dict[str, float]:
    """The default run's phases 1-3 with the step-2 pruned model's rel-pos zeroed, then `slim` does phase 4."""
    out = Path(job.folder)
    if not (out / SETTINGS_FILE).exists():
        def copy(tmp: Path) -> None:
            for phase in (EMBEDDING_PRUNED, PHASES[1]):
                shutil.copytree(default_folder / phase, tmp / phase)
            record = json.loads((default_folder / SETTINGS_FILE).read_text())
            record["embedding_mse"] = {k: v for k, v in record["embedding_mse"].items() if k in (EMBEDDING_PRUNED,
                                                                                                  PHASES[1])}
            (tmp / SETTINGS_FILE).write_text(json.dumps(record, indent=2))
            model, processor = load_model(str(default_folder / BOTTLENECK_PRUNED))
            with torch.no_grad():
                for layer in model.vision_encoder.layers:
                    layer.attn.rel_pos_h.zero_()
                    layer.attn.rel_pos_w.zero_()
            history = read_history(default_folder / BOTTLENECK_PRUNED) + [{"step": "zero rel-pos"}]
            save_model(model, processor, tmp / BOTTLENECK_PRUNED, history)
        write_folder_atomically(out, copy, overwrite=out.exists())
    slim(job.settings, out, torch.device("cpu"))
    return {BOTTLENECK_PRUNED: mious(out / BOTTLENECK_PRUNED, job.test, ("point",))["point"]}


def prune_one_step(job: Job, folder: Path) -> None:
    """Both dims of the teacher pruned at once, scored from one disturbed-Taylor gradient pass (saved to `folder`)."""
    model, processor = load_model(job.teacher)
    started = time.perf_counter()
    paths = list_images(job.train)[:job.grad_size]
    used = accumulate_disturbed_taylor_gradients(model, iter_pixel_values(paths, processor), seed=job.seed,
                                                 total=len(paths), progress=False)
    with torch.no_grad():
        hidden = embedding_scores(model, "taylor")  # both score sets from the same gradients, before any pruning
        attention, mlp = bottleneck_scores(model, "taylor")
        prune_embedding_dim(model, job.ratio, hidden)
        prune_bottlenecks(model, job.ratio, attention, mlp)
    model.zero_grad(set_to_none=True)
    record = {"step": "prune", "target": "embedding+bottleneck (one step)", "ratio": job.ratio,
              "importance": "disturbed-taylor", "images": used, "seed": job.seed, "source": resolve(job.teacher),
              "seconds": round(time.perf_counter() - started, 3)}
    save_model(model, processor, folder, [record])


def run_one_step(job: Job) -> dict[str, float]:
    """One-step pruning, then one distillation of 2 x epochs towards the teacher's embedding (a = 0)."""
    out = Path(job.folder)
    if not (out / ONE_STEP_PRUNED).exists():
        prune_one_step(job, out / ONE_STEP_PRUNED)
    if not (out / FINAL).exists():
        student, processor = load_model(str(out / ONE_STEP_PRUNED))
        teacher, _ = load_model(job.teacher)
        train_paths, val_paths = list_images(job.train), list_images(job.val)
        config = TrainConfig(stage=2, epochs=2 * job.epochs, alpha_epochs=0, seed=job.seed)
        best = distill(student, processor, teacher, train_paths, val_paths, out / ONE_STEP_DISTILL, config,
                       resume=True, history=read_history(out / ONE_STEP_PRUNED))
        model, processor = load_model(str(best))
        slimsam.export_model(model, processor, out / FINAL)
    return {"both dims pruned": mious(out / ONE_STEP_PRUNED, job.test, ("point",))["point"]}


def run_job(job: Job, default_folder: str | None = None) -> dict:
    """One run in a worker process (logs to its folder); returns and writes its result.json."""
    out = Path(job.folder)
    resumed = out.exists()  # an earlier attempt was interrupted: this one's times cover only the rest
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(job.threads)
    started, cpu_started = time.perf_counter(), time.process_time()
    log_file = out.with_name(out.name + ".log")
    with open(log_file, "a") as log, contextlib.redirect_stderr(log):
        handler = logging.StreamHandler(log)
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.INFO)
        try:
            if job.condition == "one-step":
                before = run_one_step(job)
            elif job.condition == "rel-pos-zeroed":
                before = run_rel_pos_zeroed(job, Path(default_folder))
            else:
                before = run_slim(job)
            final = mious(out / FINAL, job.test)
        finally:
            logging.getLogger().removeHandler(handler)
    result = {"condition": job.condition, "ratio": job.ratio, "seed": job.seed, "budget": job.budget,
              "point": final["point"], "box": final["box"], "before_distillation": before,
              "seconds": round(time.perf_counter() - started, 1),
              "cpu_seconds": round(time.process_time() - cpu_started, 1), "resumed": resumed}
    write_json_atomically(out / RESULT_FILE, result)
    return result


# ---- scheduling ----------------------------------------------------------------------------------------

def run_all(jobs: list[Job], workers: int) -> None:
    """Run every job not finished yet, `workers` at a time; a rel-pos-zeroed run starts once its default run is
    done (it starts from that run's phases)."""
    results = {}
    waiting = []
    for job in jobs:
        done = Path(job.folder) / RESULT_FILE
        if done.exists():
            results[job] = json.loads(done.read_text())
        else:
            waiting.append(job)

    def default_of(job: Job) -> Job:
        return next(j for j in jobs if j.condition == DEFAULT and (j.ratio, j.seed) == (job.ratio, job.seed))

    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
    with futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        running = {}
        while waiting or running:
            for job in [j for j in waiting if j.condition != "rel-pos-zeroed" or default_of(j) in results]:
                if len(running) >= workers:
                    break
                waiting.remove(job)
                running[pool.submit(run_job, job, default_of(job).folder)] = job
                print(f"started {job.condition} ratio {job.ratio} seed {job.seed}", flush=True)
            done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                results[job] = future.result()
                print(f"done {job.condition} ratio {job.ratio} seed {job.seed}: point {results[job]['point']:.4f}, "
                      f"box {results[job]['box']:.4f} ({results[job]['seconds']:.0f} s)", flush=True)


# ---- the tables ----------------------------------------------------------------------------------------

def finished_runs(out: Path, budget: dict) -> list[dict]:
    """Every finished run in OUT made with this budget (a call with other --seeds or --conditions adds to the
    table), in the order of CONDITIONS, ratio, seed."""
    found = [json.loads(path.read_text()) for path in sorted((out / "runs").glob(f"*/*/seed*/{RESULT_FILE}"))]
    kept = [r for r in found if r["budget"] == budget]
    if len(kept) < len(found):
        print(f"left out {len(found) - len(kept)} runs made with another teacher, data or budget", flush=True)
    order = list(CONDITIONS)
    return sorted(kept, key=lambda r: (order.index(r["condition"]), r["ratio"], r["seed"]))


def spread_cell(values: list[float]) -> str:
    """mean (min-max over seeds)."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def comparisons(results: list[dict], ratios: list[float]) -> list[dict]:
    """Every condition against the default at each ratio, paired by seed (same photos, same data order).

    A difference counts as larger than the seed spread when |mean difference| exceeds the range over seeds of
    either condition (the larger of the two) and is at least RESOLUTION (the tables' last digit).
    """
    by_key = {(r["condition"], r["ratio"], r["seed"]): r for r in results}
    rows = []
    for condition in dict.fromkeys(r["condition"] for r in results):
        for ratio in ratios:
            seeds = sorted(s for (c, q, s) in by_key if c == condition and q == ratio and (DEFAULT, q, s) in by_key)
            if condition == DEFAULT or not seeds:
                continue
            for prompt in ("point", "box"):
                ours = [by_key[(condition, ratio, s)][prompt] for s in seeds]
                base = [by_key[(DEFAULT, ratio, s)][prompt] for s in seeds]
                difference = statistics.mean(ours) - statistics.mean(base)
                spread = max(max(ours) - min(ours), max(base) - min(base))
                rows.append({"condition": condition, "ratio": ratio, "prompt": prompt, "seeds": seeds,
                             "difference": difference, "per_seed": [o - b for o, b in zip(ours, base)],
                             "spread": spread, "beyond_spread": len(seeds) > 1 and abs(difference) > spread
                             and abs(difference) >= RESOLUTION})
    return rows


def tables(results: list[dict], ratios: list[float], teacher: dict[str, float]) -> str:
    """The markdown the script prints and writes to table.md."""
    lines = [f"teacher: point mIoU {teacher['point']:.3f}, box mIoU {teacher['box']:.3f}", "",
             "| condition | differs from the default | " + " | ".join(f"{r} point | {r} box" for r in ratios) + " |",
             "|---|---|" + "---|---|" * len(ratios)]
    for condition in dict.fromkeys(r["condition"] for r in results):
        cells = []
        for ratio in ratios:
            for prompt in ("point", "box"):
                values = [r[prompt] for r in results if (r["condition"], r["ratio"]) == (condition, ratio)]
                cells.append(spread_cell(values) if values else "-")
        lines.append(f"| {condition} | {CONDITIONS[condition]} | " + " | ".join(cells) + " |")
    lines += ["", "Point mIoU before distillation (mean over seeds):", "",
              "| condition | model | " + " | ".join(str(r) for r in ratios) + " |", "|---|---|" + "---|" * len(ratios)]
    stages = dict.fromkeys((r["condition"], stage) for r in results for stage in r["before_distillation"])
    for condition, stage in stages:
        cells = [[r["before_distillation"][stage] for r in results if (r["condition"], r["ratio"]) == (condition, q)
                  and stage in r["before_distillation"]] for q in ratios]
        lines.append(f"| {condition} | {stage} | " + " | ".join(spread_cell(c) if c else "-" for c in cells) + " |")
    lines += ["", "Differences from the default (mean over seeds, paired by seed):", "",
              "| condition | ratio | prompt | difference | per seed | seed spread | larger than the spread |",
              "|---|---|---|---|---|---|---|"]
    for row in comparisons(results, ratios):
        per_seed = ", ".join(f"{d:+.3f}" for d in row["per_seed"])
        lines.append(f"| {row['condition']} | {row['ratio']} | {row['prompt']} | {row['difference']:+.3f} | "
                     f"{per_seed} | {row['spread']:.3f} | {'yes' if row['beyond_spread'] else 'no'} |")
    return "\n".join(lines) + "\n"


def cpu_minutes(results: list[dict]) -> tuple[float, int]:
    """Core-minutes the runs take uninterrupted, and how many were resumed: a resumed run's CPU time covers only
    its last attempt, so it counts as the mean of the uninterrupted runs of its condition and ratio."""
    def whole(run: dict) -> list[float]:
        return [r["cpu_seconds"] for r in results if (r["condition"], r["ratio"]) == (run["condition"], run["ratio"])
                and not r.get("resumed")]

    seconds = [statistics.mean(whole(r) or [r["cpu_seconds"]]) if r.get("resumed") else r["cpu_seconds"] for r in results]
    return sum(seconds) / 60, sum(bool(r.get("resumed")) for r in results)


# ---- main ----------------------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (rerun with the same one to resume)")
    parser.add_argument("--model", default="toy-sam", help="the teacher (default toy-sam)")
    parser.add_argument("--data", help="folder for the synthetic splits (default OUT/data)")
    parser.add_argument("--conditions", nargs="+", choices=list(CONDITIONS), default=list(CONDITIONS))
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.77])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-count", type=int, default=96, help="distillation photos")
    parser.add_argument("--val-count", type=int, default=16, help="validation images (mIoU picks the best epoch)")
    parser.add_argument("--test-count", type=int, default=100, help="held-out test images (seed 0's test split)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per alternate phase (one-step: twice this)")
    parser.add_argument("--grad-size", type=int, default=48, help="photos in each gradient pass")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, each in its own process")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the loss schedules need an epoch with and one without "
                     "the intermediate terms)")
    if "rel-pos-zeroed" in args.conditions and DEFAULT not in args.conditions:
        parser.error("rel-pos-zeroed starts from the default run's phases: include default in --conditions")
    return args


def teacher_figures(args: argparse.Namespace, test: str) -> dict:
    """The teacher's mIoU and its weights' sha256 (computed once, kept in OUT/teacher.json)."""
    path = Path(args.out) / "teacher.json"
    weights = Path(resolve(args.model)) / "model.safetensors"
    sha256 = hashlib.sha256(weights.read_bytes()).hexdigest() if weights.exists() else None
    if path.exists() and json.loads(path.read_text()).get("sha256") == sha256:
        return json.loads(path.read_text())
    torch.set_num_threads(args.threads)
    figures = {**mious(args.model, test), "sha256": sha256}
    write_json_atomically(path, figures)
    return figures


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    out = Path(args.out)
    data = write_data(Path(args.data) if args.data else out / "data", args.train_count, args.val_count,
                      args.test_count)
    teacher = teacher_figures(args, data["test"])
    print(f"teacher {args.model} (model.safetensors sha256 {teacher['sha256']}): point mIoU {teacher['point']:.4f}, "
          f"box mIoU {teacher['box']:.4f}", flush=True)
    jobs = [Job(condition, ratio, seed, args.epochs, args.grad_size, args.model, data["train"], data["val"],
                data["test"], str((out / "runs" / str(ratio) / condition / f"seed{seed}").resolve()),
                teacher["sha256"], args.threads)
            for ratio in args.ratios for seed in args.seeds for condition in args.conditions]
    run_all(jobs, args.jobs)
    results = finished_runs(out, jobs[0].budget)
    ratios = sorted({r["ratio"] for r in results})
    text = tables(results, ratios, teacher)
    minutes, resumed = cpu_minutes(results)
    write_json_atomically(out / "results.json", {"budget": {**jobs[0].budget, "val_count": args.val_count,
                                                            "train_count": args.train_count,
                                                            "test_count": args.test_count},
                                                 "teacher": teacher, "runs": results,
                                                 "comparisons": comparisons(results, ratios),
                                                 "core_minutes": round(minutes, 1)})
    (out / "table.md").write_text(text)
    print(text)
    print(f"this call's wall time {time.perf_counter() - started:.0f} s; the {len(results)} runs in the table take "
          f"{minutes:.1f} core-minutes ({resumed} resumed after an interruption, counted at the mean of their "
          f"condition's uninterrupted runs)")


if __name__ == "__main__":
    main()
