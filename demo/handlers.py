"""What the app's events do, as functions of the session state; demo.ui wires them to components.

Every problem a user can cause (a file that is no photo, a click outside the image, prompts before a photo,
malformed JSON, a model without weights) ends in a one-line message that stays until the next action: the
status line for an action in the page (`act`), the pane's text for a model that cannot be loaded (the
other pane keeps working), `gr.Error` for the `segment` API. An action that fails changes nothing in the
session. Anything unexpected is logged with its traceback and shown as one line.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from demo import render
from demo.models import TOY_LABEL, TOY_NOTE, ModelLoadError, ModelStore, gpu
from demo.prompts import BOX, POSITIVE, PromptError, Prompts, parse_box, parse_points, prompts_from
from demo.session import SIDES, PaneResult, Session
from slimsam.data.images import open_rgb_sized
from slimsam.evaluate.masks import mask_iou
from slimsam.infer.everything import MaskGenerator
from slimsam.infer.heap import release_free_memory
from slimsam.infer.predictor import MAX_WORKING_SIDE, SamPredictor, image_hash

log = logging.getLogger("demo")
# 256 prompts, 64 per decoder pass (a ~1.4 GB peak of temporary tensors for SAM); at most 64 masks shown.
EVERYTHING_OPTIONS = dict(points_per_side=16, points_per_batch=64, max_masks=64)
# Photos with more pixels than this (decoded at full size: PNG, TIFF, ...; JPEGs decode reduced) are decoded
# one at a time, and their memory goes back to the system right after: a 13000 x 13000 PNG takes ~0.7 GB.
LARGE_DECODE_PIXELS = 16_000_000


@dataclass(frozen=True)
class AppContext:
    """What every handler may use besides the session: app-wide and read-only (the store only adds models)."""

    store: ModelStore
    defaults: dict[str, str]  # side -> menu label shown first
    large_decodes: threading.Lock = field(default_factory=threading.Lock)


class PhotoError(Exception):
    """A photo that cannot be used (no file, not an image, damaged, too large), or none yet; for users."""


@dataclass(frozen=True)
class Photo:
    image: np.ndarray  # (H, W, 3) uint8 working copy
    name: str  # the file's name, never its server path
    original_size: tuple[int, int]  # (H, W) of the file, upright


def fail(message: str):
    """Show `message` to an API client and stop the event chain (no traceback: it is not a bug)."""
    raise gr.Error(message, print_exception=False)


def unexpected(error: Exception) -> str:
    """One line for an exception nobody anticipated (the traceback goes to the server log)."""
    first = str(error).splitlines()[0][:160] if str(error) else ""
    return f"Unexpected error ({type(error).__name__}{': ' + first if first else ''}); the server log has the details."


def without_paths(text: str, path: str | Path) -> str:
    """`text` with the server's folders taken out: the file is named, never where the server keeps it."""
    text = text.replace(str(path), Path(path).name)
    return re.sub(r"(?:[A-Za-z]:)?(?:[\\/][^\s'\"\\/]+)+[\\/]", "", text)


def require_image(session: Session) -> np.ndarray:
    if session.image is None:
        raise PhotoError("Upload a photo or pick an example first.")
    return session.image


# ------------------------------------------------------------------------------------------- image and prompts

def read_photo(ctx: AppContext, path: str | None) -> Photo:
    """Read an uploaded file as a photo (any mode, EXIF-rotated, huge ones downscaled); raises PhotoError."""
    if not path:
        raise PhotoError("No file: upload a photo or pick an example.")
    name = Path(path).name
    try:
        with Image.open(path) as header:  # the header only: is it big?
            large = header.width * header.height > LARGE_DECODE_PIXELS
        with ctx.large_decodes if large else nullcontext():
            try:
                image, original_size = open_rgb_sized(path, max_side=MAX_WORKING_SIDE)
            finally:
                if large:  # PIL's blocks of a huge decode would otherwise stay in the heap (slimsam.infer.heap)
                    release_free_memory()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        cause = error.__cause__ or error  # open_rgb_sized's OSError wraps what PIL raised
        detail = without_paths(str(cause), path)
        if isinstance(cause, Image.DecompressionBombError):
            raise PhotoError(f"Cannot read {name}: it is too large ({detail}).") from None
        raise PhotoError(f"Cannot read {name}: it is not an image or it is damaged ({detail}).") from None
    return Photo(np.asarray(image), name, original_size)


