"""What the app's events do, as functions of the session state; demo.ui wires them to components.

Every problem a user can cause (a corrupt file, a click outside the image, prompts before an image, a
model without weights) ends in a readable message: `gr.Error` for the action that failed, or the
pane's text for a model that cannot be loaded, so the other pane keeps working.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from demo import render
from demo.models import ModelLoadError, ModelStore, gpu
from demo.prompts import BOX, POSITIVE, PromptError, draw_prompts, parse_json_prompts
from demo.session import SIDES, PaneResult, Session
from slimsam.data.images import open_rgb, upright_size
from slimsam.evaluate.masks import mask_iou
from slimsam.infer.everything import MaskGenerator
from slimsam.infer.predictor import MAX_WORKING_SIDE, SamPredictor, image_hash

EVERYTHING_OPTIONS = dict(points_per_side=16, points_per_batch=32, max_masks=64)  # sized for a CPU


@dataclass(frozen=True)
class AppContext:
    """What every handler may use besides the session: app-wide and read-only (the store only adds models)."""

    store: ModelStore
    defaults: dict[str, str]  # side -> menu label shown first
    mask_folder: Path  # where downloadable mask PNGs are written


def fail(message: str):
    """Show `message` to the user and stop the event chain (no traceback: it is not a bug)."""
    raise gr.Error(message, print_exception=False)


def require_image(session: Session) -> np.ndarray:
    if session.image is None:
        fail("Upload a photo or pick an example first.")
    return session.image


# ------------------------------------------------------------------------------------------- image and prompts

def load_photo(session: Session, path: str | None) -> tuple[np.ndarray, str]:
    """New photo: read it (any mode, EXIF-rotated, huge ones downscaled), reset prompts and masks."""
    if not path:
        fail("No file: upload a photo or pick an example.")
    name = Path(path).name
    try:
        with Image.open(path) as header:  # the full size, which open_rgb's downscaled copy no longer tells
            original_size = upright_size(header)  # (a PNG decodes here to find its EXIF; freed on closing)
        image = np.asarray(open_rgb(path, max_side=MAX_WORKING_SIDE))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        fail(f"Cannot read {name}: it is not an image or it is damaged ({error.__cause__ or error}).")
    session.image, session.image_id, session.image_name = image, image_hash(image), name
    session.original_size = original_size
    session.prompts = session.prompts.cleared()
    session.results.clear()
    return show_prompts(session)


def show_prompts(session: Session) -> tuple[np.ndarray, str]:
    """The photo with the prompts drawn on it, and a status line."""
    image = require_image(session)
    height, width = image.shape[:2]
    full_height, full_width = session.original_size
    note = (f" (downscaled from {full_width}x{full_height}: the models see 1024 px anyway)"
            if full_width > width else "")
    status = f"**{session.image_name}** {width}x{height}{note} · {session.prompts.describe()}"
    return draw_prompts(image, session.prompts), status


def add_click(session: Session, mode: str, x: float, y: float) -> tuple[np.ndarray, str]:
    """A click on the photo at pixel (x, y): a positive or negative point, or a box corner."""
    image = require_image(session)
    size = image.shape[:2]
    try:
        if mode == BOX:
            session.prompts = session.prompts.add_box_corner(x, y, size)
        else:
            session.prompts = session.prompts.add_point(x, y, 1 if mode == POSITIVE else 0, size)
    except PromptError as error:
        fail(str(error))
    return show_prompts(session)


def undo(session: Session) -> tuple[np.ndarray, str]:
    require_image(session)
    session.prompts = session.prompts.undo()
    return show_prompts(session)


def clear(session: Session) -> tuple[np.ndarray, str]:
    require_image(session)
    session.prompts = session.prompts.cleared()
    return show_prompts(session)


def segment_everything(session: Session) -> tuple[np.ndarray, str]:
    require_image(session)
    session.prompts = session.prompts.everything_mode()
    return show_prompts(session)


# ------------------------------------------------------------------------------------------- panes

@gpu
def compute_pane(ctx: AppContext, model_label: str, multimask: bool, session: Session,
                 progress=None) -> PaneResult:
    """Encode (unless cached) and decode the session's current image and prompts with one model."""
    image, image_id, prompts = session.image, session.image_id, session.prompts  # others may replace them meanwhile
    result = PaneResult(model_label, image_id, prompts.version)
    report = progress or (lambda *args, **kwargs: None)
    if not ctx.store.is_loaded(model_label):
        report(0.0, desc=f"Loading {model_label}…")
    try:
        loaded = ctx.store.get(model_label)
    except ModelLoadError as error:
        return replace(result, error=str(error))
    predictor = SamPredictor(loaded.model, loaded.processor, cache=session.cache)
    report(0.1, desc=f"{model_label}: encoding the image (once per image)…")
    seconds = predictor.set_image(image, image_id)  # image_id: no re-hashing on every click
    # On a cache hit (0.0 s) the embedding still knows how long its first encode took: that is what is shown.
    result = replace(result, parameters=loaded.parameters, encode_cached=not seconds,
                     encode_seconds=predictor.current.encode_seconds)
    if prompts.is_empty:
        return result
    start = time.perf_counter()
    if prompts.everything:
        def grid_progress(done: float) -> None:
            report(done, desc=f"{model_label}: segmenting everything…")
        found = MaskGenerator(predictor, **EVERYTHING_OPTIONS).generate(progress=grid_progress)
        masks = [mask["segmentation"] for mask in found]
        label_map = render.label_map(masks) if masks else np.zeros(image.shape[:2], dtype=np.uint8)
        return replace(result, decode_seconds=time.perf_counter() - start, label_map=label_map,
                       mask_count=len(masks))
    points, labels, box = prompts.as_arrays()
    masks, scores = predictor.predict(points, labels, box, multimask_output=multimask)
    return replace(result, decode_seconds=time.perf_counter() - start, masks=masks, scores=scores)


