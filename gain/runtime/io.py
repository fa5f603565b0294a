"""Atomic, world-readable file writing and small image I/O helpers shared by every stage."""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import numpy as np
from PIL import Image

from gain.runtime.errors import InputError, StageError

FILE_MODE = 0o644


# Inside `outputs_together`: the (temporary file, destination) pairs waiting to be renamed into place.
_PENDING: ContextVar[list[tuple[Path, Path]] | None] = ContextVar("pending_outputs", default=None)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds (inside
    `outputs_together`: when that block succeeds).

    A crash inside the block leaves any existing `path` untouched and no partial file behind. The file
    ends up 0644 like any file a user writes (mkstemp creates 0600, which other users and services such as
    a shared DVC cache or an MLflow server could not read).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _not_written(path, e) from e
    os.close(fd)
    tmp, pending = Path(tmp), _PENDING.get()
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)
        if pending is None:
            os.replace(tmp, path)
        else:
            pending.append((tmp, path))
    except OSError as e:
        raise _not_written(path, e) from e
    finally:
        if tmp.exists() and (pending is None or (tmp, path) not in pending):
            tmp.unlink()


def _not_written(path: Path, e: OSError) -> OSError | StageError:
    """A full disk or a folder that refuses writes, as one line naming the file; other errors unchanged."""
    if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.ENOTDIR, errno.EEXIST):
        return e
    why = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else e.strerror
    return StageError(f"{path}: not written ({why}); any earlier {path.name} is kept, unchanged")


@contextmanager
def outputs_together() -> Iterator[None]:
    """All or none: every file written through `atomic_path` in this block stays a temporary file beside
    its destination until the block ends, then all are renamed into place; if any write fails (a full
    disk, a read-only folder) none is, so a model file is never replaced without its reports."""
    pending: list[tuple[Path, Path]] = []
    token = _PENDING.set(pending)
    try:
        yield
    except BaseException:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        _PENDING.reset(token)
    for tmp, path in pending:
        os.replace(tmp, path)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def plain(obj):
    """JSON-ready copy of `obj`: numpy scalars and arrays to Python, NaN and inf to None (JSON has neither,
    and `json.dumps` would write the invalid tokens NaN / Infinity)."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [plain(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike, obj) -> None:
    """Strict JSON (see `plain`), keys sorted, so equal content gives equal bytes."""
    write_text(path, json.dumps(plain(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


def save_palette_png(path: str | os.PathLike, mask: np.ndarray, palette: list[int]) -> None:
    """Write a (H, W) uint8 label map as a palette PNG (VOC style), atomically."""
    img = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    img.putpalette(palette)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a palette/grey PNG label map as (H, W) uint8 indices; errors name the file."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L"):
                raise ValueError(f"expected a palette or greyscale label PNG, got mode {img.mode}")
            return np.array(img, dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable label map ({e})") from e


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB; errors name the file."""
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable image ({e})") from e


def files_digest(root: str | os.PathLike, relpaths: list[str]) -> str:
    """sha256 over the names and bytes of `relpaths` under `root`, in the given order (a content
    fingerprint of a dataset or a seed folder: equal files give an equal digest wherever they live)."""
    import hashlib

    root = Path(root)
    h = hashlib.sha256()
    for rel in relpaths:
        h.update(rel.encode() + b"\0")
        with open(root / rel, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def folder_digest(root: str | os.PathLike) -> str:
    """`files_digest` of every file below `root`, in sorted order."""
    root = Path(root)
    return files_digest(root, sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()))


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of one file's bytes."""
    path = Path(path)
    return files_digest(path.parent, [path.name])


def read_json(path: str | os.PathLike) -> dict:
    """A JSON file another stage wrote; a missing or broken one is an InputError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: not found; run the stage that writes it (dvc repro)") from None
    except ValueError as e:
        raise InputError(f"{path}: invalid JSON ({e})") from None
