"""Checks on output file paths, made before anything is written (torch-free)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# the writers' temporary files beside the output add at most this many characters to its
# name (".NAME.tmpPID", or mkstemp's ".NAME.XXXXXXXX.tmp")
TEMP_NAME_EXTRA = 16


def output_file_problem(path: str, flag: str, suffix: str | None = None,
                        make_folders: bool = False) -> str | None:
    """Why `path` cannot be written as a file for `flag` (None if it can), checked before
    anything runs. Refused: an empty path; a path ending in a separator (a folder's); a
    folder; something other than a regular file (a device such as /dev/null, a pipe: the
    atomic write would replace it); a name without `suffix`; a name too long for the folder
    once the writer's temporary name is added; a missing folder (with make_folders: a
    nearest existing folder above it that is not a folder or refuses a new folder); a folder
    that refuses a new file. Both last checks create a temporary file or folder and remove
    it at once (permissions, read-only and virtual file systems such as /proc, for root
    too). A path that cannot be examined (a folder on the way that cannot be entered) is
    refused with the system's reason."""
    if path == "":
        return f"{flag}: the path is empty; give a file path"
    try:
        return _problem(path, flag, suffix, make_folders)
    except OSError as err:
        return f"{flag} {path!r}: cannot be examined ({err.strerror or err})"


def _problem(path: str, flag: str, suffix: str | None, make_folders: bool) -> str | None:
    p = Path(path)
    if p.is_dir():
        example = p / f"out{suffix or ''}"
        return f"{flag} {path}: is a folder; give a file path such as {example}"
    if path.endswith(("/", os.sep)):
        return f"{flag} {path}: ends in '/', a folder's path; give a file path"
    if os.path.lexists(p) and not p.is_file():
        return (f"{flag} {path}: exists and is not a regular file (a device, pipe, socket or "
                "dangling link); give a new file path or a regular file's")
    if suffix is not None and p.suffix.lower() != suffix:
        return f"{flag} {path}: the file name must end in {suffix}"
    folder = p.absolute().parent
    existing = folder
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{flag} {path}: {existing} is not a folder"
    if existing != folder and not make_folders:
        return f"{flag} {path}: folder {folder} does not exist"
    limit = os.pathconf(existing, "PC_NAME_MAX")
    longest = max([len(os.fsencode(part)) for part in folder.relative_to(existing).parts]
                  + [len(os.fsencode(p.name)) + TEMP_NAME_EXTRA])
    if longest > limit:
        return (f"{flag} {path}: a name in it is too long for the file system ({limit} bytes "
                f"at most, {TEMP_NAME_EXTRA} of them kept for the temporary file)")
    try:
        if existing == folder:
            fd, probe = tempfile.mkstemp(prefix=".analogpipe-probe-", dir=folder)
            os.close(fd)
            os.unlink(probe)
        else:
            shutil.rmtree(tempfile.mkdtemp(prefix=".analogpipe-probe-", dir=existing))
    except OSError as err:
        what = "a file" if existing == folder else f"folders (to make {folder})"
        return f"{flag} {path}: cannot create {what} in folder {existing} ({err.strerror})"
    return None
