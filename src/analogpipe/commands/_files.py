"""Checks on output file paths, made before anything is written (torch-free)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def output_file_problem(path: str, flag: str, suffix: str | None = None,
                        make_folders: bool = False) -> str | None:
    """Why `path` cannot be written as a file for `flag` (None if it can): it is empty, a
    folder, something other than a regular file (a device such as /dev/null, a pipe: the
    atomic write would replace it), lacks `suffix`, or its folder is missing (unless
    make_folders: then the nearest existing folder above it must be writable) or refuses a
    new file (probed with a temporary file that is removed at once: permissions, read-only
    or virtual file systems such as /proc)."""
    if path == "":
        return f"{flag}: the path is empty; give a file path"
    p = Path(path)
    if p.is_dir():
        example = p / f"out{suffix or ''}"
        return f"{flag} {path}: is a folder; give a file path such as {example}"
    if p.exists() and not p.is_file():
        return (f"{flag} {path}: exists and is not a regular file (a device, pipe or socket); "
                "give a new file path or a regular file's")
    if suffix is not None and p.suffix.lower() != suffix:
        return f"{flag} {path}: the file name must end in {suffix}"
    folder = p.absolute().parent
    if not folder.is_dir():
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            return f"{flag} {path}: {existing} is a file, not a folder"
        if not make_folders:
            return f"{flag} {path}: folder {folder} does not exist"
        if not os.access(existing, os.W_OK | os.X_OK):
            return f"{flag} {path}: folder {existing} is not writable (to make {folder})"
        return None
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{flag} {path}: folder {folder} is not writable"
    try:
        fd, probe = tempfile.mkstemp(prefix=".analogpipe-probe-", dir=folder)
    except OSError as err:
        return f"{flag} {path}: cannot create a file in folder {folder} ({err.strerror})"
    os.close(fd)
    os.unlink(probe)
    return None
