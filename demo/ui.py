"""The Gradio page: a compact bar of controls, then the two panes side by side, each showing the photo with its
own model's mask, and clickable; the `segment` API in an accordion below.

Laid out for a 1280x800 screen: both panes, their model names and timings are in view without scrolling.
A click on either pane adds the prompt to both. Each pane's work is its own event (one per pane and
trigger), so a slow model (SAM-H encodes for about a minute on a small CPU) shows its progress in its own
pane while the other pane carries on.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import gradio as gr

from demo import handlers, render
from demo.examples import example_photos
from demo.handlers import AppContext
from demo.models import ModelStore
from demo.prompts import CLICK_MODES, POSITIVE
from demo.session import SIDES, Session

UI_ONLY = dict(api_visibility="private")  # only `segment` is a public API endpoint
SESSION_TTL = 600  # s: an API client's session is released this long after its last request
# Tighter than Gradio's defaults, so that the bar and both panes fit a 1280x800 screen (Gradio 6 takes it in
# launch(css=...): demo.cli passes it).
CSS = """
.gradio-container { padding-top: 4px !important; padding-bottom: 4px !important; }
#header { align-items: baseline; gap: 16px; flex-wrap: nowrap !important; }
#title h2 { margin: 0 !important; font-size: 1.15rem; white-space: nowrap; }
#notice, #status { font-size: 0.8rem; }
#notice p, #status p { margin: 0 !important; }
#status { height: 3.1em; overflow: hidden; flex: 1 1 auto !important; }  /* fixed: a message never moves the panes */
#status p { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; line-height: 1.45 !important; }
#header > * { min-width: 0 !important; }
#title { flex: 0 0 auto !important; width: auto !important; }
#bar { gap: 8px; align-items: center; flex-wrap: nowrap; }
#upload { flex: 0 0 auto !important; }
#examples { flex: 0 0 270px !important; width: 270px; overflow: hidden; }
#examples .grid-wrap { overflow: hidden !important; padding: 0 !important; min-height: 0 !important; }
#examples .grid-container { grid-template-columns: repeat(7, 36px) !important; grid-auto-rows: 46px !important;
                            gap: 3px !important; }  /* all 7 examples in one row: 4 photos, 3 toy shapes */