def use_photo(session: Session, photo: Photo, prompts: Prompts | None = None) -> None:
    """Make `photo` the session's photo, with `prompts` (default none) and no masks yet."""
    session.image, session.image_id, session.image_name = photo.image, image_hash(photo.image), photo.name
    session.original_size = photo.original_size
    session.prompts = replace(prompts or Prompts(), version=session.prompts.version + 1, previous=None)
    session.results.clear()


def status_line(session: Session) -> str:
    """The line above the panes: the last action's problem (until the next action), the photo, the prompts."""
    problem = f"⚠️ **{session.problem}**\n\n" if session.problem else ""  # its own line (paragraph)
    if session.image is None:
        return problem + "Upload a photo or pick an example, then click on an object in either pane."
    height, width = session.image.shape[:2]
    full_height, full_width = session.original_size
    note = (f" (downscaled from {full_width}x{full_height}: the models see 1024 px anyway)"
            if (full_height, full_width) != (height, width) else "")
    return problem + f"**{session.image_name}** {width}x{height}{note} · {session.prompts.describe()}"


def act(session: Session, change: Callable[[], None]) -> str:
    """Run one user action on the session; returns the status line, with the action's problem if it had one.

    A PromptError or PhotoError is the user's to fix: its message stays on the status line until the next
    action. Anything else is logged with its traceback and shown as one line. Actions raise before they
    change anything, so a failed one leaves the session as it was.
    """
    try:
        change()
        session.problem = ""
    except (PromptError, PhotoError) as error:
        session.problem = str(error)
    except Exception as error:  # a bug: logged in full, shown in one line
        log.exception("unexpected error in a page action")
        session.problem = unexpected(error)
    return status_line(session)


def load_photo(ctx: AppContext, session: Session, path: str | None) -> str:
    """Event: a new photo (uploaded or an example); prompts and masks start afresh."""
    return act(session, lambda: use_photo(session, read_photo(ctx, path)))


def add_click(session: Session, mode: str, x: float, y: float, shown: tuple[int, int] | None = None) -> str:
    """Event: a click at pixel (x, y) of a pane's picture of size `shown` (h, w; default the photo's own size):
    a positive or negative point, or a box corner, in both panes."""
    def change():
        size = require_image(session).shape[:2]
        px, py = render.to_image(x, y, shown, size) if shown else (x, y)
        if mode == BOX:
            session.prompts = session.prompts.add_box_corner(px, py, size)
        else:
            session.prompts = session.prompts.add_point(px, py, 1 if mode == POSITIVE else 0, size)
    return act(session, change)


def change_prompts(session: Session, how: Callable[[Prompts], Prompts]) -> str:
    """Event: Undo, Clear or Segment everything: the prompts become how(prompts), once there is a photo."""
    def change():
        require_image(session)
        session.prompts = how(session.prompts)
    return act(session, change)


def undo(session: Session) -> str:
    return change_prompts(session, Prompts.undo)


def clear(session: Session) -> str:
    return change_prompts(session, Prompts.cleared)


def segment_everything(session: Session) -> str:
    return change_prompts(session, Prompts.everything_mode)


# ------------------------------------------------------------------------------------------- panes

def no_progress(fraction: float, desc: str = "") -> None:
    """What a pane reports to when nobody watches (tests, the API without a page)."""