# Functions, not constants: Gradio pops keys from the update dicts it is given.
def no_candidates() -> dict:
    return gr.update(choices=[], value=None, visible=False)


def no_download() -> dict:
    return gr.update(value=None, interactive=False)


def empty_pane(text: str = ""):
    """A pane's components with nothing but `text` to show (no image yet, an outdated result, an error)."""
    return None, no_candidates(), text, no_download()


def run_pane(ctx: AppContext, side: str, model_label: str, multimask: bool, session: Session, progress=None):
    """Event: bring one pane up to date with the session's image and prompts."""
    session.models[side] = model_label
    if session.image is None:
        return empty_pane("Upload a photo or pick an example, then click on an object.")
    session.results[side] = compute_pane(ctx, model_label, multimask, session, progress)
    return show_pane(ctx, side, session)


def select_candidate(ctx: AppContext, side: str, index: int | None, session: Session):
    """Event: show another of the pane's multimask candidates."""
    result = session.results.get(side)
    if result is not None and result.masks is not None and index is not None and 0 <= index < len(result.masks):
        session.results[side] = replace(result, selected=index)
    return show_pane(ctx, side, session)


def show_pane(ctx: AppContext, side: str, session: Session, draw: bool = True):
    """A pane's components (overlay image, candidate choice, text, download) for its latest result.

    draw=False leaves a result's overlay image as it is (gr.skip()): after the `segment` API, whose outputs
    are those overlays already (drawing one again costs ~50 ms on a 2048 px photo, and a second upload).
    """
    result = session.results.get(side)
    if result is None or result.image_id != session.image_id:
        return empty_pane()
    if result.error:
        return empty_pane(f"**{result.model}** · ⚠️ {result.error}")
    picture = overlay(session, result) if draw else gr.skip()
    download = no_download()
    if result.mask is not None:
        download = gr.update(value=render.save_png(result.mask, ctx.mask_folder, f"{result.model}-mask"),
                             interactive=True)
    elif result.label_map is not None:
        download = gr.update(value=render.save_png(result.label_map, ctx.mask_folder, f"{result.model}-everything"),
                             interactive=True)
    candidates = no_candidates()
    if result.masks is not None and len(result.masks) > 1:
        candidates = gr.update(choices=[(f"#{i + 1} · IoU {score:.3f}", i) for i, score in enumerate(result.scores)],
                               value=result.selected, visible=True)
    return picture, candidates, pane_text(result, session), download


