"""Teaching helpers for the notebooks: fast/full mode, photos, stand-in models (`tutorial`), and figures (`plots`).

Kept out of the core import: `plots` loads matplotlib."""
