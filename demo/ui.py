"""The Gradio page: one photo with prompts on top, two model panes below, the `segment` API in an accordion.

Each pane's work is its own event (one per pane and trigger), so a slow model (SAM-H encodes for
about a minute on a small CPU) shows its progress in its own pane while the other pane carries on.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import gradio as gr

from demo import handlers
from demo.examples import example_photos
from demo.handlers import AppContext
from demo.models import ModelStore
from demo.prompts import CLICK_MODES, POSITIVE
from demo.session import Session

INTRO = """# SAM vs SlimSAM
Drop in a photo (or pick an example), click on an object, and compare the two models' masks, their
timings and their sizes. Each model encodes a photo once; every click after that only runs the small
mask decoder."""
UI_ONLY = dict(api_visibility="private")  # only `segment` is a public API endpoint


@dataclass
class Pane:
    side: str
    model: gr.Dropdown
    overlay: gr.Image
    candidates: gr.Radio
    text: gr.Markdown
    download: gr.DownloadButton

    @property
    def outputs(self) -> list:
        return [self.overlay, self.candidates, self.text, self.download]


def build_pane(side: str, store: ModelStore, model: str) -> Pane:
    with gr.Column(elem_id=f"{side}-pane"):
        dropdown = gr.Dropdown(store.labels, value=model, label=f"{side.title()} model", elem_id=f"{side}-model")
        text = gr.Markdown(elem_id=f"{side}-text")  # above the image: timings and errors stay in view
        overlay = gr.Image(label=f"{side.title()} mask", interactive=False, height=440, elem_id=f"{side}-overlay")
        candidates = gr.Radio([], label="Candidates (multimask output)", visible=False, elem_id=f"{side}-candidates")
        download = gr.DownloadButton("Download mask (PNG)", interactive=False, elem_id=f"{side}-download")
    return Pane(side, dropdown, overlay, candidates, text, download)


def build_app(store: ModelStore, left: str, right: str) -> gr.Blocks:
    """The app for a model menu and the two panes' first models (menu labels)."""
    work_folder = Path(tempfile.mkdtemp(prefix="slimsam-app-"))
    ctx = AppContext(store, {"left": left, "right": right}, work_folder)
    photos = [str(path) for path in example_photos(work_folder / "examples")]
    with gr.Blocks(title="SAM vs SlimSAM", delete_cache=(3600, 3600)) as app:
        # Gradio deep-copies this for every browser tab and API client (the embedding cache copies as empty).
        session = gr.State(Session())
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Photo", file_types=["image"], type="filepath", height=120, elem_id="upload")
                gallery = gr.Gallery(photos, label="Examples (click one)", columns=4, height=110,
                                     allow_preview=False, elem_id="examples")
                mode = gr.Radio(list(CLICK_MODES), value=POSITIVE, label="A click adds", elem_id="click-mode")
                with gr.Row():
                    undo_button = gr.Button("Undo", size="sm")
                    clear_button = gr.Button("Clear", size="sm")
                    everything_button = gr.Button("Segment everything", size="sm")
                multimask = gr.Checkbox(True, label="Multimask output (3 candidates, best shown)")
                status = gr.Markdown(elem_id="status")
            with gr.Column(scale=2):
                photo = gr.Image(label="Click on an object", interactive=False, height=480, elem_id="photo")
        with gr.Row(equal_height=False):
            panes = [build_pane("left", store, left), build_pane("right", store, right)]
        agreement = gr.Markdown(elem_id="agreement")
        with gr.Accordion("Prompts as JSON (the public `segment` API)", open=False):
            points_json = gr.Textbox(label="points: [[x, y, label], ...], label 1 positive, 0 negative",
                                     placeholder="[[250, 300, 1], [40, 60, 0]]")
            box_json = gr.Textbox(label="box: [x1, y1, x2, y2], or empty", placeholder="[100, 80, 400, 500]")
            json_button = gr.Button("Segment with these prompts")
            report = gr.JSON(label="Report")

        def run_pane_on(listener, pane: Pane) -> None:
            """Recompute `pane` when `listener` fires (in its own event), then the agreement line."""
            listener(pane_runner(ctx, pane.side), [pane.model, multimask, session], pane.outputs,
                     concurrency_id=f"{pane.side}-pane", concurrency_limit=2, **UI_ONLY
                     ).then(handlers.agreement, [session], agreement, **UI_ONLY)

        def pick_example(state, event: gr.SelectData):
            path = photos[event.index]
            return path, *handlers.load_photo(state, path)

        def click(state, click_mode, event: gr.SelectData):
            x, y = event.index
            return handlers.add_click(state, click_mode, x, y)

        prompt_outputs = [photo, status]
        prompt_events = [upload.upload(handlers.load_photo, [session, upload], prompt_outputs, **UI_ONLY),
                         gallery.select(pick_example, [session], [upload, *prompt_outputs], **UI_ONLY),
                         photo.select(click, [session, mode], prompt_outputs, **UI_ONLY),
                         undo_button.click(handlers.undo, [session], prompt_outputs, **UI_ONLY),
                         clear_button.click(handlers.clear, [session], prompt_outputs, **UI_ONLY),
                         everything_button.click(handlers.segment_everything, [session], prompt_outputs, **UI_ONLY)]

        def segment(path, points, box, multimask_flag, state, progress=gr.Progress()):
            return handlers.segment(ctx, path, points, box, multimask_flag, state, progress)
        api_event = json_button.click(segment, [upload, points_json, box_json, multimask, session],
                                      [panes[0].overlay, panes[1].overlay, report], api_name="segment")
        api_shown = api_event.success(handlers.show_prompts, [session], prompt_outputs, **UI_ONLY)

        for pane in panes:
            for event in prompt_events:
                run_pane_on(event.success, pane)
            run_pane_on(multimask.input, pane)
            run_pane_on(pane.model.input, pane)
            pane.candidates.input(partial(handlers.select_candidate, ctx, pane.side), [pane.candidates, session],
                                  pane.outputs, **UI_ONLY).then(handlers.agreement, [session], agreement, **UI_ONLY)
            # The overlays are the `segment` API's own outputs: the rest of each pane follows, not drawing them again.
            api_shown.success(partial(handlers.show_pane, ctx, pane.side, draw=False), [session], pane.outputs,
                              **UI_ONLY).then(handlers.agreement, [session], agreement, **UI_ONLY)
    return app


def pane_runner(ctx: AppContext, side: str):
    """The event function that recomputes one side's pane (Gradio shows progress via the default argument)."""
    def run(model_label: str, multimask: bool, session: Session, progress=gr.Progress()):
        return handlers.run_pane(ctx, side, model_label, multimask, session, progress)
    return run
