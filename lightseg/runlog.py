"""The one reader of a run's ``log.jsonl`` (one JSON record a line, as ``lightseg train`` appends them), with
two policies: strict for a resume, which rewrites the log and so must understand every line, and lenient
for plots and summaries, which read a log that may be being written right now."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .errors import ConfigError, LightsegError


def _is_record(rec, strict: bool) -> bool:
    if not strict:
        return isinstance(rec, dict)
    it = rec.get("iter", 0) if isinstance(rec, dict) else None
    return isinstance(it, int) and not isinstance(it, bool) and it >= 0


def read_log(path, strict: bool = False) -> list[dict]:
    """The records of the ``log.jsonl`` at ``path`` (which must exist).

    Both policies refuse a file that is not UTF-8 and skip blank lines; a last line that is not JSON (cut
    short when the run stopped, or still being written) is dropped. ``strict``: every other line must be a
    JSON object whose ``iter`` is an integer >= 0, else the line is refused naming its number (and the
    dropped last line is noted on stderr). Lenient: a line that is not JSON is refused, JSON that is not an
    object is skipped."""
    path = Path(path)
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); it was not "
                          "written by lightseg train: restore it or delete it (it only holds the run's log)") from None
    except OSError as e:
        raise LightsegError(f"cannot read {path}: {e.strerror or e}; check the run folder's permissions") from None
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
            if n == len(lines):
                if strict:
                    print(f"lightseg train: {path}:{n}: dropping a last line cut short (written when the run stopped)",
                          file=sys.stderr)
                continue
            if not strict:
                raise LightsegError(f"{path}:{n}: not a JSON record: {line[:80]!r}") from None
        if _is_record(rec, strict):
            records.append(rec)
        elif strict:
            raise ConfigError(f"{path}:{n}: {line[:60]!r} is not a record lightseg train writes (a JSON object with an "
                              f"integer 'iter' >= 0); fix or delete that line, then resume again (nothing was written)")
    return records
