"""The whole SlimSAM method in one resumable run: prune, align, prune, align, export.

Phases, each writing its result into the output folder OUT (and skipped when that result is already there,
so rerunning the same command after an interruption goes on where it stopped):

    1_embedding_pruned/     disturbed-Taylor gradients on the teacher, then embedding-dim pruning
    2_bottleneck_aligning/  step-1 distillation run (checkpoint, metrics, curves); its model/ is the step-1 model
    3_bottleneck_pruned/    disturbed-Taylor gradients on the step-1 model, then bottleneck pruning
                            (both prunings score with `SlimSettings.importance`, disturbed Taylor by default)
    4_embedding_aligning/   step-2 distillation run; its model/ is the slim model
    final/                  the slim model as a plain Hugging Face SamModel folder
    slim.json               the settings, recipe options included (a rerun with other settings is refused),
                            and the embedding MSE to the teacher on the validation images after every phase

Every folder appears whole or not at all (written beside its place, then renamed), and the distillation
runs resume from their last checkpoint, so a kill at any moment loses at most the work since then.
Under torchrun, rank 0 does the pruning phases while the others wait, and all ranks train.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import SamModel

from slimsam.data.annotations import AnnotatedDataset, iter_annotated
from slimsam.data.files import remove_stale_temporaries, write_json_atomically
from slimsam.data.formats import open_annotations
from slimsam.data.images import iter_pixel_values
from slimsam.distill.distributed import barrier, broadcast_from_main, is_main
from slimsam.distill.losses import ALPHA_EPOCHS
from slimsam.distill.train import LR_PATIENCE, SettingsError, TrainConfig, distill, train_and_val_paths
from slimsam.distill.validation import TeacherEmbeddings, validation_annotations
from slimsam.model.checkpoints import export_model, load_model, read_history, resolve, save_model
from slimsam.pruning.importance import CRITERIA
from slimsam.pruning.steps import prune

log = logging.getLogger(__name__)

SETTINGS_FILE = "slim.json"
EMBEDDING_PRUNED = "1_embedding_pruned"
BOTTLENECK_ALIGNING = "2_bottleneck_aligning"
BOTTLENECK_PRUNED = "3_bottleneck_pruned"
EMBEDDING_ALIGNING = "4_embedding_aligning"
FINAL = "final"
PHASES = (EMBEDDING_PRUNED, BOTTLENECK_ALIGNING, BOTTLENECK_PRUNED, EMBEDDING_ALIGNING)


@dataclass(frozen=True)
class SlimSettings:
    """Everything that decides the result of `slim` (a rerun must give the same values).

    The recipe options default to what the official SlimSAM code does (README, "Fidelity to the paper and the
    official code"); alpha_epochs and lr_patience hold one value per stage.
    """

    model: str  # the teacher: alias, Hub id or folder
    ratio: float  # fraction of channels removed in each of the two pruning steps
    train: str  # folder of training images (the images directly inside it)
    val: str | None  # folder of validation images; None: hold out `val_size` training images
    epochs: int  # per distillation phase
    val_size: int = 50
    grad_size: int = 1000  # images in each disturbed-Taylor gradient pass (the first ones of the training set)
    seed: int = TrainConfig.seed  # the training hyperparameters' defaults are TrainConfig's (the official code's)
    lr: float = TrainConfig.lr
    batch_size: int = TrainConfig.batch_size
    micro_batch: int = TrainConfig.micro_batch
    val_annotations: str | None = None  # a COCO file annotating the validation images (mIoU validation)
    importance: str = "disturbed-taylor"  # both pruning steps (slimsam.pruning.importance.CRITERIA); "taylor"
    # (labels: SAM's mask loss) needs the training images annotated, in a format detected from their folder
    embedding_selection: str = "head-blocks"  # step 1 (slimsam.pruning.steps.EMBEDDING_SELECTIONS)
    score_tensors: str = "weights"  # both pruning steps (slimsam.pruning.importance.SCORE_TENSORS)
    alpha_epochs: tuple[int, int] = (ALPHA_EPOCHS[1], ALPHA_EPOCHS[2])  # N of the weight `a`, stage 1 and 2
    lr_patience: tuple[int, int] = (LR_PATIENCE[1], LR_PATIENCE[2])  # ReduceLROnPlateau patience, stage 1 and 2
    step2_features: str = TrainConfig.step2_features
    precision: str = TrainConfig.precision

    def train_config(self, stage: int, device: torch.device, num_workers: int, checkpoint_every: int) -> TrainConfig:
        return TrainConfig(stage=stage, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                           micro_batch=self.micro_batch, lr_patience=self.lr_patience[stage - 1],
                           alpha_epochs=self.alpha_epochs[stage - 1], step2_features=self.step2_features,
                           precision=self.precision, seed=self.seed, checkpoint_every=checkpoint_every,
                           num_workers=num_workers, device=str(device))

    def record(self) -> dict:
        """The settings as slim.json holds them (JSON types: pairs are lists)."""
        return json.loads(json.dumps(asdict(self)))


def _read_record(out: Path) -> dict:
    return json.loads((out / SETTINGS_FILE).read_text())


def _start_or_check(out: Path, settings: SlimSettings) -> dict:
    """Create OUT/slim.json, or check that the existing one was made with `settings`; returns its record.

    Rank 0 decides and tells the others (checking on every rank would race with rank 0's writing).
    """
    outcome = None
    if is_main():
        try:
            outcome = _start_or_check_here(out, settings)
        except SettingsError as error:
            outcome = error
    outcome = broadcast_from_main(outcome)
    if isinstance(outcome, SettingsError):
        raise outcome
    return outcome


def _start_or_check_here(out: Path, settings: SlimSettings) -> dict:
    wanted = settings.record()
    if (out / SETTINGS_FILE).exists():
        saved = _read_record(out)["settings"]
        changed = {k: (saved.get(k), v) for k, v in wanted.items() if saved.get(k) != v}
        if changed:
            details = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise SettingsError(f"{out} holds a slim run made with other settings ({details}); rerun with the "
                                f"original settings to resume it, or choose another --out")
        return _read_record(out)
    if out.exists() and any(out.iterdir()):
        raise SettingsError(f"{out} is not empty and is not a slim run folder (no {SETTINGS_FILE}); "
                            f"choose another --out")
    record = {"settings": wanted, "embedding_mse": {}}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomically(out / SETTINGS_FILE, record)
    return record


def _scoring_inputs(settings: SlimSettings, grad_paths: list[Path], processor, skipped: list[Path]) -> dict:
    """What `prune` needs for `settings.importance`: the gradient images for disturbed Taylor, annotated samples
    and the processor for labelled Taylor, nothing for magnitude and random."""
    if settings.importance == "disturbed-taylor":
        return {"pixel_values": iter_pixel_values(grad_paths, processor, skipped=skipped)}
    if settings.importance == "taylor":
        dataset = AnnotatedDataset(open_annotations(settings.train), processor, grad_paths)
        return {"samples": iter_annotated(dataset, skipped), "processor": processor}
    return {}


def _prune_phase(source: Path | str, target: str, settings: SlimSettings, grad_paths: list[Path], folder: Path,
                 device: torch.device) -> None:
    """Load `source`, prune its `target` scored by `settings.importance`, save it to `folder` (rank 0 only)."""
    if not folder.exists() and is_main():
        model, processor = load_model(str(source), device=device)
        skipped: list[Path] = []
        record = prune(model, target, settings.ratio, "local", settings.importance, num_images=len(grad_paths),
                       seed=settings.seed, embedding_selection=settings.embedding_selection,
                       score_tensors=settings.score_tensors,
                       **_scoring_inputs(settings, grad_paths, processor, skipped))
        record["source"] = resolve(str(source))
        log.info("%s pruning (%s): %d gradient images, %d unreadable skipped", target, settings.importance,
                 record["images"], len(skipped))
        save_model(model.cpu(), processor, folder, read_history(resolve(str(source))) + [record])
    barrier()


def _distill_phase(student_folder: Path, teacher: SamModel, step1_model: SamModel | None,
                   train_paths: list[Path], val_paths: list[Path], run_dir: Path, config: TrainConfig,
                   val_annotations: str | None) -> Path:
    student, processor = load_model(str(student_folder))
    return distill(student, processor, teacher, train_paths, val_paths, run_dir, config, step1_model=step1_model,
                   resume=True, history=read_history(student_folder), val_annotations=val_annotations)


def slim(settings: SlimSettings, out: str | Path, device: torch.device, num_workers: int = 0,
         checkpoint_every: int = 250) -> dict:
    """Run (or resume) the whole method into `out`; returns the slim.json record (with the MSE figures)."""
    out = Path(out)
    # Bad data folders, annotations or model names fail here, before slim.json pins the settings.
    if settings.importance not in CRITERIA:
        raise ValueError(f"importance must be one of {CRITERIA}, got {settings.importance!r}")
    train_paths, val_paths = train_and_val_paths(settings.train, settings.val, settings.val_size, settings.seed)
    validation_annotations(val_paths, settings.val_annotations)
    if settings.importance == "taylor":
        open_annotations(settings.train)  # labelled Taylor needs annotated training images: DatasetError if none
    teacher, processor = load_model(settings.model, device=device)
    record = _start_or_check(out, settings)
    if is_main():
        remove_stale_temporaries(out, [SETTINGS_FILE, *PHASES, FINAL])
    torch.manual_seed(settings.seed)
    grad_paths = train_paths[:settings.grad_size]

    targets = TeacherEmbeddings(teacher, val_paths, processor, settings.micro_batch, num_workers, settings.precision)

    def measure(phase: str, model_folder: Path) -> None:
        """Record the embedding MSE to the teacher of a phase's result, once (rank 0)."""
        if is_main() and phase not in record["embedding_mse"]:
            model, _ = load_model(str(model_folder), device=device)
            record["embedding_mse"][phase] = targets.mse(model)
            write_json_atomically(out / SETTINGS_FILE, record)
            log.info("embedding MSE to the teacher after %s: %.6g", phase, record["embedding_mse"][phase])

    def config(stage: int) -> TrainConfig:
        return settings.train_config(stage, device, num_workers, checkpoint_every)

    _prune_phase(settings.model, "embedding", settings, grad_paths, out / EMBEDDING_PRUNED, device)
    measure(EMBEDDING_PRUNED, out / EMBEDDING_PRUNED)
    step1_folder = _distill_phase(out / EMBEDDING_PRUNED, teacher, None, train_paths, val_paths,
                                  out / BOTTLENECK_ALIGNING, config(1), settings.val_annotations)
    measure(BOTTLENECK_ALIGNING, step1_folder)
    _prune_phase(step1_folder, "bottleneck", settings, grad_paths, out / BOTTLENECK_PRUNED, device)
    measure(BOTTLENECK_PRUNED, out / BOTTLENECK_PRUNED)
    step1_model, _ = load_model(str(step1_folder), device=device)
    slim_folder = _distill_phase(out / BOTTLENECK_PRUNED, teacher, step1_model, train_paths, val_paths,
                                 out / EMBEDDING_ALIGNING, config(2), settings.val_annotations)
    measure(EMBEDDING_ALIGNING, slim_folder)
    if not (out / FINAL).exists() and is_main():
        model, model_processor = load_model(str(slim_folder))
        export_model(model, model_processor, out / FINAL)
    barrier()
    return record

