"""The distillation loop of SlimSAM: one phase (bottleneck aligning or embedding aligning) of training.

Plain on purpose: Adam on the student's image encoder, gradient accumulation to an effective batch,
ReduceLROnPlateau on the validation metric, the best weights kept. Only the image encoder is trained;
the prompt encoder and mask decoder are the teacher's and stay as they are.

A run folder holds:
    checkpoint.pt   everything needed to continue (weights, optimizer, scheduler, RNG, epoch, batch,
                    best weights, metric rows), replaced atomically every `checkpoint_every` optimizer
                    steps and at each epoch end, so a kill at any moment leaves the previous one intact;
    metrics.jsonl   one row per `log_every` optimizer steps ("train") and per epoch ("val");
    curves.png      training loss and validation metric;
    model/          the best student (slimsam format), written once the last epoch is done.

Under `torchrun --nproc_per_node N` the student's encoder is wrapped in DistributedDataParallel, the data
is sharded with DistributedSampler, every process holds its own teacher, and only rank 0 validates and
writes files.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm
from transformers import SamModel, SamProcessor

from slimsam.checkpoints import save_model
from slimsam.data import ImageDataset, collate_pixels, train_val_split
from slimsam.distributed import barrier, broadcast_from_main, is_main, rank, world_size
from slimsam.evaluate import evaluate
from slimsam.images import list_images
from slimsam.features import encode
from slimsam.losses import ALPHA_EPOCHS, BOTTLENECK_ALPHA, alpha_schedule, bottleneck_aligning_loss, \
    embedding_aligning_loss

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
MODEL_FOLDER = "model"


class SettingsError(ValueError):
    """Settings that cannot work: an output folder started with other settings, a batch that does not split."""


@dataclass
class TrainConfig:
    """Hyperparameters of one distillation phase; the defaults are the paper's (SlimSAM-50 uses 20 epochs)."""

    step: int  # 1: bottleneck aligning (after embedding pruning); 2: embedding aligning (after bottleneck pruning)
    epochs: int = 20
    lr: float = 1e-4
    batch_size: int = 4  # images per optimizer step, all processes together (the paper: 1 x 4 accumulation)
    micro_batch: int = 1  # images per forward pass in each process
    lr_factor: float = 0.5  # ReduceLROnPlateau: lr *= lr_factor ...
    lr_patience: int = 4  # ... after this many epochs without a better validation metric
    alpha_epochs: int = ALPHA_EPOCHS
    bottleneck_alpha: float = BOTTLENECK_ALPHA
    seed: int = 0  # data order
    checkpoint_every: int = 250  # optimizer steps between mid-epoch checkpoints (0: at epoch ends only)
    log_every: int = 10  # optimizer steps between "train" metric rows
    num_workers: int = 0  # DataLoader processes (2 or more pay off on GPU)
    device: str = "cpu"

    # Settings that do not change the result; a run may resume with other values.
    RESUMABLE_CHANGES = ("checkpoint_every", "log_every", "num_workers", "device")

    def result_settings(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in self.RESUMABLE_CHANGES}


@dataclass
class Progress:
    """Where a run stands; saved in the checkpoint (with the weights, optimizer and scheduler states)."""

    epoch: int = 0
    batch: int = 0  # micro-batches of `epoch` already trained on (always a whole number of optimizer steps)
    optimizer_steps: int = 0
    epoch_loss_sum: float = 0.0  # sum of the losses of `epoch`'s readable micro-batches so far ...
    epoch_loss_count: int = 0  # ... and how many there were
    best_value: float | None = None
    rows: list[dict] = field(default_factory=list)  # metric rows, as in metrics.jsonl
    skipped: int = 0  # unreadable training images met so far


# ---- files ---------------------------------------------------------------------------------------------

