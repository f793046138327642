"""Pictures: training curves, VOC-palette masks and side-by-side overlays."""

from __future__ import annotations

import json

import numpy as np
from etils import epath
from PIL import Image

from deconvnet_jax import paths
from deconvnet_jax.data.voc import voc_palette


def plot_training_curves(metrics_jsonl, out_png) -> epath.Path | None:
    """Loss and validation-mIoU curves of a metrics.jsonl, saved as a PNG (paths local or
    URLs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = paths.as_path(metrics_jsonl)
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    loss = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    miou = [(r["step"], 100 * r["val_miou"]) for r in rows if "val_miou" in r]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    if loss:
        ax[0].plot(*zip(*loss))
    ax[0].set(title="training loss", xlabel="step")
    if miou:
        ax[1].plot(*zip(*miou), marker="o")
    ax[1].set(title="validation mIoU (%)", xlabel="step")
    fig.tight_layout()
    out_png = paths.save_figure(fig, out_png, dpi=100)
    plt.close(fig)
    return out_png


def palette_image(label: np.ndarray) -> Image.Image:
    """A class map [H, W] as a VOC-palette ("P") PIL image."""
    img = Image.fromarray(np.asarray(label, np.uint8), mode="P")
    img.putpalette(voc_palette().ravel().tolist())
    return img


def colorize(label: np.ndarray) -> np.ndarray:
    """A class map [H, W] as RGB uint8 [H, W, 3] in VOC colours."""
    return voc_palette()[np.asarray(label, np.uint8)]


def side_by_side(
    image: np.ndarray, truth: np.ndarray | None, pred: np.ndarray, alpha: float = 0.5
) -> np.ndarray:
    """image | truth | prediction (the label maps blended over the image), RGB uint8."""
    panels = [image]
    for lab in ([truth] if truth is not None else []) + [pred]:
        panels.append((alpha * colorize(lab) + (1 - alpha) * image).astype(np.uint8))
    return np.concatenate(panels, axis=1)


def write_predictions(examples, out_png, alpha: float = 0.5) -> epath.Path:
    """One image | truth | prediction row (``side_by_side``) per (image uint8 [H, W, 3], truth
    [H, W], prediction [H, W]) in ``examples``, rows stacked (right-padded black), as a PNG."""
    rows = [side_by_side(img, truth, pred, alpha) for img, truth, pred in examples]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return paths.write_image(Image.fromarray(np.concatenate(rows, axis=0)), out_png)
