"""Segmentation metrics: a confusion matrix accumulated on device, reduced to IoU on the host."""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np

IGNORE_LABEL = 255


def confusion_matrix(pred, label, num_classes: int, ignore_label: int = IGNORE_LABEL):
    """Confusion matrix [C, C] int32 (rows = truth, columns = prediction); jittable.

    Args:
      pred: int predictions [...]; label: int truth [...] (ignore_label pixels are not counted).
    """
    pred = jnp.asarray(pred).reshape(-1).astype(jnp.int32)
    label = jnp.asarray(label).reshape(-1).astype(jnp.int32)
    valid = (label != ignore_label) & (label >= 0) & (label < num_classes)
    index = jnp.where(valid, label * num_classes + jnp.clip(pred, 0, num_classes - 1), 0)
    counts = (
        jnp.zeros((num_classes * num_classes,), jnp.int32).at[index].add(valid.astype(jnp.int32))
    )
    return counts.reshape(num_classes, num_classes)


def compute_metrics(conf: np.ndarray, class_names: Sequence[str] | None = None) -> dict:
    """IoU per class, mIoU, pixel accuracy and mean class accuracy from a confusion matrix.

    Classes absent from both truth and prediction get IoU NaN and are left out of the means
    (the VOC convention over a split where every class occurs gives the usual 21-class mean).
    """
    conf = np.asarray(conf, np.float64)
    tp = np.diag(conf)
    gt, pr = conf.sum(1), conf.sum(0)
    union = gt + pr - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        class_acc = np.where(gt > 0, tp / gt, np.nan)
    names = list(class_names) if class_names else [str(i) for i in range(len(tp))]
    return {
        "miou": float(np.nanmean(iou)) if np.any(union > 0) else 0.0,
        "pixel_acc": float(tp.sum() / max(conf.sum(), 1)),
        "mean_class_acc": float(np.nanmean(class_acc)) if np.any(gt > 0) else 0.0,
        "iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
        "pixels": int(conf.sum()),
    }


def markdown_table(results: dict[str, dict], class_names: Sequence[str]) -> str:
    """Markdown table: one row per variant (e.g. DeconvNet, +CRF), IoU per class in percent."""
    head = ["variant", "mIoU", "pixel acc", "mean acc"] + list(class_names)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fmt = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    for name, m in results.items():
        row = [name, fmt(m["miou"]), fmt(m["pixel_acc"]), fmt(m["mean_class_acc"])]
        row += [fmt(m["iou"].get(c)) for c in class_names]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
