"""Dense CRF post-processing: fixes noisy labels along an edge, matches an exact NumPy
mean-field reference, validates its inputs, and says how to install the package when absent."""

import sys

import cv2
import numpy as np
import pytest

from deconvnet_jax.postprocess import crf

needs_crf = pytest.mark.skipif(not crf.crf_available(), reason=crf.INSTALL_HINT)


def _edge_toy(h=40, w=56, edge=28, shift=5, band=8, p_flip=0.35, seed=0):
    """Two flat colours split at column `edge` (labels 1 | 2 of 3 classes). The prediction
    bleeds `shift` columns across the edge and flips labels at random within `band` of it."""
    image = np.zeros((h, w, 3), np.uint8)
    image[:, :edge] = (200, 40, 40)
    image[:, edge:] = (40, 60, 190)
    truth = np.broadcast_to(np.where(np.arange(w) < edge, 1, 2), (h, w))
    pred = np.broadcast_to(np.where(np.arange(w) < edge + shift, 1, 2), (h, w)).copy()
    near = np.abs(np.arange(w) - (edge - 0.5)) < band
    flip = (np.random.default_rng(seed).random((h, w)) < p_flip) & near[None]
    pred[flip] = 3 - pred[flip]
    probs = np.full((h, w, 3), 0.1, np.float32)
    rows, cols = np.arange(h)[:, None], np.arange(w)[None]
    probs[rows, cols, pred] = 0.6
    probs[rows, cols, 3 - pred] = 0.3
    return image, probs, truth


def _mean_field_reference(image, probs, iterations, gaussian=(3, 3), bilateral=(20, 3, 5)):
    """Exact (O(N^2)) mean field of the same CRF: Potts, Gaussian kernels over (x, y)/sxy and
    (x, y)/sxy + rgb/srgb, each symmetrically normalised (D^-1/2 K D^-1/2), unary -log p."""
    h, w, c = probs.shape
    yy, xx = np.mgrid[:h, :w]
    pos = np.stack([xx, yy], -1).reshape(-1, 2).astype(np.float64)
    rgb = image.reshape(-1, 3).astype(np.float64)
    (g_sxy, g_w), (b_sxy, b_srgb, b_w) = gaussian, bilateral
    kernels = []
    bilateral_feats = np.concatenate([pos / b_sxy, rgb / b_srgb], 1)
    for feats, weight in ((pos / g_sxy, g_w), (bilateral_feats, b_w)):
        k = np.exp(-0.5 * ((feats[:, None] - feats[None]) ** 2).sum(-1))  # [N, N]
        norm = 1 / np.sqrt(k.sum(1))
        kernels.append(weight * norm[:, None] * k * norm[None])
    unary = -np.log(np.maximum(probs.reshape(-1, c).astype(np.float64), crf.PROB_FLOOR))

    def softmax(x):
        e = np.exp(x - x.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    q = softmax(-unary)
    for _ in range(iterations):
        q = softmax(-unary + sum(k @ q for k in kernels))  # Potts: reward agreeing neighbours
    return q.reshape(h, w, c)


def _accuracy(probs, truth):
    return float((probs.argmax(-1) == truth).mean())


@needs_crf
def test_crf_fixes_noisy_labels_along_an_edge():
    image, probs, truth = _edge_toy()
    out = crf.dense_crf(image, probs)  # the release's settings
    assert out.shape == probs.shape and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
    before, after = _accuracy(probs, truth), _accuracy(out, truth)
    assert before == pytest.approx(0.8821, abs=1e-4)  # measured: the noisy, shifted prediction
    assert after >= 0.999, after  # measured: 1.0
    # Smoothing alone (no appearance kernel) cannot move the boundary onto the colour edge.
    smooth_only = _accuracy(crf.dense_crf(image, probs, bilateral_weight=0), truth)
    assert smooth_only < 0.95 and after > smooth_only  # measured: 0.930
    # Mirroring the inputs mirrors the output: the layout [H, W] is kept.
    mirrored = crf.dense_crf(
        np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(probs[:, ::-1])
    )
    assert _accuracy(mirrored[:, ::-1], truth) >= 0.999


@needs_crf
def test_crf_matches_exact_mean_field_reference():
    # The edge toy, 10 iterations: the permutohedral lattice is close to the exact kernels.
    image, probs, _ = _edge_toy(h=20, w=28, edge=14, shift=3, band=5)
    ref = _mean_field_reference(image, probs, 10)
    assert np.abs(crf.dense_crf(image, probs) - ref).max() < 0.01  # measured: 0.0023
    # A smooth random image and random probabilities, 1 iteration (later iterations amplify the
    # lattice's approximation error near ties).
    rng = np.random.default_rng(2)
    coarse = rng.integers(0, 256, (3, 4, 3)).astype(np.float64)
    image = cv2.resize(coarse, (32, 24), interpolation=cv2.INTER_LINEAR)
    image = image + rng.normal(0, 6, (24, 32, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    probs = rng.dirichlet(np.ones(4), (24, 32)).astype(np.float32)
    out = crf.dense_crf(image, probs, iterations=1)
    err = np.abs(out - _mean_field_reference(image, probs, 1)).mean()
    assert err < 0.01  # measured: 0.0057
    # ...a tolerance that catches swapped weights or a wrong colour scale (measured 0.036, 0.031).
    assert np.abs(out - _mean_field_reference(image, probs, 1, (3, 5), (20, 3, 3))).mean() > 2 * err
    assert np.abs(out - _mean_field_reference(image, probs, 1, (3, 3), (20, 5, 5))).mean() > 2 * err
    # 0 iterations: the normalised input probabilities.
    zero = crf.dense_crf(image, probs, iterations=0)
    np.testing.assert_allclose(zero, probs / probs.sum(-1, keepdims=True), atol=1e-6)


@needs_crf
def test_bad_inputs_are_named():
    image, probs, _ = _edge_toy(h=8, w=8, edge=4, shift=1, band=2)
    with pytest.raises(ValueError, match="image must be uint8"):
        crf.dense_crf(image.astype(np.float32), probs)
    with pytest.raises(ValueError, match="differ in size"):
        crf.dense_crf(image[:7], probs)
    with pytest.raises(ValueError, match="not logits"):
        crf.dense_crf(image, probs * 10)
    with pytest.raises(ValueError, match="iterations"):
        crf.dense_crf(image, probs, iterations=-1)


def test_missing_package_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)  # makes `import pydensecrf...` fail
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    assert crf.crf_available() is False
    image, probs, _ = _edge_toy(h=8, w=8, edge=4, shift=1, band=2)
    with pytest.raises(ImportError, match=r"pip install 'deconvnet_jax\[crf\]'") as info:
        crf.dense_crf(image, probs)
    assert "pydensecrf2==1.1" in str(info.value)


@needs_crf
def test_read_only_image_is_accepted():
    """np.asarray(PIL image) is read-only; pydensecrf refuses such buffers unless copied."""
    image = np.zeros((6, 8, 3), np.uint8)
    image[:, 4:] = 255
    image.setflags(write=False)
    probs = np.full((6, 8, 2), 0.5, np.float32)
    probs[:, :4, 0], probs[:, :4, 1] = 0.9, 0.1
    q = crf.dense_crf(image, probs)
    assert q.shape == (6, 8, 2) and np.allclose(q.sum(-1), 1, atol=1e-4)
