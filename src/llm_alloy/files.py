"""Writing files so that a crash leaves either the old content or the new, never a torn file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Self


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


class RunStateFile:
    """Load/save of a run directory's state dataclass as versioned JSON, written atomically.

    Subclasses set `version` and `error` (the run's own one-line error type): a torn, foreign or
    other-version file is reported as corrupt instead of being half-read.
    """

    version: ClassVar[int] = 1
    error: ClassVar[type[Exception]] = ValueError

    @classmethod
    def load(cls, path: Path) -> Self:
        if not path.exists():
            return cls()
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or data.pop("version", None) != cls.version:
                raise ValueError("unknown state version")
            return cls(**data)
        except (ValueError, TypeError) as error:
            raise cls.error(f"{path}: corrupt run state ({error}); start a new run directory") from None

    def save(self, path: Path) -> None:
        write_atomic(path, json.dumps({"version": self.version, **self.__dict__}, indent=1, ensure_ascii=False))


def load_dataset_dir(path: Path, error: type[Exception], split: str | None = None) -> Any:
    """A `datasets.save_to_disk` directory as one `datasets.Dataset`.

    A directory holding several splits gives `split` (or its only split) when one is asked for, and
    `error` otherwise: silently reading one of them would hide the others.
    """
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise error(f"{path}: not a `datasets` directory (no saved dataset found)") from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        if split is not None and (split in loaded or len(splits) == 1):
            return loaded[split if split in loaded else splits[0]]
        none_named = f" and none named '{split}'" if split else ""
        raise error(f"{path}: holds several splits ({', '.join(splits)}){none_named}; pass one split's directory")
    return loaded