#click-mode { flex: 0 0 auto !important; width: auto !important; }
#click-mode .wrap { gap: 4px; flex-wrap: nowrap; }
#click-mode label { padding: 4px 8px !important; white-space: nowrap; }
#bar button { white-space: nowrap; }
#undo, #clear, #everything { flex: 0 0 auto !important; }
#multimask { flex: 0 0 auto !important; width: auto !important; }
.pane { gap: 2px !important; }
.pane-head { align-items: center; gap: 8px; flex-wrap: nowrap; }
.pane-head .model { flex: 0 0 190px !important; }
.pane-text { font-size: 0.8rem; line-height: 1.35; }
.pane-text p { margin: 0 !important; }
.pane-picture img { cursor: crosshair; }
.pane-foot { gap: 6px; align-items: center; }
"""


@dataclass
class Pane:
    side: str
    model: gr.Dropdown
    picture: gr.Image
    candidates: gr.Radio
    text: gr.Markdown
    mask_download: gr.DownloadButton
    cutout_download: gr.DownloadButton

    @property
    def outputs(self) -> list:
        return [self.picture, self.candidates, self.text]

    @property
    def downloads(self) -> list:
        return [self.mask_download, self.cutout_download]


def build_pane(side: str, store: ModelStore, model: str) -> Pane:
    with gr.Column(elem_id=f"{side}-pane", elem_classes="pane"):
        with gr.Row(elem_classes="pane-head"):  # the model, its size and timings (or its error) above the photo
            dropdown = gr.Dropdown(store.menu(), value=model, show_label=False, container=False,
                                   elem_id=f"{side}-model", elem_classes="model")
            text = gr.Markdown(elem_id=f"{side}-text", elem_classes="pane-text")
        picture = gr.Image(show_label=False, interactive=False, height="calc(100vh - 205px)", format="jpeg",
                           buttons=[], container=False, elem_id=f"{side}-overlay", elem_classes="pane-picture")
        with gr.Row(elem_classes="pane-foot"):
            candidates = gr.Radio([], show_label=False, container=False, visible=False, elem_id=f"{side}-candidates")
            mask_download = gr.DownloadButton("Mask PNG", interactive=False, size="sm", elem_id=f"{side}-mask")
            cutout_download = gr.DownloadButton("Cut-out PNG", interactive=False, size="sm", elem_id=f"{side}-cutout")
    return Pane(side, dropdown, picture, candidates, text, mask_download, cutout_download)


def build_app(store: ModelStore, left: str, right: str, session_ttl: float = SESSION_TTL) -> gr.Blocks:
    """The app for a model menu and the two panes' first models (menu labels). session_ttl: seconds after an
    API client's last request that its session is released."""
    ctx = AppContext(store, {"left": left, "right": right})
    photos = [str(path) for path in example_photos(Path(tempfile.mkdtemp(prefix="slimsam-examples-")))]
    with gr.Blocks(title="SAM vs SlimSAM", delete_cache=(1800, 3600)) as app:
        # Gradio deep-copies this for every browser tab and API client (the embedding cache copies as empty).
        # The time to live starts when an event outputs the state: the `segment` API does (a tab's session is
        # released when the tab closes, by the unload event below).
        session = gr.State(Session(), time_to_live=session_ttl, delete_callback=handlers.release)
        with gr.Row(elem_id="header"):
            gr.Markdown("## SAM vs SlimSAM", elem_id="title")
            # At start it also says which models are here (the menus mark the others).
            status = gr.Markdown(f"{handlers.status_line(Session())}\n\n{store.notice()}", elem_id="status")
        with gr.Row(elem_id="bar"):
            upload = gr.UploadButton("Upload photo", size="sm", variant="primary", min_width=0, elem_id="upload")
            gallery = gr.Gallery(photos, show_label=False, columns=len(photos), rows=1, height=48, object_fit="cover",
                                 allow_preview=False, container=False, buttons=[], elem_id="examples")
            mode = gr.Radio(list(CLICK_MODES), value=POSITIVE, show_label=False, container=False, min_width=0,
                            elem_id="click-mode")
            undo_button = gr.Button("Undo", size="sm", min_width=0, elem_id="undo")
            clear_button = gr.Button("Clear", size="sm", min_width=0, elem_id="clear")
            everything_button = gr.Button("Segment everything", size="sm", min_width=0, elem_id="everything")
            multimask = gr.Checkbox(True, label="3 candidates", container=False, min_width=0, elem_id="multimask")
        with gr.Row(equal_height=False):
            panes = [build_pane(side, store, ctx.defaults[side]) for side in SIDES]
        agreement = gr.Markdown(elem_id="agreement")
        gr.Markdown(store.notice(), elem_id="notice")
        with gr.Accordion("Prompts as JSON (the public `segment` API)", open=False):
            points_json = gr.Textbox(label="points: [[x, y, label], ...], label 1 positive, 0 negative",
                                     placeholder="[[250, 300, 1], [40, 60, 0]]")
            box_json = gr.Textbox(label="box: [x1, y1, x2, y2], or empty", placeholder="[100, 80, 400, 500]")
            json_button = gr.Button("Segment with these prompts")
            report = gr.JSON(label="Report")
            api_overlays = [gr.Image(visible=False, format="jpeg") for _ in SIDES]  # the API's outputs
        wire_events(app, ctx, session, photos, upload, gallery, mode, multimask, status, panes, agreement,
                    (undo_button, clear_button, everything_button), (json_button, points_json, box_json, report,
                                                                    api_overlays))
    return app


