"""Checks on output file paths, made before anything is written (torch-free)."""

from __future__ import annotations

import os
from pathlib import Path


def output_file_problem(path: str, flag: str, suffix: str | None = None) -> str | None:
    """Why `path` cannot be written as a file for `flag` (None if it can): it is a folder,
    lacks `suffix`, or its folder is missing or not writable."""
    p = Path(path)
    if p.is_dir():
        example = p / f"out{suffix or ''}"
        return f"{flag} {path}: is a folder; give a file path such as {example}"
    if suffix is not None and p.suffix.lower() != suffix:
        return f"{flag} {path}: the file name must end in {suffix}"
    folder = p.absolute().parent
    if not folder.is_dir():
        return f"{flag} {path}: folder {folder} does not exist"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{flag} {path}: folder {folder} is not writable"
    return None
