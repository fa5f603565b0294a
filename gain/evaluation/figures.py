"""Figures people look at: image/attention/mask grids, bar charts, heatmaps (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gain.data.voc import voc_palette
from gain.runtime.io import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def colorize(mask: np.ndarray) -> np.ndarray:
    """(H, W) label map -> (H, W, 3) uint8 in the VOC palette (255 = void shows in VOC's cream)."""
    pal = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)
    return pal[mask]


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend an (H, W) map in [0, 1] over an (H, W, 3) uint8 image with the jet colour map."""
    plt = _plt()
    rgb = (plt.get_cmap("jet")(np.clip(heat, 0, 1))[..., :3] * 255).astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + rgb * alpha).astype(np.uint8)


LEGEND_COLUMNS = 8


def class_legend(fig, classes: list[str] | tuple[str, ...], *, void: str = "void / unlabeled") -> None:
    """A row of VOC-palette swatches under the figure: one per class index, and 255 (`void`)."""
    from matplotlib.patches import Patch

    pal = np.array(voc_palette(), dtype=np.float64).reshape(256, 3) / 255
    handles = [Patch(facecolor=pal[i], edgecolor="0.5", label=name) for i, name in enumerate(classes)]
    handles.append(Patch(facecolor=pal[255], edgecolor="0.5", label=void))
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=min(len(handles), LEGEND_COLUMNS),
        fontsize=7,
        frameon=False,
        handlelength=1.2,
        columnspacing=1.0,
    )


def grid_figure(
    rows: list[list[tuple[np.ndarray, str]]], *, cell: float = 1.8, classes: list[str] | tuple[str, ...] = ()
):
    """A figure of image cells; rows[i][j] = (array, title). `classes` (index order) adds a colour legend
    for the label maps in the cells."""
    plt = _plt()
    nr, nc = len(rows), max(len(r) for r in rows)
    legend_h = (0.22 * -(-(len(classes) + 1) // LEGEND_COLUMNS) + 0.15) if classes else 0.0  # inches
    fig, axes = plt.subplots(nr, nc, figsize=(cell * nc, cell * nr + legend_h), squeeze=False)
    for i in range(nr):
        for j in range(nc):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(rows[i]):
                arr, title = rows[i][j]
                ax.imshow(arr)
                ax.set_title(title, fontsize=7)
    fig.tight_layout()
    if classes:
        fig.subplots_adjust(bottom=legend_h / fig.get_figheight())
        class_legend(fig, classes)
    return fig


def close_figure(fig) -> None:
    _plt().close(fig)


def save_figure(fig, path: str | Path) -> None:
    """Save a matplotlib figure atomically as PNG and close it."""
    plt = _plt()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def bar_figure(names: list[str], values: list[float], *, title: str, ylabel: str):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(names)), 3))
    vals = [0 if v is None or np.isnan(v) else v for v in values]
    ax.bar(range(len(names)), vals, color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def heatmap_figure(matrix: np.ndarray, names: list[str], *, title: str):
    """Row-normalised confusion matrix heatmap (rows = ground truth)."""
    plt = _plt()
    m = matrix.astype(np.float64)
    norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1 + 0.4 * len(names), 1 + 0.4 * len(names)))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=70, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def curves_figure(
    panels: dict[str, dict[str, tuple[list[float], list[float]]]], *, xlabel: str, ncols: int = 3
):
    """One axis per panel title, one line per series name: panels[title][name] = (x, y)."""
    plt = _plt()
    n = len(panels)
    nr = -(-n // ncols)
    fig, axes = plt.subplots(nr, ncols, figsize=(3.4 * ncols, 2.6 * nr), squeeze=False)
    for ax, (title, series) in zip(axes.flat, panels.items(), strict=False):
        for name, (x, y) in series.items():
            ax.plot(x, y, marker=".", label=name)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return fig