def replace_file_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` through a temporary file beside it, then rename: readers see the old or the new file, whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temporaries(folder: Path, names: list[str]) -> None:
    """Delete what a killed writer left half-done in `folder` while writing one of `names`: the hidden
    temporaries of `replace_file_atomically` (.NAME.PID.tmp) and of slimsam.checkpoints' folder writes
    (.NAME.RANDOM/). Nothing else is touched, whatever else the folder holds."""
    for name in names:
        for entry in Path(folder).glob(f".{name}.*"):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def write_json_atomically(path: Path, data) -> None:
    replace_file_atomically(path, lambda handle: handle.write(json.dumps(data, indent=2).encode()))


def _write_metrics(run_dir: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(row) + "\n" for row in rows)
    replace_file_atomically(run_dir / METRICS_FILE, lambda handle: handle.write(text.encode()))


def _plot_curves(run_dir: Path, rows: list[dict]) -> None:
    """curves.png: training loss per optimizer step (left) and the validation metric per epoch (right)."""
    train = [r for r in rows if r["kind"] == "train"]
    val = [r for r in rows if r["kind"] == "val"]
    from matplotlib.figure import Figure  # here, not at the top: it adds ~0.2 s to every `slimsam` command
    figure = Figure(figsize=(10, 4))
    loss_axes, val_axes = figure.subplots(1, 2)
    loss_axes.plot([r["optimizer_step"] for r in train], [r["loss"] for r in train])
    loss_axes.set(xlabel="optimizer step", ylabel="loss", yscale="log", title="training loss")
    if val:
        val_axes.plot([r["epoch"] + 1 for r in val], [r["value"] for r in val], marker="o")
        val_axes.set(xlabel="epoch", ylabel=val[0]["metric"], title=f"validation {val[0]['metric']}")
    figure.tight_layout()
    replace_file_atomically(run_dir / CURVES_FILE, lambda handle: figure.savefig(handle, format="png", dpi=80))


# ---- data ----------------------------------------------------------------------------------------------

def train_and_val_paths(train: str | Path, val: str | Path | None, val_size: int, seed: int
                        ) -> tuple[list[Path], list[Path]]:
    """Training and validation images: two folders, or `val_size` images held out of `train` (seeded)."""
    train_paths = list_images(train)
    if val is not None:
        return train_paths, list_images(val)
    try:
        return train_val_split(train_paths, val_size, seed)
    except ValueError as error:
        raise SettingsError(f"{error}: pass a validation folder (--val DIR) or a smaller --val-size") from None


# ---- validation ----------------------------------------------------------------------------------------

class TeacherEmbeddings:
    """The teacher's image embeddings of a fixed list of images, for measuring students against them.

    Computed once, on the first `mse` call, and kept on the CPU (4 MB per 1024-px image): validating a
    student every epoch, or each phase's result in `slim`, then runs only the student. Batches follow
    `paths` in order (batch_size images each, unreadable ones dropped), the same for every call.
    """

    def __init__(self, teacher: SamModel, paths: list[Path], processor: SamProcessor, batch_size: int = 1,
                 num_workers: int = 0) -> None:
        self.teacher, self.paths, self.processor = teacher, list(paths), processor
        self.batch_size, self.num_workers = batch_size, num_workers
        self._batches: list[torch.Tensor] | None = None  # (B, C, h, w) float32 per readable batch, on the CPU

    def _pixel_batches(self, device: torch.device) -> Iterator[torch.Tensor]:
        loader = DataLoader(ImageDataset(self.paths, self.processor), batch_size=self.batch_size,
                            collate_fn=collate_pixels, num_workers=self.num_workers)
        return (pixels.to(device) for pixels, _ in loader if pixels is not None)

    @staticmethod
    def _embed(model: SamModel, pixels: torch.Tensor) -> torch.Tensor:
        with _autocast(pixels.device):
            return model.vision_encoder(pixels).last_hidden_state.float()

    @torch.no_grad()
    def mse(self, student: SamModel) -> float:
        """Mean over readable images of MSE(student's image embedding, teacher's); models on one device."""
        device = next(student.parameters()).device
        if self._batches is None:
            self._batches = [self._embed(self.teacher, pixels).cpu() for pixels in self._pixel_batches(device)]
        if not self._batches:
            raise ValueError("no readable validation images")
        was_training = student.vision_encoder.training
        student.vision_encoder.eval()
        total = 0.0
        for pixels, target in zip(self._pixel_batches(device), self._batches):
            difference = self._embed(student, pixels) - target.to(device)
            total += difference.pow(2).mean(dim=(1, 2, 3)).sum().item()
        student.vision_encoder.train(was_training)
        return total / sum(len(batch) for batch in self._batches)


def embedding_mse(student: SamModel, teacher: SamModel, paths: list[Path], processor: SamProcessor,
                  batch_size: int = 1, num_workers: int = 0) -> float:
    """Mean over readable images of MSE(student's image embedding, teacher's), once (TeacherEmbeddings to reuse)."""
    return TeacherEmbeddings(teacher, paths, processor, batch_size, num_workers).mse(student)


@dataclass(frozen=True)
class Validation:
    """How a phase is validated: `measure(student) -> value`, and whether higher values are better."""

    metric: str
    higher_is_better: bool
    measure: Callable[[SamModel], float]


def make_validation(val_paths: list[Path], teacher: SamModel, processor: SamProcessor, config: TrainConfig
                    ) -> Validation:
    """mIoU with point prompts when every validation image has its SA-1B annotations, else embedding MSE."""
    annotated = all(path.with_suffix(".json").is_file() for path in val_paths)
    if not annotated:
        if is_main():
            log.info("validation: %d images without SA-1B annotations, so the best checkpoint and the lr schedule "
                     "follow the embedding MSE to the teacher (lower is better) instead of mIoU", len(val_paths))
        targets = TeacherEmbeddings(teacher, val_paths, processor, config.micro_batch, config.num_workers)
        return Validation("embedding_mse", False, targets.mse)
    return Validation("miou", True, lambda student: _miou(student, processor, val_paths))


def _miou(student: SamModel, processor: SamProcessor, val_paths: list[Path]) -> float:
    was_training = student.vision_encoder.training
    student.vision_encoder.eval()
    result = evaluate(student, processor, val_paths, prompt="point", progress=False)
    student.vision_encoder.train(was_training)
    return result.miou


# ---- training ------------------------------------------------------------------------------------------

def _autocast(device: torch.device):
    """bf16 autocast on GPU; full precision on CPU (where bf16 is slow and would break CPU determinism)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def _rng_states() -> dict:
    states = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def phase_loss(config: TrainConfig, alpha: float, student_encoder, teacher: SamModel, step1_model: SamModel | None,
               pixels: torch.Tensor, device: torch.device, autocast: bool = True
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """The phase's loss on one micro-batch of (B, 3, S, S) pixels; teachers run without gradients.

    autocast: bf16 on GPU as training does (False: full precision, for the naive baseline of
    benchmarks/distill_throughput.py).
    """
    student_capture = ("qkv", "mlp") if config.step == 1 else ("blocks",)
    with _autocast(device) if autocast else nullcontext():
        with torch.no_grad():
            teacher_features = encode(teacher.vision_encoder, pixels,
                                      student_capture if config.step == 1 and alpha > 0 else ())
            step1_features = encode(step1_model.vision_encoder, pixels, ("blocks",)) \
                if config.step == 2 and alpha > 0 else None
        student_features = encode(student_encoder, pixels, student_capture if alpha > 0 else ())
    if config.step == 1:
        return bottleneck_aligning_loss(student_features, teacher_features, alpha)
    return embedding_aligning_loss(student_features, teacher_features, step1_features, alpha)


def _image_lists(train_paths: list[Path], val_paths: list[Path]) -> dict[str, dict]:
    """What a run trained and validated on: per split, the number of files and a digest of their names in order
    (the data order is a function of the seed and this list, so a resume needs the very same list)."""
    def summary(paths: list[Path]) -> dict:
        digest = hashlib.blake2b("\n".join(p.name for p in paths).encode(), digest_size=8).hexdigest()
        return {"files": len(paths), "names_digest": digest}

    return {"train": summary(train_paths), "val": summary(val_paths)}


def _check_resumable(saved: dict, config: TrainConfig, images: dict[str, dict]) -> None:
    """saved: the checkpoint; images: `_image_lists` of this call's data. Raises SettingsError on any difference."""
    current = config.result_settings()
    changed = {k: (saved["config"].get(k), v) for k, v in current.items() if saved["config"].get(k) != v}
    changed.update({f"{split} images": (f"{old['files']} files", f"{new['files']} files")
                    for split, new in images.items()
                    if (old := saved.get("images", {}).get(split, new)) != new})  # older checkpoints: not recorded
    if changed:
        details = ", ".join(f"{k} {old} -> {new}" if old != new else f"{k} (other file names)"
                            for k, (old, new) in changed.items())
        raise SettingsError(f"cannot resume: the run was started with other settings ({details}); "
                            f"use the original settings and data, or another output folder")


def distill(student: SamModel, processor: SamProcessor, teacher: SamModel, train_paths: list[Path],
            val_paths: list[Path], run_dir: str | Path, config: TrainConfig, step1_model: SamModel | None = None,
            resume: bool = False, history: list[dict] | None = None) -> Path:
    """Train `student`'s image encoder towards `teacher` (one SlimSAM distillation phase); returns the model folder.

    step1_model: for step 2, the model that was bottleneck-pruned to make the student (the step-1 result).
    resume: continue from run_dir/checkpoint.pt; without it an existing checkpoint is an error.
    history: the student's history; the saved model's is history + this phase's record.
    The best student (by validation metric) is saved to run_dir/model and, when this call trained it, loaded
    into `student`.
    """
    run_dir = Path(run_dir)
    model_dir = run_dir / MODEL_FOLDER
    checkpoint_file = run_dir / CHECKPOINT_FILE
    if config.step == 2 and step1_model is None and config.alpha_epochs > 0:
        raise ValueError("embedding aligning (step 2) needs the step-1 model as a second target")
    if checkpoint_file.exists() and not resume:
        raise FileExistsError(f"{run_dir} already holds a training run (pass --resume to continue it, "
                              f"or choose another output folder)")
    device = torch.device(config.device)
    saved = torch.load(checkpoint_file, map_location=device, weights_only=False) \
        if checkpoint_file.exists() else None  # a file this trainer wrote, with RNG states that are not tensors
    image_lists = _image_lists(train_paths, val_paths)
    if saved is not None:
        _check_resumable(saved, config, image_lists)
    if model_dir.exists():
        if saved is None:
            raise FileExistsError(f"{model_dir} already exists and is not from a run of these settings")
        log.info("%s is finished; using its model", run_dir)
        return model_dir

    processes = world_size()
    if config.batch_size % (config.micro_batch * processes):
        raise SettingsError(f"batch size {config.batch_size} is not a multiple of micro batch {config.micro_batch} x "
                            f"{processes} processes")
    accumulation = config.batch_size // (config.micro_batch * processes)

    for target in (teacher, step1_model):
        if target is not None:
            target.to(device).eval().requires_grad_(False)
    student.to(device)
    encoder = student.vision_encoder.train()
    trained = DistributedDataParallel(encoder) if processes > 1 else encoder
    optimizer = torch.optim.Adam(encoder.parameters(), lr=config.lr)
    validation = make_validation(val_paths, teacher, processor, config)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max" if validation.higher_is_better else "min", factor=config.lr_factor,
        patience=config.lr_patience)
    progress = Progress()
    best_encoder = None
    if saved is not None:
        encoder.load_state_dict(saved["encoder"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        _restore_rng_states(saved["rng"])
        progress = Progress(**saved["progress"])
        best_encoder = saved["best_encoder"]
        if is_main():
            log.info("resuming %s at epoch %d, batch %d", run_dir, progress.epoch + 1, progress.batch)
    if is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir, [CHECKPOINT_FILE, METRICS_FILE, CURVES_FILE, MODEL_FOLDER])

    def save_checkpoint() -> None:
        if not is_main():
            return
        state = {"config": config.result_settings(), "images": image_lists, "encoder": encoder.state_dict(),
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_states(),
                 "progress": asdict(progress), "best_encoder": best_encoder}
        replace_file_atomically(checkpoint_file, lambda handle: torch.save(state, handle))
        _write_metrics(run_dir, progress.rows)

    dataset = ImageDataset(train_paths, processor)
    sampler = DistributedSampler(dataset, num_replicas=processes, rank=rank(), shuffle=True, seed=config.seed)
    while progress.epoch < config.epochs:
        epoch = progress.epoch
        alpha = alpha_schedule(config.step, epoch, config.alpha_epochs, config.bottleneck_alpha)
        sampler.set_epoch(epoch)  # the epoch's order depends on (seed, epoch) only, so a resumed run sees the same
        indices = list(sampler)
        batches = [indices[i:i + config.micro_batch] for i in range(0, len(indices), config.micro_batch)]
        loader = DataLoader(dataset, batch_sampler=batches[progress.batch:], collate_fn=collate_pixels,
                            num_workers=config.num_workers)
        with tqdm(total=len(batches), initial=progress.batch, desc=f"step {config.step} epoch {epoch + 1}/"
                   f"{config.epochs}", unit="batch", disable=not is_main(), dynamic_ncols=True) as bar:
            started, images = time.perf_counter(), 0
            for batch_index, (pixels, skipped) in enumerate(loader, start=progress.batch):
                group_start = batch_index - batch_index % accumulation
                group_size = min(accumulation, len(batches) - group_start)  # the epoch's last group may be short
                steps_now = batch_index == group_start + group_size - 1
                # A batch of unreadable files still runs (on zeros, weight 0): every DDP process must make the
                # same collective calls.
                weight = 0.0 if pixels is None else 1.0
                if pixels is None:
                    pixels = torch.zeros(config.micro_batch, 3, encoder.config.image_size, encoder.config.image_size)
                progress.skipped += skipped
                pixels = pixels.to(device)
                with nullcontext() if steps_now or processes == 1 else trained.no_sync():
                    loss, terms = phase_loss(config, alpha, trained, teacher, step1_model, pixels, device)
                    (loss * (weight / group_size)).backward()
                progress.epoch_loss_sum += loss.item() * weight
                progress.epoch_loss_count += int(weight)
                images += len(pixels) * int(weight) * processes
                bar.update(1)
                if not steps_now:
                    continue
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                progress.optimizer_steps += 1
                progress.batch = batch_index + 1
                lr = optimizer.param_groups[0]["lr"]
                bar.set_postfix(loss=f"{loss.item():.4g}", lr=f"{lr:.2g}")
                if progress.optimizer_steps % config.log_every == 0:
                    progress.rows.append({"kind": "train", "epoch": epoch, "optimizer_step": progress.optimizer_steps,
                                          "loss": loss.item(), "alpha": alpha, "lr": lr, **terms})
                if config.checkpoint_every and progress.optimizer_steps % config.checkpoint_every == 0 \
                        and progress.batch < len(batches):
                    save_checkpoint()
        seconds = time.perf_counter() - started

        value = broadcast_from_main(validation.measure(student) if is_main() else None)
        scheduler.step(value)
        improved = progress.best_value is None or \
            (value > progress.best_value if validation.higher_is_better else value < progress.best_value)
        if improved:
            progress.best_value = value
            best_encoder = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
        train_loss = progress.epoch_loss_sum / max(progress.epoch_loss_count, 1)  # rank 0's micro-batches
        progress.rows.append({"kind": "val", "epoch": epoch, "metric": validation.metric, "value": value,
                              "best": progress.best_value, "train_loss": train_loss,
                              "lr": optimizer.param_groups[0]["lr"], "alpha": alpha,
                              "images_per_s": images / seconds if seconds > 0 else math.nan,
                              "skipped_images": progress.skipped})
        if is_main():
            log.info("step %d epoch %d/%d: %s %.5g (best %.5g), train loss %.4g, %.2f images/s", config.step,
                     epoch + 1, config.epochs, validation.metric, value, progress.best_value,
                     train_loss, progress.rows[-1]["images_per_s"])
        progress.epoch, progress.batch, progress.epoch_loss_sum, progress.epoch_loss_count = epoch + 1, 0, 0.0, 0
        save_checkpoint()
        if is_main():
            _plot_curves(run_dir, progress.rows)

    encoder.load_state_dict(best_encoder)
    if is_main():
        record = {"step": "distill", "stage": config.step, "epochs": config.epochs, "metric": validation.metric,
                  "best": progress.best_value, "images": len(train_paths), "seed": config.seed}
        save_model(student.cpu(), processor, model_dir, list(history or []) + [record])
        student.to(device)
    barrier()
    return model_dir
