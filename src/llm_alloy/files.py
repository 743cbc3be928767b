"""Writing files so that a crash leaves either the old content or the new, never a torn file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Temp file in the same directory, fsync, then rename over the target."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_state(path: Path, version: int) -> dict | None:
    """A run directory's versioned JSON state; None when the run has not started.

    Raises ValueError on a torn, foreign or other-version file: the caller names the run directory.
    """
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or data.pop("version", None) != version:
        raise ValueError("unknown state version")
    return data


def write_state(path: Path, version: int, data: dict) -> None:
    write_atomic(path, json.dumps({"version": version, **data}, indent=1, ensure_ascii=False))
