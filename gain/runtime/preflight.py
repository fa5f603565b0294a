"""Checks a training stage runs before its first step: every output folder can be written, and the free
space covers its model file, reports and resume checkpoints (estimated from the model's size), so a
read-only folder or a full disk stops the stage in seconds with the folder and bytes named, not after
training."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch

from gain.runtime.errors import StageError

REPORT_BYTES = 16 << 20  # allowance per report, table or figure a stage writes
# Resume checkpoints hold weights and SGD momentum (2x the model); last.pt, last.pt.prev and the temporary
# file of the next save coexist (3x), and with held-out selection selected.pt and its temporary file (2x).
CHECKPOINT_COPIES = 3
SELECTED_COPIES = 2


class PreflightError(StageError):
    """An output folder that cannot be written or lacks the space the stage will need."""


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of a model's parameters and buffers (the size of its weights on disk, give or take headers)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def existing_folder(path: Path) -> Path:
    """The nearest folder at or above `path`'s parent that exists; a file in the way is a PreflightError."""
    folder = Path(path).parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise PreflightError(f"{path}: cannot be written, {folder} is a file, not a folder")
    return folder


def check_writable(paths: Iterable[Path]) -> None:
    """Each path's folder (or its nearest existing ancestor) accepts a new file; else one line naming it."""
    for path in paths:
        folder = existing_folder(path)
        problem = None if os.access(folder, os.W_OK | os.X_OK) else "permission denied"
        if problem is None:
            try:
                with tempfile.TemporaryFile(dir=folder, prefix=".write-check-"):
                    pass
            except OSError as e:
                problem = e.strerror or type(e).__name__
        if problem is not None:
            raise PreflightError(f"{folder}: not writable ({problem}); the stage writes {path} there")


def check_space(needs: dict[Path, int], what: str) -> None:
    """`needs`: bytes each path will take. Summed per file system; a shortfall names the folder, the bytes
    needed and free, and `what` needs them."""
    per_device: dict[int, tuple[Path, int]] = {}
    for path, n in needs.items():
        folder = existing_folder(path)
        dev = os.stat(folder).st_dev
        first, total = per_device.get(dev, (folder, 0))
        per_device[dev] = (first, total + n)
    for folder, need in per_device.values():
        free = shutil.disk_usage(folder).free
        if free < need:
            raise PreflightError(
                f"{folder}: {free:,} bytes free, {what} needs about {need:,} bytes there; free some space "
                "before training"
            )


def check_training_outputs(
    model: torch.nn.Module, outputs: Iterable[Path], ckpt_dir: Path, *, selects: bool
) -> None:
    """Before training: the outputs (`*.pt`: the model file, twice its weights while it is replaced; others
    REPORT_BYTES) and `ckpt_dir`'s resume checkpoints can be written and fit on their disks."""
    outputs = [Path(p) for p in outputs]
    size = model_bytes(model)
    last = Path(ckpt_dir) / "last.pt"
    check_writable([*outputs, last])
    needs = {p: 2 * size if p.suffix == ".pt" else REPORT_BYTES for p in outputs}
    needs[last] = 2 * size * (CHECKPOINT_COPIES + (SELECTED_COPIES if selects else 0))
    check_space(needs, f"training (a {size:,}-byte model: its file, reports and checkpoints)")