@gpu
def compute_pane(ctx: AppContext, model_label: str, multimask: bool, session: Session,
                 report: Callable = no_progress) -> PaneResult:
    """Encode (unless cached) and decode the session's current image and prompts with one model.

    report(fraction, desc=...) hears each stage: loading the model, encoding (per encoder block),
    segment-everything's grid and upscaling (a gr.Progress shows it in the pane)."""
    image, image_id, prompts = session.image, session.image_id, session.prompts  # others may replace them meanwhile
    result = PaneResult(model_label, image_id, prompts.version, multimask)
    if not ctx.store.is_loaded(model_label):
        report(0.0, desc=f"{model_label}: {ctx.store.loading_stage(model_label)}…")
    try:
        loaded = ctx.store.get(model_label)
    except ModelLoadError as error:
        return replace(result, error=error.summary, error_details=error.details)
    predictor = SamPredictor(loaded.model, loaded.processor, cache=session.cache)
    def encoding(done: float, stage: str) -> None:
        report(done, desc=f"{model_label}: {stage} the photo…")
    seconds = predictor.set_image(image, image_id, progress=encoding)  # image_id: no re-hashing on every click
    # On a cache hit (0.0 s) the embedding still knows how long its first encode took: that is what is shown.
    result = replace(result, parameters=loaded.parameters, runtime=loaded.runtime, encode_cached=not seconds,
                     encode_seconds=predictor.current.encode_seconds)
    if prompts.is_empty:
        return result
    start = time.perf_counter()
    if prompts.everything:
        found = MaskGenerator(predictor, **EVERYTHING_OPTIONS).generate(
            progress=lambda done, stage: report(done, desc=f"{model_label}: {stage}…"))
        release_free_memory()  # its batches' ~1.4 GB of tensors (demo.cli serves them from the heap)
        masks = [mask["segmentation"] for mask in found]
        label_map = render.label_map(masks) if masks else np.zeros(image.shape[:2], dtype=np.uint8)
        return replace(result, decode_seconds=time.perf_counter() - start, label_map=label_map,
                       mask_count=len(masks))
    points, labels, box = prompts.as_arrays()
    masks, scores = predictor.predict(points, labels, box, multimask_output=multimask)
    return replace(result, decode_seconds=time.perf_counter() - start, masks=masks, scores=scores)


def safe_compute_pane(ctx: AppContext, model_label: str, multimask: bool, session: Session,
                      report: Callable = no_progress) -> PaneResult:
    """compute_pane, with anything unexpected logged and turned into the pane's one-line error."""
    try:
        return compute_pane(ctx, model_label, multimask, session, report)
    except Exception as error:  # a bug: logged in full, shown in the pane in one line
        log.exception("unexpected error computing the %s pane", model_label)
        return PaneResult(model_label, session.image_id, session.prompts.version, multimask, error=unexpected(error))


# Functions, not constants: Gradio pops keys from the update dicts it is given.
def no_candidates() -> dict:
    return gr.update(choices=[], value=None, visible=False)


def no_download() -> dict:
    return gr.update(value=None, interactive=False)


def run_pane(ctx: AppContext, side: str, model_label: str, multimask: bool, session: Session, progress=None):
    """Event: bring one pane (picture, candidates, text) up to date with the session's image and prompts.

    A pane whose result already answers them (same photo, prompts, model and multimask: the action before
    failed, or changed nothing) is left as it is."""
    session.models[side] = model_label
    if session.image is None:
        return None, no_candidates(), "Upload a photo or pick an example, then click on an object."
    result = session.results.get(side)
    if (result is not None and session.is_current(result) and result.model == model_label
            and result.multimask == multimask and not result.error):
        return gr.skip(), gr.skip(), gr.skip()
    report = progress if progress is not None else no_progress  # a gr.Progress is falsy: never `progress or ...`
    session.results[side] = safe_compute_pane(ctx, model_label, multimask, session, report)
    return show_pane(side, session)


def panes_if_only_decoding(ctx: AppContext, models: list[str], multimask: bool, session: Session) -> list:
    """Both panes' outputs (picture, candidates, text; left then right), brought up to date here and now where
    that is only a decode, tens of milliseconds: the pane's model is loaded (or failed to load) and the
    session's cache holds its embedding of the photo. Other panes (an encode, a model to load,
    segment-everything: seconds) are gr.skip(): their own queued event follows, with progress.

    An instant action (a click, undo, clear) returns this with its status line, so that both masks arrive in the
    action's answer instead of two queued events later (BENCHMARKS.md, "The comparison app").
    """
    def pane(side: str, label: str) -> list:
        if session.image is not None and not session.prompts.everything and only_decoding(ctx, label, session):
            return list(run_pane(ctx, side, label, multimask, session))
        return [gr.skip()] * 3
    # The two panes at once (torch and numpy let go of the GIL): ~25% less time to both masks in the page.
    with ThreadPoolExecutor(len(SIDES)) as pool:
        panes = [pool.submit(pane, side, label) for side, label in zip(SIDES, models)]
        return [output for done in panes for output in done.result()]


