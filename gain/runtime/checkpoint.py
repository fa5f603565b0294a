"""Checkpoint and model files: plain-data dicts, byte-identical for identical content, never torn or non-finite.

`torch.save(obj, path)` names the archive inside the zip after the file, so saving through a temporary file
(for atomicity) gave different bytes on every save and DVC saw a new model after every resume. Saving
through a file object names it "archive" whatever the path, so identical weights give identical files.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from gain.runtime.errors import StageError
from gain.runtime.io import atomic_path


class CheckpointError(StageError):
    """A checkpoint that cannot be read or would hold NaN/inf; the message says how to recover."""


def _non_finite(obj, prefix: str = "") -> str | None:
    """The key of the first floating tensor holding NaN or inf, searching nested dicts and lists."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and not bool(torch.isfinite(obj).all()):
            return prefix or "<tensor>"
        return None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list | tuple) else ()
    for k, v in items:
        bad = _non_finite(v, f"{prefix}.{k}" if prefix else str(k))
        if bad is not None:
            return bad
    return None


def to_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def save_checkpoint(path: str | os.PathLike, state: dict, *, keep_previous: bool = False) -> None:
    """Write `state` atomically; refuse (CheckpointError) if any tensor in it is NaN or inf.

    With `keep_previous`, the file being replaced survives as `<name>.prev` so a checkpoint damaged later
    (a full disk, a copy cut short) still leaves the one before it to resume from.
    """
    path = Path(path)
    bad = _non_finite(state)
    if bad is not None:
        raise CheckpointError(f"{path}: not written, {bad} holds NaN or inf; the previous checkpoint is kept")
    data = to_bytes(state)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        if keep_previous and path.is_file():
            os.replace(path, previous(path))


def previous(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def _unreadable(path: Path, e: Exception) -> str:
    return f"{path}: unreadable checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint of plain data (weights_only=True); errors name the file and what to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found; run the stage that writes it (dvc repro)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{_unreadable(path, e)}; delete it and rerun the stage") from e


def load_resumable(path: Path) -> tuple[dict | None, Path | None, str]:
    """The newest readable resume checkpoint, `path` or else its `.prev` -> (state or None, the file it
    came from, what was unreadable: "" or one line naming each such file, no advice, for the caller to
    finish with what it does next)."""
    notes = []
    for candidate in (path, previous(path)):
        if not candidate.is_file():
            continue
        try:
            return torch.load(candidate, map_location="cpu", weights_only=True), candidate, "; ".join(notes)
        except Exception as e:
            notes.append(_unreadable(candidate, e))
    return None, None, "; ".join(notes)
