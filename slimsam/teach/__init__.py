"""Teaching helpers for the notebooks: fast/full mode, photos, fast mode's toy models (`tutorial`), figures (`plots`).

Kept out of the core import: `plots` loads matplotlib."""
