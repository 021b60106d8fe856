"""Where lightseg writes: output paths are checked before any work is done, and the operating
system's write errors (full disk, read-only folder, a file where a folder should be) become
``LightsegError`` messages that name the path and the fix instead of tracebacks."""
from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import re
import secrets
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
    """Check, before any work, that a file can be written at ``path`` (missing folders are created later)
    and is not a symbolic link."""
    path = Path(path)
    if os.path.islink(path):
        raise OutputError(f"{what} {path} {LINK_REFUSED}: remove the link, or write elsewhere")
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


# ---------------------------------------------------------------- writing without following links
# Every file lightseg creates, truncates or appends to goes through these helpers: a symbolic link planted
# where an output will be (a run folder, an output folder) would otherwise send the write to the link's
# target. The folder the user names may itself be a link; the files lightseg makes in it may not.
LINK_REFUSED = "is a symbolic link; lightseg does not write through links"


def link_error(path) -> OutputError:
    return OutputError(f"{path} {LINK_REFUSED}: remove the link, or write elsewhere")


def refuse_link(path) -> Path:
    """``path`` itself is not a symbolic link (a dangling one included); returns it as a ``Path``."""
    path = Path(path)
    if os.path.islink(path):
        raise link_error(path)
    return path


def open_output(path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode: int = 0o666) -> int:
    """``os.open`` of a file lightseg writes, never through a link (``O_NOFOLLOW``): a link at ``path``
    raises ``OutputError``, so do the operating system's write errors (full disk, read-only...). The
    new file gets ``mode`` less the umask, like any file the user writes."""
    path = Path(path)
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as e:
        if e.errno == errno.ELOOP or (e.errno == errno.EEXIST and os.path.islink(path)):
            raise link_error(path) from None
        if e.errno in WRITE_ERRNOS:
            raise write_error(e, path) from e
        raise


def append_text(path, text: str) -> None:
    """Append ``text`` to ``path`` (created if missing), never through a link. An error while writing
    (a full disk) is the ``OSError`` itself, for the caller to say what is still intact."""
    fd = open_output(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def refuse_links_in(folder, names) -> None:
    """Before any work: no entry of ``folder`` whose name matches one of the globs ``names`` (the files a
    command is about to write there) is a symbolic link."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if entry.is_symlink() and any(fnmatch.fnmatchcase(entry.name, n) for n in names):
            raise link_error(entry.path)


def output_subdir(path) -> Path:
    """A folder lightseg makes inside a folder it was given (e.g. ``RUN_DIR/tensorboard``): not a link."""
    path = refuse_link(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(e, path) from e
    return path


# Temporary files of atomic writes: ``.<name>.<pid>.<token>.tmp[<ext>]`` beside ``<name>``. The pid says
# whether the process that made one still runs, so a later start removes only what a dead process left.
_TEMP = re.compile(r"^\.(?P<base>.+)\.(?P<pid>\d+)\.(?P<token>[0-9a-f]{8})\.tmp(?P<ext>\.\w+)?$")
_LEGACY_TEMP = re.compile(r"^\.(?P<base>.+)\.[A-Za-z0-9_]{8}\.tmp$")  # mkstemp names of older lightseg versions


def create_temp(path, ext: str = "") -> tuple[int, Path]:
    """Create (``O_EXCL | O_NOFOLLOW``) the temporary file of an atomic write of ``path``: ``(fd, temp)``.
    ``ext``: an extension after ``.tmp`` for writers that choose a format by name (``.mp4``)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(e, path) from e
    refuse_link(path)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{ext}"
        try:
            return open_output(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL), tmp
        except OutputError:
            if not os.path.lexists(tmp):
                raise
    raise OutputError(f"cannot create a temporary file beside {path}; choose another folder")  # pragma: no cover


def publish(tmp, path) -> Path:
    """Rename the finished temporary file ``tmp`` over ``path`` (refused if ``path`` became a link), then
    make the rename durable."""
    path = Path(path)
    refuse_link(path)
    os.replace(tmp, path)
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def atomic_write_bytes(path, write_fn) -> Path:
    """Call ``write_fn(fileobj)`` on a temporary file beside ``path``, fsync, then rename over ``path``.

    A crash at any moment leaves either the old file or the new one, never half a file (a kill -9 can
    leave the temporary file: see :func:`remove_stale_temp_files`). A full disk or a read-only folder
    raises ``OutputError`` naming the path; the old file stays as it was. Neither ``path`` nor the
    temporary file is ever a symbolic link. The file gets the permissions of a newly created one.
    """
    path = Path(path)
    fd, tmp = create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
            kept = f"{path.name} was not changed" if path.exists() else ""
            raise write_error(e, path, kept) from e
        raise
    return path


def _start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch; Linux), or None when unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _writer_alive(pid: int, made: float) -> bool:
    """The process that made a file at time ``made`` still runs (not a later process given the same pid)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    started = _start_time(pid)
    return started is None or started <= made + 1.0


def remove_stale_temp_files(folder, names) -> list[Path]:
    """Delete the temporary files of :func:`create_temp` in ``folder`` whose final name matches one of the
    globs ``names`` and whose process is gone (killed during the write). A temporary file of a process that
    still runs is kept, so this is safe beside another lightseg writing there."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP.match(entry.name)
        legacy = None if m else _LEGACY_TEMP.match(entry.name)
        base = (m or legacy).group("base") if (m or legacy) else None
        if base is None or not any(fnmatch.fnmatchcase(base, n) for n in names):
            continue
        try:
            made = entry.stat(follow_symlinks=False).st_mtime
            if m and _writer_alive(int(m.group("pid")), made):
                continue
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except FileNotFoundError:
            continue
    return removed


def new_file_mode() -> int:
    """The permission bits ``open()`` gives a new file: 0o666 less the process umask."""
    try:  # Linux reports the umask without changing it (os.umask can only be read by setting it)
        with open("/proc/self/status") as f:
            mask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


# ---------------------------------------------------------------- outputs apart from inputs
def _inside(child: str, parent: str) -> bool:
    return child != parent and child.startswith(parent.rstrip(os.sep) + os.sep)


def check_outputs_apart(inputs, outputs) -> None:
    """No output of a command may land on one of its inputs. Before any work.

    ``inputs``: ``(what, path)`` pairs (files or folders; None entries skipped). ``outputs``: ``(what, path,
    names)``: a file (``names`` None) or a folder and the globs of the file names written directly in it.
    Paths are compared after resolving links. Refused: an output equal to an input, an output inside an
    input folder, and an output folder holding an input file under a name the command writes.
    """
    ins = []
    for what, p in inputs:
        if p is None or not os.path.exists(p):
            continue
        ins.append((what, p, os.path.realpath(p), os.path.isdir(p)))
    for out_what, out, names in outputs:
        if out is None:
            continue
        ro = os.path.realpath(out)
        for what, p, ri, is_dir in ins:
            why = None
            if ro == ri:
                why = "it is that input"
            elif is_dir and _inside(ro, ri):
                why = "it is inside that input folder"
            elif names is not None and not is_dir and os.path.dirname(ri) == ro \
                    and any(fnmatch.fnmatchcase(os.path.basename(ri), n) for n in names):
                why = f"{os.path.basename(ri)} is a name it writes there"
            if why:
                raise OutputError(f"{out_what} {out} would write over {what} {p} ({why}); lightseg never writes "
                                  f"an output onto an input: choose an output path outside the inputs")