def only_decoding(ctx: AppContext, label: str, session: Session) -> bool:
    """Whether bringing a pane with model `label` up to date needs no model load and no encode."""
    if not ctx.store.is_loaded(label):
        return False
    try:
        loaded = ctx.store.get(label)
    except ModelLoadError:  # the pane shows its one-line error at once
        return True
    return SamPredictor(loaded.model, loaded.processor, cache=session.cache).is_encoded(session.image,
                                                                                       session.image_id)


def select_candidate(side: str, index: int | None, session: Session):
    """Event: show another of the pane's multimask candidates."""
    result = session.results.get(side)
    if result is not None and result.masks is not None and index is not None and 0 <= index < len(result.masks):
        session.results[side] = replace(result, selected=index)
    return show_pane(side, session)


def show_pane(side: str, session: Session):
    """A pane's picture (the photo at display size with its mask and the prompts), candidate choice and text."""
    if session.image is None:
        return None, no_candidates(), ""
    result = session.results.get(side)
    if result is None or result.image_id != session.image_id:
        return render.pane_picture(session.backdrop(), session.prompts), no_candidates(), ""
    picture = render.pane_picture(session.backdrop(), session.prompts, mask=result.mask, label_map=result.label_map)
    candidates = no_candidates()
    if result.masks is not None and len(result.masks) > 1:
        candidates = gr.update(choices=[(f"#{i + 1} · IoU {score:.3f}", i) for i, score in enumerate(result.scores)],
                               value=result.selected, visible=True)
    return picture, candidates, pane_text(result)


def pane_text(result: PaneResult) -> str:
    """Size and timings on the first line, what the pane shows on the second (the model's name is in the menu
    beside it); or the error."""
    if result.error:
        details = f"<details><summary>details</summary>\n\n{result.error_details}\n\n</details>" \
            if result.error_details else ""
        return f"⚠️ {result.error}\n{details}"
    encode = f"encode {result.encode_seconds:.2f} s" + (" (cached)" if result.encode_cached else "")
    decode = f" · decode {result.decode_seconds:.3f} s" if result.decode_seconds is not None else ""
    size = f"{result.parameters / 1e6:.1f} M parameters · " if result.parameters is not None else ""
    first = f"{size}{result.runtime} · {encode}{decode}"
    if result.model == TOY_LABEL:
        first += f" · {TOY_NOTE}"
    if result.mask is not None:
        area = int(result.mask.sum())
        second = (f"mask {result.selected + 1} of {len(result.masks)} · predicted IoU "
                  f"{result.scores[result.selected]:.3f} · area {area:,} px ({100 * area / result.mask.size:.1f} %)")
    elif result.label_map is not None:
        second = f"{result.mask_count} masks · covering {100 * (result.label_map > 0).mean():.1f} % of the photo"
    else:
        second = "click on the photo in either pane to segment"
    return f"{first}  \n{second}"


def pane_downloads(side: str, session: Session):
    """Event (after the pane is shown): the pane's downloads: the mask PNG and the object cut out as an RGBA PNG
    (for segment-everything: the label map PNG). Files of earlier results are deleted."""
    result = session.results.get(side)
    if result is None or session.image is None or not session.is_current(result) or result.error:
        session.replace_downloads(side, [])
        return no_download(), no_download()
    folder, stem = session.download_folder(), Path(session.image_name).stem or "photo"
    if result.mask is not None:
        mask = render.save_png(result.mask, folder, f"{stem}-{result.model}-mask")
        cutout = render.save_png(render.cut_out(session.image, result.mask), folder, f"{stem}-{result.model}-cutout")
        session.replace_downloads(side, [mask, cutout])
        return gr.update(value=mask, interactive=True), gr.update(value=cutout, interactive=True)
    if result.label_map is not None:
        labels = render.save_png(result.label_map, folder, f"{stem}-{result.model}-everything")
        session.replace_downloads(side, [labels])
        return gr.update(value=labels, interactive=True), no_download()
    session.replace_downloads(side, [])
    return no_download(), no_download()


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
    return f"**Agreement**: mask IoU between {left.model} and {right.model} = {iou:.3f}"


