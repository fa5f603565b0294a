"""Held-out training ids for choosing a checkpoint without looking at the reported split.

A training stage that selects its weights (`*.select: heldout`) carves a fixed, seeded share of its training
ids out of training and scores each evaluation on them; val is only ever reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from gain.runtime.errors import InputError


def carve_heldout(
    ids: Sequence[str],
    fraction: float,
    seed: int,
    *,
    eligible: Iterable[str] | None = None,
    what: str = "ids",
) -> tuple[list[str], list[str]]:
    """Split training `ids` into (train, heldout), both in the order of `ids`.

    round(fraction * len(ids)) ids (at least one) are drawn without replacement by a generator seeded with
    `seed`, from those also in `eligible` (e.g. the ids with masks) when given, else from all; the same
    (ids, eligible, fraction, seed) always give the same split. Raises InputError when fewer eligible ids
    exist than are asked for (`what` names them in the message).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    pool = sorted(set(ids) if eligible is None else set(ids) & set(eligible))
    n = max(1, round(fraction * len(ids)))
    if n > len(pool) or n >= len(ids):
        raise InputError(
            f"held-out fraction {fraction} asks for {n} of {len(ids)} training ids, but only {len(pool)} "
            f"are eligible ({what}) and at least one must stay in training"
        )
    held = set(np.random.default_rng(seed).choice(pool, size=n, replace=False).tolist())
    return [i for i in ids if i not in held], [i for i in ids if i in held]


def training_ids(
    ids: Sequence[str], p, seed: int, *, eligible: Iterable[str] | None = None, what: str = "ids"
) -> tuple[list[str], list[str]]:
    """A training stage's (train, heldout) ids under its params `p`: all of `ids` and none held out when
    `p.select` is "last"; `carve_heldout` with `p.heldout_fraction` when it is "heldout"."""
    if p.select != "heldout":
        return list(ids), []
    return carve_heldout(ids, p.heldout_fraction, seed, eligible=eligible, what=what)
