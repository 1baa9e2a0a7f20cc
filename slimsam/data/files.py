"""Writing files and folders atomically: a reader (or a resumed run) sees the old version or the new one, whole.

Everything is first written beside its destination under a hidden temporary name, `.NAME.<something>`,
then renamed into place; a kill at any moment leaves at most such a temporary behind, which
`remove_stale_temporaries` clears when the next run starts.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def replace_file_atomically(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` through `write(handle)` into a temporary file beside it, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomically(path: str | Path, data) -> None:
    replace_file_atomically(path, lambda handle: handle.write(json.dumps(data, indent=2).encode()))


def write_folder_atomically(folder: str | Path, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Build a folder with `write(tmp_folder)` beside its destination, then move it in place; returns `folder`.

    When overwriting, the old folder is renamed aside first and deleted only once the new one is in place,
    so an interruption at any point leaves a complete folder (old or new) under `folder` or beside it.
    Raises FileExistsError when `folder` exists and `overwrite` is False (before writing anything).
    """
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"output folder {folder} already exists (pass --overwrite to replace it)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    old = tmp.with_name(tmp.name + ".old")
    try:
        write(tmp)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return folder


def remove_stale_temporaries(folder: str | Path, names: list[str]) -> None:
    """Delete the temporaries (`.NAME.*`, files or folders) that a killed writer of one of `names` left in
    `folder`. Nothing else is touched, whatever else the folder holds."""
    for name in names:
        for entry in Path(folder).glob(f".{name}.*"):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
