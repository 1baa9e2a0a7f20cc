"""The distillation loop of SlimSAM: one phase (bottleneck aligning or embedding aligning) of training.

Plain on purpose: Adam on the student's image encoder, gradient accumulation to an effective batch,
ReduceLROnPlateau on the validation metric, the best weights kept. Only the image encoder is trained;
the prompt encoder and mask decoder are the teacher's and stay as they are.

A run folder holds:
    checkpoint.pt   everything needed to continue (weights, optimizer, scheduler, RNG, epoch, batch,
                    best weights, metric rows), replaced atomically every `checkpoint_every` optimizer
                    steps and at each epoch end, so a kill at any moment leaves the previous one intact;
    train_config.json  the settings that decide the result (`TrainConfig.result_settings`, the recipe options
                    among them), written when the run starts;
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
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm
from transformers import SamModel, SamProcessor

from slimsam.data.datasets import ImageDataset, collate_pixels, train_val_split
from slimsam.data.files import remove_stale_temporaries, replace_file_atomically, write_json_atomically
from slimsam.data.images import list_images
from slimsam.distill.distributed import barrier, broadcast_from_main, is_main, rank, world_size
from slimsam.distill.features import PRECISIONS, autocast_for, encode
from slimsam.distill.losses import (
    ALPHA_EPOCHS,
    BOTTLENECK_ALPHA,
    STEP2_FEATURES,
    alpha_schedule,
    bottleneck_aligning_loss,
    embedding_aligning_loss,
)
from slimsam.distill.validation import Validation, make_validation
from slimsam.model.checkpoints import save_model

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "train_config.json"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
MODEL_FOLDER = "model"


class SettingsError(ValueError):
    """Settings that cannot work: an output folder started with other settings, a batch that does not split."""

# ReduceLROnPlateau patience per stage, as the official prune_distill_step1.py (3) and step2.py (4) set it.
LR_PATIENCE = {1: 3, 2: 4}


@dataclass
class TrainConfig:
    """Hyperparameters of one distillation phase; the defaults are the official code's (the paper's SlimSAM-50
    uses 20 epochs per phase). None means the stage's default."""

    stage: int  # 1: bottleneck aligning (after embedding pruning); 2: embedding aligning (after bottleneck pruning)
    epochs: int = 20
    lr: float = 1e-4
    batch_size: int = 4  # images per optimizer step, all processes together (the paper: 1 x 4 accumulation)
    micro_batch: int = 1  # images per forward pass in each process
    lr_factor: float = 0.5  # ReduceLROnPlateau: lr *= lr_factor ...
    lr_patience: int | None = None  # ... when more than this many epochs in a row bring no better validation metric
    alpha_epochs: int | None = None  # N of the weight `a` (losses.ALPHA_EPOCHS: 10 in stage 1, 11 in stage 2)
    bottleneck_alpha: float = BOTTLENECK_ALPHA
    step2_features: str = "official"  # stage 2: the features aligned with the step-1 model (losses.STEP2_FEATURES)
    precision: str = "fp32"  # "bf16": bf16 autocast on GPU (features.PRECISIONS)
    seed: int = 0  # data order
    checkpoint_every: int = 250  # optimizer steps between mid-epoch checkpoints (0: at epoch ends only)
    log_every: int = 10  # optimizer steps between "train" metric rows
    num_workers: int = 0  # DataLoader processes (2 or more pay off on GPU)
    device: str = "cpu"

    # Settings that do not change the result; a run may resume with other values.
    RESUMABLE_CHANGES = ("checkpoint_every", "log_every", "num_workers", "device")

    def __post_init__(self) -> None:
        if self.stage not in (1, 2):
            raise ValueError(f"distillation stage must be 1 or 2, got {self.stage}")
        if self.step2_features not in STEP2_FEATURES:
            raise ValueError(f"step-2 features must be one of {tuple(STEP2_FEATURES)}, got {self.step2_features!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.lr_patience is None:
            self.lr_patience = LR_PATIENCE[self.stage]
        if self.alpha_epochs is None:
            self.alpha_epochs = ALPHA_EPOCHS[self.stage]

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


# ---- training ------------------------------------------------------------------------------------------

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
               pixels: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
    """The phase's loss on one micro-batch of (B, 3, S, S) pixels; teachers run without gradients."""
    capture = ("qkv", "mlp") if config.stage == 1 else (STEP2_FEATURES[config.step2_features],)
    with autocast_for(device, config.precision):
        with torch.no_grad():
            teacher_features = encode(teacher.vision_encoder, pixels,
                                      capture if config.stage == 1 and alpha > 0 else ())
            step1_features = encode(step1_model.vision_encoder, pixels, capture) \
                if config.stage == 2 and alpha > 0 else None
        student_features = encode(student_encoder, pixels, capture if alpha > 0 else ())
    if config.stage == 1:
        return bottleneck_aligning_loss(student_features, teacher_features, alpha)
    return embedding_aligning_loss(student_features, teacher_features, step1_features, alpha, config.step2_features)


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


@dataclass
class Run:
    """One distillation run while it trains: its models, optimizer state and where it stands."""

    config: TrainConfig
    run_dir: Path
    student: SamModel
    processor: SamProcessor
    teacher: SamModel
    step1_model: SamModel | None
    trained: torch.nn.Module  # the student's encoder, wrapped in DistributedDataParallel with several processes
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    validation: Validation
    dataset: ImageDataset
    image_lists: dict[str, dict]
    progress: Progress = field(default_factory=Progress)
    best_encoder: dict | None = None  # the encoder's state dict at the best validation value so far
    last_loss: float = math.nan  # the latest micro-batch's loss, and its terms
    last_terms: dict[str, float] = field(default_factory=dict)

    @property
    def encoder(self) -> torch.nn.Module:
        return self.student.vision_encoder

    @property
    def device(self) -> torch.device:
        return torch.device(self.config.device)

    def alpha(self, epoch: int) -> float:
        """Weight of the intermediate-feature terms in (0-based) `epoch`."""
        return alpha_schedule(self.config.stage, epoch, self.config.alpha_epochs, self.config.bottleneck_alpha)

    @property
    def accumulation(self) -> int:
        """Micro-batches per optimizer step in each process."""
        return self.config.batch_size // (self.config.micro_batch * world_size())


def distill(student: SamModel, processor: SamProcessor, teacher: SamModel, train_paths: list[Path],
            val_paths: list[Path], run_dir: str | Path, config: TrainConfig, step1_model: SamModel | None = None,
            resume: bool = False, history: list[dict] | None = None, val_annotations: str | Path | None = None) -> Path:
    """Train `student`'s image encoder towards `teacher` (one SlimSAM distillation phase); returns the model folder.

    step1_model: for stage 2, the model that was bottleneck-pruned to make the student (the stage-1 result).
    val_annotations: a COCO file annotating the validation images (validation.make_validation).
    resume: continue from run_dir/checkpoint.pt; without it an existing checkpoint is an error.
    history: the student's history; the saved model's is history + this phase's record.
    The best student (by validation metric) is saved to run_dir/model and, when this call trained it, loaded
    into `student`.
    """
    run_dir = Path(run_dir)
    saved = _read_checkpoint(run_dir, config, train_paths, val_paths, resume, step1_model)
    if (run_dir / MODEL_FOLDER).exists():
        if saved is None:
            raise FileExistsError(f"{run_dir / MODEL_FOLDER} already exists and is not from a run of these settings")
        log.info("%s is finished; using its model", run_dir)
        return run_dir / MODEL_FOLDER
    run = _start_run(student, processor, teacher, step1_model, train_paths, val_paths, run_dir, config, saved,
                     val_annotations)
    sampler = DistributedSampler(run.dataset, num_replicas=world_size(), rank=rank(), shuffle=True, seed=config.seed)
    while run.progress.epoch < config.epochs:
        sampler.set_epoch(run.progress.epoch)  # the order depends on (seed, epoch) only: a resumed run sees the same
        images, seconds = _train_epoch(run, list(sampler))
        _end_epoch(run, images, seconds)
    return _finish(run, len(train_paths), history)


def _read_checkpoint(run_dir: Path, config: TrainConfig, train_paths: list[Path], val_paths: list[Path],
                     resume: bool, step1_model: SamModel | None) -> dict | None:
    """The run's checkpoint when resuming (checked against these settings and images), None for a new run."""
    if config.stage == 2 and step1_model is None and config.alpha_epochs > 0:
        raise ValueError("embedding aligning (stage 2) needs the stage-1 model as a second target")
    checkpoint_file = run_dir / CHECKPOINT_FILE
    if checkpoint_file.exists() and not resume:
        raise FileExistsError(f"{run_dir} already holds a training run (pass --resume to continue it, "
                              f"or choose another output folder)")
    if config.batch_size % (config.micro_batch * world_size()):
        raise SettingsError(f"batch size {config.batch_size} is not a multiple of micro batch {config.micro_batch} x "
                            f"{world_size()} processes")
    if not checkpoint_file.exists():
        return None
    # A file this trainer wrote, with RNG states that are not tensors: weights_only would refuse it.
    saved = torch.load(checkpoint_file, map_location=config.device, weights_only=False)
    _check_resumable(saved, config, _image_lists(train_paths, val_paths))
    return saved


def _start_run(student: SamModel, processor: SamProcessor, teacher: SamModel, step1_model: SamModel | None,
               train_paths: list[Path], val_paths: list[Path], run_dir: Path, config: TrainConfig,
               saved: dict | None, val_annotations: str | Path | None = None) -> Run:
    """Models on the device, teachers frozen, optimizer and schedule made, or restored from `saved`."""
    device = torch.device(config.device)
    for target in (teacher, step1_model):
        if target is not None:
            target.to(device).eval().requires_grad_(False)
    encoder = student.to(device).vision_encoder.train()
    optimizer = torch.optim.Adam(encoder.parameters(), lr=config.lr)
    validation = make_validation(val_paths, teacher, processor, config.micro_batch, config.num_workers,
                                 val_annotations, config.precision)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max" if validation.higher_is_better else "min", factor=config.lr_factor,
        patience=config.lr_patience)
    run = Run(config, run_dir, student, processor, teacher, step1_model,
              DistributedDataParallel(encoder) if world_size() > 1 else encoder, optimizer, scheduler, validation,
              ImageDataset(train_paths, processor), _image_lists(train_paths, val_paths))
    if saved is not None:
        encoder.load_state_dict(saved["encoder"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        _restore_rng_states(saved["rng"])
        run.progress, run.best_encoder = Progress(**saved["progress"]), saved["best_encoder"]
        if is_main():
            log.info("resuming %s at epoch %d, batch %d", run_dir, run.progress.epoch + 1, run.progress.batch)
    if is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir, [CONFIG_FILE, CHECKPOINT_FILE, METRICS_FILE, CURVES_FILE, MODEL_FOLDER])
        write_json_atomically(run_dir / CONFIG_FILE, config.result_settings())
    return run


def _train_epoch(run: Run, indices: list[int]) -> tuple[int, float]:
    """Train on this process's share of the epoch's images (`indices`, in order), from where the run stands.

    Returns the images trained on (all processes) and the seconds it took.
    """
    config, progress = run.config, run.progress
    epoch = progress.epoch
    alpha = run.alpha(epoch)
    batches = [indices[i:i + config.micro_batch] for i in range(0, len(indices), config.micro_batch)]
    loader = DataLoader(run.dataset, batch_sampler=batches[progress.batch:], collate_fn=collate_pixels,
                        num_workers=config.num_workers)
    started, images = time.perf_counter(), 0
    with tqdm(total=len(batches), initial=progress.batch, desc=f"stage {config.stage} epoch {epoch + 1}/"
              f"{config.epochs}", unit="batch", disable=not is_main(), dynamic_ncols=True) as bar:
        for batch_index, (pixels, skipped) in enumerate(loader, start=progress.batch):
            group_start = batch_index - batch_index % run.accumulation
            group_size = min(run.accumulation, len(batches) - group_start)  # the epoch's last group may be short
            steps_now = batch_index == group_start + group_size - 1
            images += _train_micro_batch(run, pixels, skipped, alpha, group_size, steps_now)
            bar.update(1)
            if steps_now:
                loss = _optimizer_step(run, batch_index, alpha)
                bar.set_postfix(loss=f"{loss:.4g}", lr=f"{run.optimizer.param_groups[0]['lr']:.2g}")
                if config.checkpoint_every and progress.optimizer_steps % config.checkpoint_every == 0 \
                        and progress.batch < len(batches):
                    _save_checkpoint(run)
    return images, time.perf_counter() - started


def _train_micro_batch(run: Run, pixels: torch.Tensor | None, skipped: int, alpha: float, group_size: int,
                       steps_now: bool) -> int:
    """Forward and backward one micro-batch, its loss scaled for accumulation; returns the images it counted."""
    config, progress = run.config, run.progress
    # A batch of unreadable files still runs (on zeros, weight 0): every DDP process must make the same
    # collective calls.
    weight = 0.0 if pixels is None else 1.0
    if pixels is None:
        size = run.encoder.config.image_size
        pixels = torch.zeros(config.micro_batch, 3, size, size)
    progress.skipped += skipped
    pixels = pixels.to(run.device)
    with nullcontext() if steps_now or world_size() == 1 else run.trained.no_sync():
        loss, terms = phase_loss(config, alpha, run.trained, run.teacher, run.step1_model, pixels, run.device)
        (loss * (weight / group_size)).backward()
    progress.epoch_loss_sum += loss.item() * weight
    progress.epoch_loss_count += int(weight)
    run.last_loss, run.last_terms = loss.item(), terms
    return len(pixels) * int(weight) * world_size()


def _optimizer_step(run: Run, batch_index: int, alpha: float) -> float:
    """Apply the accumulated gradients; log a "train" row every `log_every` steps. Returns the last loss."""
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    progress = run.progress
    progress.optimizer_steps += 1
    progress.batch = batch_index + 1
    if progress.optimizer_steps % run.config.log_every == 0:
        progress.rows.append({"kind": "train", "epoch": progress.epoch, "optimizer_step": progress.optimizer_steps,
                              "loss": run.last_loss, "alpha": alpha, "lr": run.optimizer.param_groups[0]["lr"],
                              **run.last_terms})
    return run.last_loss


def _end_epoch(run: Run, images: int, seconds: float) -> None:
    """Validate, step the lr schedule, keep the best weights, record the epoch, checkpoint, draw the curves."""
    progress, validation = run.progress, run.validation
    epoch = progress.epoch
    value = broadcast_from_main(validation.measure(run.student) if is_main() else None)
    run.scheduler.step(value)
    # ">=", as the official code: of equal epochs the later one is kept.
    improved = progress.best_value is None or \
        (value >= progress.best_value if validation.higher_is_better else value <= progress.best_value)
    if improved:
        progress.best_value = value
        run.best_encoder = {k: v.detach().clone() for k, v in run.encoder.state_dict().items()}
    train_loss = progress.epoch_loss_sum / max(progress.epoch_loss_count, 1)  # rank 0's micro-batches
    progress.rows.append({"kind": "val", "epoch": epoch, "metric": validation.metric, "value": value,
                          "best": progress.best_value, "train_loss": train_loss,
                          "lr": run.optimizer.param_groups[0]["lr"],
                          "alpha": run.alpha(epoch),
                          "images_per_s": images / seconds if seconds > 0 else math.nan,
                          "skipped_images": progress.skipped})
    if is_main():
        log.info("stage %d epoch %d/%d: %s %.5g (best %.5g), train loss %.4g, %.2f images/s", run.config.stage,
                 epoch + 1, run.config.epochs, validation.metric, value, progress.best_value, train_loss,
                 progress.rows[-1]["images_per_s"])
    progress.epoch, progress.batch, progress.epoch_loss_sum, progress.epoch_loss_count = epoch + 1, 0, 0.0, 0
    _save_checkpoint(run)
    if is_main():
        _plot_curves(run.run_dir, progress.rows)


def _save_checkpoint(run: Run) -> None:
    """Everything needed to continue (rank 0 writes it, atomically), and the metric rows so far."""
    if not is_main():
        return
    state = {"config": run.config.result_settings(), "images": run.image_lists, "encoder": run.encoder.state_dict(),
             "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(), "rng": _rng_states(),
             "progress": asdict(run.progress), "best_encoder": run.best_encoder}
    replace_file_atomically(run.run_dir / CHECKPOINT_FILE, lambda handle: torch.save(state, handle))
    _write_metrics(run.run_dir, run.progress.rows)


def _finish(run: Run, train_images: int, history: list[dict] | None) -> Path:
    """Load the best weights into the student and save it to run_dir/model (rank 0); returns that folder."""
    run.encoder.load_state_dict(run.best_encoder)
    model_dir = run.run_dir / MODEL_FOLDER
    if is_main():
        config = run.config
        record = {"step": "distill", "stage": config.stage, "epochs": config.epochs, "metric": run.validation.metric,
                  "best": run.progress.best_value, "images": train_images, "seed": config.seed,
                  "settings": config.result_settings()}
        save_model(run.student.cpu(), run.processor, model_dir, list(history or []) + [record])
        run.student.to(run.device)
    barrier()
    return model_dir
