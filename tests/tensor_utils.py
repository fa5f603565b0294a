"""Helpers for the tiny-tensor unit tests."""

import pytest
import torch

from gain.data.dataset import VOCDataset


@pytest.fixture(autouse=True)
def single_thread():
    # Tensors here are tiny: intra-op threads only add OpenMP barrier waits.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-7
) -> None:
    # torch.testing.assert_close costs ~1 s on first use (it imports torch.distributed.tensor).
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), (actual - expected).abs().max()


def record_dataset_ids(monkeypatch, module) -> list[list[str]]:
    """Make `module.VOCDataset` record the ids of every dataset it builds, in order; -> that (live) list."""
    seen = []

    def recording(index, ids, *args, **kwargs):
        seen.append(list(ids))
        return VOCDataset(index, ids, *args, **kwargs)

    monkeypatch.setattr(module, "VOCDataset", recording)
    return seen
