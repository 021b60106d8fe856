"""Where lightseg writes: output paths are checked before any work is done, and the operating
system's write errors (full disk, read-only folder, a file where a folder should be) become
``LightsegError`` messages that name the path and the fix instead of tracebacks."""
from __future__ import annotations

import errno
import os
from pathlib import Path

from .errors import LightsegError

_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.EEXIST: "a file is in the way",
}
WRITE_ERRNOS = frozenset(_REASONS)


class OutputError(LightsegError):
    """An output path cannot be written (full disk, read-only, a file where a folder should be)."""


def write_error(e: OSError, path, kept: str = "") -> OutputError:
    """``OutputError`` for an ``OSError`` raised while writing ``path``; ``kept`` says what is still intact."""
    path = Path(path)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        msg = f"no space left on {path.parent} ({_REASONS[e.errno]}) while writing {path.name}; free space there or write elsewhere"
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        msg = f"cannot write {path}: {_REASONS[e.errno]}; choose a writable location"
    else:
        msg = f"cannot write {path}: {_REASONS.get(e.errno) or e.strerror or e}; choose another path"
    return OutputError(msg + (f". {kept}" if kept else ""))


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _check_creatable(folder: Path, what: str, target: Path) -> None:
    """``folder`` exists or can be created: its nearest existing ancestor is a writable folder."""
    anchor = _nearest_existing(folder)
    if not anchor.is_dir():
        raise OutputError(f"{what} {target}: {anchor} is a file, not a folder; choose another path")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {target}: cannot write in {anchor} (read-only or no permission); "
                          "choose a writable location")


def check_output_file(path, what: str = "output", example: str = "out") -> Path:
    """Check, before any work, that a file can be written at ``path`` (missing folders are created later)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; pass the path of a file to write, e.g. {path / example}")
    _check_creatable(path.parent, what, path)
    return path


def check_output_dir(path, what: str = "output folder") -> Path:
    """Check, before any work, that ``path`` is (or can be created as) a writable folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file, not a folder; pass a folder path (it is created if missing)")
    _check_creatable(path, what, path)
    return path
