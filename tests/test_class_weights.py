"""train.class_weights: the weighted pixel loss against torch, median-frequency weights against a
per-image NumPy loop, the trainer's computed-once weights, and the config check."""

import json
import pathlib

import jax
import numpy as np
import pytest
import torch
from PIL import Image

from configs import default
from deconvnet_jax import config_check, train_lib, trainer
from deconvnet_jax.data import class_balance
from deconvnet_jax.data.voc import IGNORE_LABEL


@pytest.mark.parametrize("weighted", [False, True])
def test_weighted_loss_matches_torch(weighted):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7, 4))
    labels = rng.integers(0, 4, size=(2, 5, 7))
    labels[rng.random(labels.shape) < 0.2] = IGNORE_LABEL
    weights = np.array([0.1, 1.0, 2.5, 0.7]) if weighted else None
    with jax.enable_x64(True):  # float64: the comparison is exact up to summation order
        loss, count = train_lib.pixel_cross_entropy(
            jax.numpy.asarray(logits), jax.numpy.asarray(labels), class_weights=weights
        )
    ref = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits).permute(0, 3, 1, 2),
        torch.from_numpy(labels),
        weight=None if weights is None else torch.from_numpy(weights),
        ignore_index=IGNORE_LABEL,
    )
    np.testing.assert_allclose(float(loss), ref.item(), rtol=1e-12)
    assert int(count) == int((labels != IGNORE_LABEL).sum())


def test_weighted_loss_all_ignored_is_zero():
    labels = np.full((1, 3, 3), IGNORE_LABEL)
    loss, count = train_lib.pixel_cross_entropy(
        jax.numpy.zeros((1, 3, 3, 2)), jax.numpy.asarray(labels), class_weights=np.ones(2)
    )
    assert float(loss) == 0.0 and int(count) == 0


def _loop_weights(masks, num_classes):
    """The definition, per image: freq(c) = sum of c pixels / sum of valid pixels of images
    with c; w(c) = median(freq of occurring classes) / freq(c); 1 where c never occurs."""
    num = {c: 0 for c in range(num_classes)}
    den = {c: 0 for c in range(num_classes)}
    for m in masks:
        valid = [int(v) for v in np.asarray(m).ravel() if v != IGNORE_LABEL]
        for c in set(valid):
            num[c] += valid.count(c)
            den[c] += len(valid)
    freq = {c: num[c] / den[c] for c in num if den[c]}
    med = float(np.median(list(freq.values())))
    return np.array([med / freq[c] if c in freq else 1.0 for c in range(num_classes)])


def test_median_frequency_by_hand():
    a = np.array([[0, 0, 0], [0, 1, 1], [IGNORE_LABEL, 0, 0]])  # 6 bg, 2 class-1 of 8 valid
    b = np.array([[0, 2, 2], [2, 2, 2], [2, 2, IGNORE_LABEL]])  # 1 bg, 7 class-2 of 8 valid
    w = class_balance.median_frequency_weights(*class_balance.label_counts([a, b], 4))
    # freq: bg 7/16, class 1 2/8, class 2 7/8; median 7/16
    np.testing.assert_allclose(w, [1.0, (7 / 16) / (2 / 8), (7 / 16) / (7 / 8), 1.0])
    np.testing.assert_allclose(w, _loop_weights([a, b], 4))


def test_label_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="num_classes=3"):
        class_balance.label_counts([np.array([[0, 5]])], 3)


def test_trainer_weights_of_real_voc_masks_computed_once(voc_samples, tmp_path):
    config = default.get_config()
    config.data.voc_root = str(voc_samples)
    config.data.train_split = "train"
    config.train.class_weights = "median_frequency"
    ids = (voc_samples / "ImageSets/Segmentation/train.txt").read_text().split()
    masks = [
        np.asarray(Image.open(voc_samples / "SegmentationClass" / f"{i}.png")) for i in ids
    ]
    weights = trainer.class_weights(config, tmp_path)
    np.testing.assert_allclose(weights, _loop_weights(masks, 21), rtol=1e-6)
    assert weights[0] < 1  # background is the most frequent class
    saved = json.loads((tmp_path / "class_weights.json").read_text())
    assert saved["method"] == "median_frequency" and len(saved["weights"]) == 21
    # a resumed run reads the file instead of recounting
    saved["weights"][3] = 42.0
    (tmp_path / "class_weights.json").write_text(json.dumps(saved))
    assert trainer.class_weights(config, tmp_path)[3] == 42.0
    config.train.class_weights = "none"
    assert trainer.class_weights(config, pathlib.Path(tmp_path)) is None


def test_unknown_method_is_one_line():
    config = default.get_config()
    config.data.voc_root = "/x"
    config.train.class_weights = "balanced"
    with pytest.raises(config_check.ConfigError) as e:
        config_check.check_train_config(config)
    assert str(e.value) == (
        "config.train.class_weights='balanced' is not one of ['none', 'median_frequency']"
    )