def wire_events(app, ctx, session, photos, upload, gallery, mode, multimask, status, panes, agreement, buttons,
                api) -> None:
    """Every event of the page: an action updates the session and the status line, then each pane follows in
    its own event (with progress in that pane where there may be a wait; an instant action has brought the
    pane up to date already where that was only a decode), then its downloads and the agreement line."""
    undo_button, clear_button, everything_button = buttons
    json_button, points_json, box_json, report, api_overlays = api

    def follow(event, progress: bool) -> None:
        """After `event`, bring both panes up to date, each in its own event."""
        for pane in panes:
            shown = event.then(pane_runner(ctx, pane.side), [pane.model, multimask, session], pane.outputs,
                               concurrency_id=f"{pane.side}-pane", concurrency_limit=2,
                               show_progress="full" if progress else "hidden", show_progress_on=[pane.picture],
                               **UI_ONLY)
            after_pane(shown, pane)

    def after_pane(event, pane: Pane) -> None:
        event.then(partial(handlers.pane_downloads, pane.side), [session], pane.downloads,
                   concurrency_id=f"{pane.side}-downloads", show_progress="hidden", **UI_ONLY)
        event.then(handlers.agreement, [session], agreement, show_progress="hidden", **UI_ONLY)

    def pick_example(state, event: gr.SelectData):
        path = photos[event.index]
        return path, handlers.load_photo(ctx, state, path)

    quick = dict(show_progress="hidden", **UI_ONLY)
    instant = dict(quick, queue=False)  # milliseconds of work: straight to the server, not through the queue
    follow(upload.upload(partial(handlers.load_photo, ctx), [session, upload], status, **quick), progress=True)
    follow(gallery.select(pick_example, [session], [upload, status], **quick), progress=True)
    # Instant actions answer with the status line and both panes where they only need a decode (one round trip
    # instead of three: handlers.panes_if_only_decoding); the panes' queued events follow for the rest.
    with_panes = [session, *(pane.model for pane in panes), multimask]
    instant_outputs = [status, *(output for pane in panes for output in pane.outputs)]

    def click(state, left_model, right_model, multimask_flag, click_mode, event: gr.SelectData):
        """A click on a pane's picture, the photo at display size, at display pixel event.index."""
        shown = render.display_size(state.image.shape[:2]) if state.image is not None else None
        line = handlers.add_click(state, click_mode, *event.index, shown)
        return line, *handlers.panes_if_only_decoding(ctx, [left_model, right_model], multimask_flag, state)

    def instantly(action):
        def run(state, left_model, right_model, multimask_flag):
            line = action(state)
            return line, *handlers.panes_if_only_decoding(ctx, [left_model, right_model], multimask_flag, state)
        return run

    for pane in panes:  # a click on either pane prompts both
        follow(pane.picture.select(click, [*with_panes, mode], instant_outputs, **instant), progress=False)
    for button, action in ((undo_button, handlers.undo), (clear_button, handlers.clear)):
        follow(button.click(instantly(action), with_panes, instant_outputs, **instant), progress=False)
    follow(multimask.input(instantly(handlers.status_line), with_panes, instant_outputs, **instant), progress=False)
    follow(everything_button.click(handlers.segment_everything, [session], status, **instant), progress=True)
    for pane in panes:
        shown = pane.model.input(pane_runner(ctx, pane.side), [pane.model, multimask, session], pane.outputs,
                                 concurrency_id=f"{pane.side}-pane", concurrency_limit=2,
                                 show_progress_on=[pane.picture], **UI_ONLY)
        after_pane(shown, pane)
        chosen = pane.candidates.input(partial(handlers.select_candidate, pane.side), [pane.candidates, session],
                                       pane.outputs, **quick)
        after_pane(chosen, pane)

    def segment(path, points, box, multimask_flag, state, progress=gr.Progress()):
        return handlers.segment(ctx, path, points, box, multimask_flag, state, progress)
    api_event = json_button.click(segment, [upload, points_json, box_json, multimask, session],
                                  [*api_overlays, report, session], api_name="segment")
    api_event.failure(handlers.status_line, [session], status, **quick)
    api_shown = api_event.success(handlers.status_line, [session], status, **quick)
    for pane in panes:  # the page shows the API's result in the panes, at display size
        after_pane(api_shown.then(partial(handlers.show_pane, pane.side), [session], pane.outputs, **quick), pane)
    app.unload(release_on_unload(app, session))


def release_on_unload(app: gr.Blocks, session_state: gr.State):
    """The unload event's function: a tab closed, so free its session's memory now. (Gradio itself keeps a
    closed tab's state for an hour, in case it reconnects; one that does gets a fresh start: "Upload a photo
    or pick an example first".)"""
    def release(request: gr.Request) -> None:
        sessions = app.state_holder
        if request.session_hash in sessions:
            state = sessions[request.session_hash].state_data.get(session_state._id)
            if state is not None:
                handlers.release(state)
    return release


def pane_runner(ctx: AppContext, side: str):
    """The event function that recomputes one side's pane (Gradio shows progress via the default argument)."""
    def run(model_label: str, multimask: bool, session: Session, progress=gr.Progress()):
        return handlers.run_pane(ctx, side, model_label, multimask, session, progress)
    return run
