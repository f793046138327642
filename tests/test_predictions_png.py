"""predictions.png (trainer.write_predictions -> viz.write_predictions): the file exists and its
panels are the images, the truth and the prediction overlays, pixel for pixel (NumPy blend)."""

import types

import jax.numpy as jnp
import numpy as np
from PIL import Image

from deconvnet_jax import trainer, viz
from deconvnet_jax.data import loader as data_loader


def _blend(image, label, alpha=0.5):
    return (alpha * viz.voc_palette()[label] + (1 - alpha) * image).astype(np.uint8)


def test_write_predictions_panels(tmp_path, monkeypatch):
    """Two val images (6x5 and 4x5, padded to 6x6 by the eval loader, plus one padding example):
    a stub network predicts truth + 1; each row of the PNG is image | truth blend | prediction
    blend cropped to its image, the shorter row padded black."""
    rng = np.random.default_rng(0)
    images = {k: rng.integers(0, 256, (h, 5, 3), np.uint8) for k, h in (("a", 6), ("b", 4))}
    truths = {k: rng.integers(0, 5, v.shape[:2]).astype(np.int32) for k, v in images.items()}
    label = np.full((3, 6, 6), 255, np.int32)
    for n, k in enumerate("ab"):
        label[n, : truths[k].shape[0], :5] = truths[k]
    batch = dict(image=np.zeros((3, 6, 6, 3), np.float32), label=label, id=["a", "b", ""])
    monkeypatch.setattr(data_loader, "make_eval_loader", lambda *a, **k: iter([batch]))
    dataset = types.SimpleNamespace(load=lambda i: {"image": images[i]})
    monkeypatch.setattr(data_loader, "open_split", lambda *a: dataset)

    def apply(variables, x, train):  # logits whose argmax is (truth + 1) mod 21
        return jnp.eye(21)[(jnp.asarray(batch["label"]) + 1) % 21]

    run = types.SimpleNamespace(
        config=types.SimpleNamespace(data=types.SimpleNamespace(val_split="val")),
        state=types.SimpleNamespace(params={}, batch_stats={}),
        model=types.SimpleNamespace(apply=apply),
    )
    out = trainer.write_predictions(run, tmp_path / "predictions.png")
    assert out.is_file()
    png = np.asarray(Image.open(out).convert("RGB"))
    assert png.shape == (10, 15, 3)
    top = 0
    for k in "ab":
        img, truth = images[k], truths[k]
        h = img.shape[0]
        want = np.concatenate([img, _blend(img, truth), _blend(img, (truth + 1) % 21)], axis=1)
        np.testing.assert_array_equal(png[top : top + h], want)
        top += h