def overlay(session: Session, result: PaneResult) -> np.ndarray:
    base = draw_prompts(session.image, session.prompts)
    if result.mask is not None:
        return render.overlay_mask(base, result.mask)
    if result.label_map is not None:
        return render.overlay_label_map(base, result.label_map)
    return base


def pane_text(result: PaneResult, session: Session) -> str:
    encode = f"encode {result.encode_seconds:.2f} s" + (" (first time for this image; cached since)"
                                                         if result.encode_cached else "")
    lines = [f"**{result.model}** · {result.parameters / 1e6:.1f} M parameters"]
    if result.mask is not None:
        area = int(result.mask.sum())
        lines.append(f"mask {result.selected + 1} of {len(result.masks)} · predicted IoU "
                     f"{result.scores[result.selected]:.3f} · area {area:,} px ({100 * area / result.mask.size:.1f} %)")
    elif result.label_map is not None:
        lines.append(f"{result.mask_count} masks · covering {100 * (result.label_map > 0).mean():.1f} % of the image")
    else:
        lines.append("click on the photo to segment")
    lines.append(encode + (f" · decode {result.decode_seconds:.3f} s" if result.decode_seconds is not None else ""))
    return "  \n".join(lines)


def panes_iou(session: Session) -> float | None:
    """IoU of the two panes' shown masks, when both answer the current prompts."""
    left, right = (session.results.get(side) for side in SIDES)
    if left is None or right is None or left.mask is None or right.mask is None:
        return None
    if not (session.is_current(left) and session.is_current(right)):
        return None
    return float(mask_iou(left.mask, right.mask))


def agreement(session: Session) -> str:
    """Event: how closely the two panes agree."""
    iou = panes_iou(session)
    if iou is None:
        return ""
    left, right = (session.results[side] for side in SIDES)
    return f"### Agreement: mask IoU between {left.model} and {right.model} = {iou:.3f}"


# ------------------------------------------------------------------------------------------- the `segment` API

def pane_summary(result: PaneResult) -> dict:
    summary = {"model": result.model, "parameters": result.parameters, "error": result.error,
               "encode_seconds": round(result.encode_seconds, 4), "encode_cached": result.encode_cached,
               "decode_seconds": None if result.decode_seconds is None else round(result.decode_seconds, 4)}
    if result.masks is not None:
        summary.update(scores=[round(float(s), 4) for s in result.scores], selected=result.selected,
                       mask_area=int(result.mask.sum()))
    return summary


def segment(ctx: AppContext, path: str | None, points_json: str, box_json: str, multimask: bool,
            session: Session, progress=None):
    """The public `segment` endpoint: one photo and JSON prompts in; both panes' overlays and a JSON report out."""
    load_photo(session, path)
    height, width = session.image.shape[:2]
    try:  # prompts are in the uploaded photo's pixels
        prompts, notes = parse_json_prompts(points_json, box_json, session.original_size)
    except PromptError as error:
        fail(str(error))
    scale = width / session.original_size[1]
    if scale != 1:
        prompts = prompts.scaled(scale)
        notes.append(f"the photo was downscaled to {width}x{height} for the models: prompts scaled by {scale:.4f}, "
                     f"overlays and mask areas are at that size")
    session.prompts = replace(prompts, version=session.prompts.version + 1)
    report = {"image": {"name": session.image_name, "width": session.original_size[1],
                        "height": session.original_size[0], "working_width": width, "working_height": height},
              "notes": notes}
    overlays = []
    for side in SIDES:
        label = session.models.get(side, ctx.defaults[side])
        result = session.results[side] = compute_pane(ctx, label, multimask, session, progress)
        overlays.append(None if result.error else overlay(session, result))
        report[side] = pane_summary(result)
    report["iou_between_panes"] = panes_iou(session)
    return overlays[0], overlays[1], report
