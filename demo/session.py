"""Per-user state, kept in one `gr.State` per browser tab (or API client): never shared, never global."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from demo.prompts import Prompts
from slimsam.infer.predictor import EmbeddingCache

SIDES = ("left", "right")


@dataclass
class PaneResult:
    """What one pane's model made of one image and one version of the prompts."""

    model: str  # menu label
    image_id: str
    prompts_version: int
    parameters: int = 0
    encode_seconds: float = 0.0  # this model's encode time for this image (measured the first time)
    encode_cached: bool = False  # the embedding came from the cache this time
    decode_seconds: float | None = None  # None: nothing to decode yet (no prompts)
    masks: np.ndarray | None = None  # (K, H, W) bool, best first
    scores: np.ndarray | None = None  # (K,) predicted IoU
    selected: int = 0  # which of the K masks is shown
    label_map: np.ndarray | None = None  # "everything": (H, W) uint8, 0 = no mask, i = the i-th mask
    mask_count: int = 0  # "everything": how many masks
    error: str | None = None  # the model could not be loaded

    @property
    def mask(self) -> np.ndarray | None:
        return None if self.masks is None else self.masks[self.selected]


@dataclass
class Session:
    cache: EmbeddingCache = field(default_factory=EmbeddingCache)  # embeddings, keyed by model and image
    image: np.ndarray | None = None  # (H, W, 3) uint8, at most MAX_WORKING_SIDE px on its longest side
    image_id: str = ""  # content hash of `image`
    image_name: str = ""
    original_size: tuple[int, int] = (0, 0)  # (H, W) of the uploaded photo, upright; `image` may be smaller
    prompts: Prompts = field(default_factory=Prompts)
    models: dict[str, str] = field(default_factory=dict)  # side -> menu label the pane last used
    results: dict[str, PaneResult] = field(default_factory=dict)  # side -> latest result

    def is_current(self, result: PaneResult) -> bool:
        """Whether `result` answers this session's current image and prompts."""
        return result.image_id == self.image_id and result.prompts_version == self.prompts.version
