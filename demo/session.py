"""Per-user state, kept in one `gr.State` per browser tab (or API client): never shared, never global.

Its memory is bounded (one working-size photo, EMBEDDINGS_PER_SESSION cached embeddings, each pane's latest
masks) and released by `Session.release` when the session ends (demo.ui wires it to Gradio's unload
event and to the state's time to live).
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from demo import render
from demo.prompts import Prompts
from slimsam.infer.predictor import EmbeddingCache

SIDES = ("left", "right")
# Two panes x (the current photo + the one before): switching back costs no encode. SAM's embedding plus the
# fast decoder's context of one image is ~18 MB (slimsam.infer.fast_decoder.DecoderContext), whatever the model.
EMBEDDINGS_PER_SESSION = 4


@dataclass
class PaneResult:
    """What one pane's model made of one image and one version of the prompts."""

    model: str  # menu label
    image_id: str
    prompts_version: int
    multimask: bool = True
    parameters: int | None = 0  # None: an ONNX export's (not counted)
    runtime: str = "PyTorch"
    encode_seconds: float = 0.0  # this model's encode time for this image (measured the first time)
    encode_cached: bool = False  # the embedding came from the cache this time
    decode_seconds: float | None = None  # None: nothing to decode yet (no prompts)
    masks: np.ndarray | None = None  # (K, H, W) bool, best first
    scores: np.ndarray | None = None  # (K,) predicted IoU
    selected: int = 0  # which of the K masks is shown
    label_map: np.ndarray | None = None  # "everything": (H, W) uint8, 0 = no mask, i = the i-th mask
    mask_count: int = 0  # "everything": how many masks
    error: str | None = None  # one line: the model could not be loaded, or the pane's computation failed
    error_details: str | None = None  # more for the curious (Hub id, cache folder, what to do), markdown

    @property
    def mask(self) -> np.ndarray | None:
        return None if self.masks is None else self.masks[self.selected]


@dataclass
class Session:
    cache: EmbeddingCache = field(default_factory=lambda: EmbeddingCache(EMBEDDINGS_PER_SESSION))
    image: np.ndarray | None = None  # (H, W, 3) uint8, at most MAX_WORKING_SIDE px on its longest side
    image_id: str = ""  # content hash of `image`
    image_name: str = ""
    original_size: tuple[int, int] = (0, 0)  # (H, W) of the uploaded photo, upright; `image` may be smaller
    prompts: Prompts = field(default_factory=Prompts)
    models: dict[str, str] = field(default_factory=dict)  # side -> menu label the pane last used
    results: dict[str, PaneResult] = field(default_factory=dict)  # side -> latest result
    problem: str = ""  # the last action's error, shown until the next action
    downloads: dict[str, list[Path]] = field(default_factory=dict)  # side -> its download files (latest only)
    folder: Path | None = None  # this session's download files, made on first use
    shown: tuple[str, render.Backdrop] | None = None  # (image_id, the photo as the panes show it)

    def is_current(self, result: PaneResult) -> bool:
        """Whether `result` answers this session's current image and prompts."""
        return result.image_id == self.image_id and result.prompts_version == self.prompts.version

    def backdrop(self) -> render.Backdrop:
        """The current photo at display size, made once per photo (each click only blends a mask over it)."""
        if self.shown is None or self.shown[0] != self.image_id:
            self.shown = (self.image_id, render.backdrop(self.image))
        return self.shown[1]

    def download_folder(self) -> Path:
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="slimsam-session-"))
        return self.folder

    def replace_downloads(self, side: str, paths: list[Path]) -> None:
        """Make `paths` the pane's download files, deleting its earlier ones (Gradio has served copies of them)."""
        for path in self.downloads.get(side, []):
            path.unlink(missing_ok=True)
        self.downloads[side] = paths

    def release(self) -> None:
        """Drop everything this session holds (embeddings, photo, masks, download files): the session ended."""
        self.cache = EmbeddingCache(EMBEDDINGS_PER_SESSION)
        self.image, self.image_id, self.image_name, self.original_size = None, "", "", (0, 0)
        self.prompts, self.results, self.downloads, self.problem, self.shown = Prompts(), {}, {}, "", None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
