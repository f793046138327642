"""deconvnet_jax/metrics.py against NumPy loops on random label maps."""

import jax
import numpy as np
import pytest

from deconvnet_jax.data.voc import CLASS_NAMES
from deconvnet_jax.metrics import compute_metrics, confusion_matrix, markdown_table


def loop_confusion(pred, label, c):
    conf = np.zeros((c, c), np.int64)
    for p, t in zip(pred.ravel(), label.ravel()):
        if t != 255 and 0 <= t < c:
            conf[t, min(max(p, 0), c - 1)] += 1
    return conf


def loop_metrics(conf):
    c = len(conf)
    ious, accs = [], []
    for k in range(c):
        tp = conf[k, k]
        fn = sum(conf[k, j] for j in range(c) if j != k)
        fp = sum(conf[j, k] for j in range(c) if j != k)
        if tp + fn + fp:
            ious.append(tp / (tp + fn + fp))
        if tp + fn:
            accs.append(tp / (tp + fn))
    total = sum(conf[i, j] for i in range(c) for j in range(c))
    return np.mean(ious), sum(conf[k, k] for k in range(c)) / total, np.mean(accs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_and_metrics_match_loops(seed):
    rng = np.random.default_rng(seed)
    c = 21
    label = rng.integers(0, c, (3, 37, 41))
    label[rng.random(label.shape) < 0.15] = 255  # void
    label[label == 7] = 3  # class 7 never in the truth
    pred = np.where(rng.random(label.shape) < 0.6, label, rng.integers(0, c, label.shape))
    pred[pred == 255] = 0
    pred[pred == 9] = 2  # class 9 never predicted
    conf = np.asarray(jax.jit(confusion_matrix, static_argnums=2)(pred, label, c))
    want = loop_confusion(pred, label, c)
    np.testing.assert_array_equal(conf, want)
    assert conf.sum() == np.sum(label != 255)
    m = compute_metrics(conf, CLASS_NAMES)
    miou, pix, mca = loop_metrics(want)
    assert m["miou"] == pytest.approx(miou, abs=1e-12)
    assert m["pixel_acc"] == pytest.approx(pix, abs=1e-12)
    assert m["mean_class_acc"] == pytest.approx(mca, abs=1e-12)
    assert m["pixels"] == int(want.sum())
    k = 4
    assert m["iou"][CLASS_NAMES[k]] == pytest.approx(
        want[k, k] / (want[k].sum() + want[:, k].sum() - want[k, k])
    )


def test_absent_class_is_left_out_and_ignore_label():
    label = np.array([[0, 0, 1, 255], [1, 1, 255, 255]])
    pred = np.array([[0, 1, 1, 2], [1, 0, 3, 3]])
    conf = np.asarray(confusion_matrix(pred, label, 4))
    np.testing.assert_array_equal(conf, [[1, 1, 0, 0], [1, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    m = compute_metrics(conf, ["bg", "a", "b", "c"])
    # classes 2 and 3 appear in neither truth nor (counted) prediction: IoU None, not in the mean
    assert m["iou"]["b"] is None and m["iou"]["c"] is None
    assert m["miou"] == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert m["pixel_acc"] == pytest.approx(3 / 5)
    assert m["mean_class_acc"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_markdown_table_rows():
    conf = np.diag([5, 3, 0]) + np.array([[0, 1, 0], [2, 0, 0], [0, 0, 0]])
    m = compute_metrics(conf, ["bg", "cat", "dog"])
    table = markdown_table({"DeconvNet": m, "DeconvNet+CRF": m}, ["bg", "cat", "dog"])
    lines = table.strip().splitlines()
    assert lines[0] == "| variant | mIoU | pixel acc | mean acc | bg | cat | dog |"
    assert len(lines) == 4
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[0] == "DeconvNet" and cells[1] == f"{100 * m['miou']:.1f}"
    assert cells[4] == f"{100 * 5 / 8:.1f}" and cells[6] == "-"