def release(session: Session) -> None:
    """The session ended (tab closed, or its time to live passed): free what it holds."""
    session.release()
    log.info("released a session's photo, embeddings and masks")


# ------------------------------------------------------------------------------------------- the `segment` API

def pane_summary(result: PaneResult) -> dict:
    summary = {"model": result.model, "parameters": result.parameters, "runtime": result.runtime,
               "error": None if result.error is None else f"{result.error} {result.error_details or ''}".strip(),
               "encode_seconds": round(result.encode_seconds, 4), "encode_cached": result.encode_cached,
               "decode_seconds": None if result.decode_seconds is None else round(result.decode_seconds, 4)}
    if result.masks is not None:
        summary.update(scores=[round(float(s), 4) for s in result.scores], selected=result.selected,
                       mask_area=int(result.mask.sum()))
    return summary


def validated_request(ctx: AppContext, path: str | None, points_json: str, box_json: str,
                      multimask) -> tuple[Photo, Prompts, list[str]]:
    """Everything a `segment` request gives, checked before anything is done with it: the JSON text first (a
    malformed or oversized request fails in microseconds), then the photo, then the prompts against its size.
    Returns the photo and the prompts in its working copy's pixels, and notes on what was adjusted."""
    if not isinstance(multimask, bool):
        raise PromptError(f"multimask must be true or false, got {str(multimask)[:40]!r}")
    points, corners = parse_points(points_json), parse_box(box_json)
    photo = read_photo(ctx, path)
    prompts, notes = prompts_from(points, corners, photo.original_size)  # in the uploaded photo's pixels
    height, width = photo.image.shape[:2]
    scale = width / photo.original_size[1]
    if scale != 1:
        prompts = prompts.scaled(scale)
        notes.append(f"the photo was downscaled to {width}x{height} for the models: prompts scaled by {scale:.4f}, "
                     f"overlays and mask areas are at that size")
    return photo, prompts, notes


def segment(ctx: AppContext, path: str | None, points_json: str, box_json: str, multimask: bool,
            session: Session, progress=None):
    """The public `segment` endpoint: one photo and JSON prompts in; both panes' overlays (at the working size)
    and a JSON report out, and the session (as a gr.State output, which starts its time to live).

    A request that fails validation raises gr.Error and changes nothing in the session."""
    try:
        photo, prompts, notes = validated_request(ctx, path, points_json, box_json, multimask)
    except (PromptError, PhotoError) as error:
        session.problem = str(error)  # for the page's status line; nothing else changes
        fail(str(error))
    except Exception as error:  # a bug: logged in full, one line for the client
        log.exception("unexpected error validating a segment request")
        fail(unexpected(error))
    use_photo(session, photo, prompts)
    session.problem = ""
    height, width = photo.image.shape[:2]
    report = {"image": {"name": photo.name, "width": photo.original_size[1], "height": photo.original_size[0],
                        "working_width": width, "working_height": height}, "notes": notes}
    pictures = []
    report_to = progress if progress is not None else no_progress
    full_size = render.backdrop(photo.image, shown=photo.image.shape[:2])  # overlays at the working size
    for side in SIDES:
        label = session.models.get(side, ctx.defaults[side])
        result = session.results[side] = safe_compute_pane(ctx, label, multimask, session, report_to)
        pictures.append(None if result.error else render.pane_picture(full_size, session.prompts, mask=result.mask))
        report[side] = pane_summary(result)
    report["iou_between_panes"] = panes_iou(session)
    return pictures[0], pictures[1], report, session
