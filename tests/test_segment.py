"""Proposal-batch segmentation (deconvnet_jax/proposals/segment.py) against per-proposal references.

References: a float64 NumPy per-proposal loop (crop with zero padding, separable half-pixel
bilinear resize by explicit taps, network on one crop, resize back, paste, max/mean); cv2.resize
and torch.nn.functional.interpolate(align_corners=False) for the interpolation convention; an
oracle "network" that returns the one-hot true labels of its crop.
"""

import math

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from nets import random_variables

from deconvnet_jax.models.deconvnet import DeconvNet
from deconvnet_jax.proposals import segment as seg

S = seg.CROP_SIZE


# --- independent NumPy reference -----------------------------------------------------------------
def resize_axis(a: np.ndarray, out_len: int, axis: int) -> np.ndarray:
    """Half-pixel bilinear resize of one axis, float64, explicit taps (cv2/torch convention)."""
    n = a.shape[axis]
    out = []
    for j in range(out_len):
        u = min(max((j + 0.5) * n / out_len - 0.5, 0.0), n - 1.0)
        lo = int(math.floor(u))
        hi = min(lo + 1, n - 1)
        f = u - lo
        out.append((1 - f) * np.take(a, lo, axis) + f * np.take(a, hi, axis))
    return np.stack(out, axis)


def resize2d(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    return resize_axis(resize_axis(a.astype(np.float64), out_h, 0), out_w, 1)


def window_of(box):
    x0, y0, x1, y1 = box
    X0, Y0 = math.floor(x0), math.floor(y0)
    return X0, Y0, max(math.ceil(x1), X0 + 1), max(math.ceil(y1), Y0 + 1)


def crop_window(image: np.ndarray, win) -> np.ndarray:
    X0, Y0, X1, Y1 = win
    h, w = image.shape[:2]
    out = np.zeros((Y1 - Y0, X1 - X0) + image.shape[2:], np.float64)
    ys, xs = slice(max(Y0, 0), min(Y1, h)), slice(max(X0, 0), min(X1, w))
    if ys.stop > ys.start and xs.stop > xs.start:
        out[ys.start - Y0 : ys.stop - Y0, xs.start - X0 : xs.stop - X0] = image[ys, xs]
    return out


def reference_segment(net, image, boxes, valid, canvas, aggregate="max"):
    """Per-proposal loop: returns (scores [canvas, canvas, C] float64, count [canvas, canvas])."""
    h, w = image.shape[:2]
    acc, count = None, np.zeros((canvas, canvas), np.int64)
    for box, ok in zip(boxes, valid):
        if not ok or not np.all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
            continue
        win = window_of(box)
        X0, Y0, X1, Y1 = win
        crop = resize2d(crop_window(image, win), S, S)
        scores = np.asarray(net(crop[None])[0], np.float64)  # [S, S, C]
        back = resize2d(scores, Y1 - Y0, X1 - X0)
        if acc is None:
            acc = np.zeros((canvas, canvas, scores.shape[-1]))
        ys, xs = slice(max(Y0, 0), min(Y1, h)), slice(max(X0, 0), min(X1, w))
        if ys.stop <= ys.start or xs.stop <= xs.start:
            continue  # the window lies outside the image
        v = back[ys.start - Y0 : ys.stop - Y0, xs.start - X0 : xs.stop - X0]
        acc[ys, xs] = np.maximum(acc[ys, xs], v) if aggregate == "max" else acc[ys, xs] + v
        count[ys, xs] += 1
    if aggregate == "mean":
        acc = acc / np.maximum(count, 1)[..., None]
    return acc, count


# --- interpolation matrices vs cv2 / torch -------------------------------------------------------
WINDOWS = [
    (3, 4, 40, 30),
    (-10, -5, 20, 60),
    (60, 45, 90, 80),
    (5, 5, 6, 6),
    (0, 0, 70, 50),
    (10, 2, 13, 300),
    (-400, -400, -100, -100),
]


@pytest.mark.parametrize("win", WINDOWS)
def test_crop_and_paste_matrices_match_cv2_and_torch(win):
    rng = np.random.default_rng(0)
    h, w, canvas = 50, 70, 96
    image = rng.standard_normal((h, w, 3)).astype(np.float32)
    X0, Y0, X1, Y1 = win
    ry = np.asarray(seg.crop_matrix(jnp.int32(Y0), jnp.int32(Y1), jnp.int32(h), canvas))
    rx = np.asarray(seg.crop_matrix(jnp.int32(X0), jnp.int32(X1), jnp.int32(w), canvas))
    got = np.einsum("jh,hwc,iw->jic", ry, seg.pad_image(image, canvas), rx, optimize=True)
    window = crop_window(image, win).astype(np.float32)
    np.testing.assert_allclose(got, resize2d(window, S, S), atol=2e-6)
    np.testing.assert_allclose(
        got, cv2.resize(window, (S, S), interpolation=cv2.INTER_LINEAR), atol=1e-5
    )
    t = torch.nn.functional.interpolate(
        torch.as_tensor(np.array(window)).permute(2, 0, 1)[None],
        size=(S, S),
        mode="bilinear",
        align_corners=False,
    )
    np.testing.assert_allclose(got, t[0].permute(1, 2, 0).numpy(), atol=5e-5)  # float32 coords

    scores = rng.standard_normal((S, S, 5)).astype(np.float32)
    py, cov_y = (
        np.asarray(a) for a in seg.paste_matrix(jnp.int32(Y0), jnp.int32(Y1), jnp.int32(h), canvas)
    )
    px, cov_x = (
        np.asarray(a) for a in seg.paste_matrix(jnp.int32(X0), jnp.int32(X1), jnp.int32(w), canvas)
    )
    pasted = np.einsum("gj,jic,hi->ghc", py, scores, px, optimize=True)
    back = resize2d(scores, Y1 - Y0, X1 - X0)
    want = np.zeros_like(pasted)
    mask = np.zeros((canvas, canvas), bool)
    for y in range(max(Y0, 0), min(Y1, h)):  # pixel by pixel, on purpose
        for x in range(max(X0, 0), min(X1, w)):
            want[y, x], mask[y, x] = back[y - Y0, x - X0], True
    np.testing.assert_allclose(pasted, want, atol=2e-6)
    np.testing.assert_array_equal(cov_y[:, None] & cov_x[None, :], mask)
    t = torch.nn.functional.interpolate(
        torch.as_tensor(np.array(scores)).permute(2, 0, 1)[None],
        size=(Y1 - Y0, X1 - X0),
        mode="bilinear",
        align_corners=False,
    )
    np.testing.assert_allclose(back, t[0].permute(1, 2, 0).numpy(), atol=2e-4)


# --- the jitted function on random weights -------------------------------------------------------
@pytest.fixture
def x64():
    """float64 in JAX for the test's duration (structural equality checks)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def tiny_net():
    """A tiny DeconvNet in float64 (use with the x64 fixture): apply, variables, and one-crop net.

    Structural checks (the batched proposal path == a per-proposal loop) run in float64: in float32
    another ISA or batch composition rounds differently, flips near-tied pooling switches and moves
    values to other pixels (issue 12), although the computation is the same.
    """
    model = DeconvNet(
        num_classes=5, width_multiplier=1 / 32, dtype=jnp.float64, param_dtype=jnp.float64
    )
    with jax.enable_x64(True):  # module-scoped: built before the x64 fixture is entered
        variables = random_variables(model, dtype=np.float64)
    apply = lambda v, x: model.apply(v, x, train=False)  # noqa: E731
    one = jax.jit(apply)
    return apply, variables, (lambda x: np.asarray(one(variables, jnp.asarray(x, jnp.float64))))


BOXES = np.array(
    [
        [
            [10, 20, 130, 140],
            [-30, -10, 90, 100],
            [150, 100, 260, 200],
            [50, 50, 50, 90],
            [5.5, 7.2, 180.3, 149.9],
            [1, 2, 3, 4],
            [0, 0, 40, np.nan],
        ],
        [
            [0, 0, 180, 256],
            [100, 120, 300, 400],
            [20, 30, 21, 31],
            [60, 60, 40, 100],
            [400, 400, 500, 500],
            [1, 1, 2, 2],
            [0, 0, 0, 0],
        ],
    ],
    np.float32,
)  # leaving the image, zero-area, inverted, 1-pixel, fully outside, NaN
VALID = np.array([[1, 1, 1, 1, 1, 0, 1], [1, 1, 1, 1, 1, 1, 0]], bool)
HW = np.array([[150, 200], [256, 180]], np.int32)


@pytest.mark.parametrize(
    "aggregate,impl", [("max", "matmul"), ("mean", "matmul"), ("max", "gather"), ("mean", "gather")]
)
def test_segment_matches_per_proposal_reference(x64, tiny_net, aggregate, impl):
    apply, variables, net = tiny_net
    canvas = 256
    rng = np.random.default_rng(0)
    images = np.zeros((2, canvas, canvas, 3), np.float64)
    for b, (h, w) in enumerate(HW):
        images[b, :h, :w] = rng.standard_normal((h, w, 3)) * 50
    fn = seg.make_segment_fn(apply, chunk_size=4, aggregate=aggregate, resize_impl=impl)  # 4 chunks
    scores, count = (np.asarray(a) for a in fn(variables, images, HW, BOXES, VALID))
    assert scores.shape == (2, canvas, canvas, 5) and count.shape == (2, canvas, canvas)
    assert scores.dtype == np.float64
    for b, (h, w) in enumerate(HW):
        want, want_count = reference_segment(
            net, images[b, :h, :w], BOXES[b], VALID[b], canvas, aggregate
        )
        np.testing.assert_array_equal(count[b], want_count)
        scale = np.abs(want).max()
        assert scale > 0.1
        np.testing.assert_allclose(scores[b], want, rtol=0, atol=1e-9 * scale)
        if aggregate == "max":
            assert scores[b].min() >= 0  # max against a zero map
            assert np.all(scores[b][want_count == 0] == 0)
    # pixels no proposal reaches are background
    labels = np.asarray(seg.labels_from_scores(scores, count))
    assert np.all(labels[count == 0] == 0)
    assert np.any(labels[count > 0] != 0)


def test_segment_batch_equals_single_images_and_empty_chunks_skipped(x64, tiny_net):
    apply, variables, _ = tiny_net
    canvas = 256
    rng = np.random.default_rng(1)
    images = rng.standard_normal((2, canvas, canvas, 3)) * 50  # float64
    fn = seg.make_segment_fn(apply, chunk_size=3)
    both = np.asarray(fn(variables, images, HW, BOXES, VALID)[0])
    for b in range(2):
        one = np.asarray(
            fn(variables, images[b : b + 1], HW[b : b + 1], BOXES[b : b + 1], VALID[b : b + 1])[0]
        )
        np.testing.assert_allclose(both[b], one[0], rtol=0, atol=1e-9 * np.abs(one).max())
    none_valid = np.zeros_like(VALID)
    scores, count = fn(variables, images, HW, BOXES, none_valid)
    assert float(jnp.abs(scores).max()) == 0 and int(count.max()) == 0


# --- oracle network ------------------------------------------------------------------------------
NUM_ORACLE_CLASSES = 4


def oracle_apply(variables, crops):
    """A "network" reading the label written in channel 0 of its crop: one-hot true labels."""
    del variables
    return jax.nn.one_hot(jnp.round(crops[..., 0]).astype(jnp.int32), NUM_ORACLE_CLASSES)


def blocky_labels(h, w, block, rng):
    small = rng.integers(0, NUM_ORACLE_CLASSES, (math.ceil(h / block), math.ceil(w / block)))
    return np.kron(small, np.ones((block, block), np.int64))[:h, :w]


def oracle_case(boxes, h, w, canvas, block, seed, impl="matmul"):
    rng = np.random.default_rng(seed)
    truth = blocky_labels(h, w, block, rng)
    image = np.zeros((1, canvas, canvas, 3), np.float32)
    image[0, :h, :w, 0] = truth
    image[0, :h, :w, 1:] = 7.0  # the other channels are not read
    fn = seg.make_segment_fn(oracle_apply, chunk_size=4, resize_impl=impl)
    boxes = np.asarray(boxes, np.float32)[None]
    scores, count = fn(
        {}, image, np.array([[h, w]], np.int32), boxes, np.ones(boxes.shape[:2], bool)
    )
    labels = np.asarray(seg.labels_from_scores(scores, count))[0, :h, :w]
    return truth, labels, np.asarray(count)[0, :h, :w]


@pytest.mark.parametrize("impl", ["matmul", "gather"])
def test_oracle_exact_for_crop_sized_windows(impl):
    # windows of exactly 224 x 224 resample nothing: the reconstruction is the truth on every
    # covered pixel, including windows that leave the image; uncovered pixels are background
    boxes = [[0, 0, 224, 224], [100, 60, 324, 284], [-50, 150, 174, 374], [250, -100, 474, 124]]
    truth, labels, count = oracle_case(boxes, 300, 330, 384, block=7, seed=0, impl=impl)
    covered = count > 0
    assert covered.mean() > 0.6 and (~covered).any()
    np.testing.assert_array_equal(labels[covered], truth[covered])
    assert np.all(labels[~covered] == 0)


@pytest.mark.parametrize("impl", ["matmul", "gather"])
def test_oracle_any_scale_equals_truth_away_from_label_edges(impl):
    # windows from 0.5x to 2x the crop size: bilinear resampling only mixes labels within the
    # interpolation footprint (<= scale + 2 pixels) of a label edge or the image border
    rng = np.random.default_rng(3)
    h, w, canvas = 400, 440, 512
    boxes = []
    for _ in range(12):
        side_w, side_h = rng.integers(112, 449, 2)
        x0, y0 = rng.integers(-60, w - 60), rng.integers(-60, h - 60)
        boxes.append([x0, y0, x0 + side_w, y0 + side_h])
    truth, labels, count = oracle_case(boxes, h, w, canvas, block=24, seed=1, impl=impl)
    margin = 5
    edge = np.zeros((h + 2, w + 2), bool)  # label edges and the image border
    padded = np.pad(truth, 1, constant_values=-1)
    edge[:, 1:] |= padded[:, 1:] != padded[:, :-1]
    edge[1:, :] |= padded[1:, :] != padded[:-1, :]
    near = cv2.dilate(edge.astype(np.uint8), np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
    interior = (count > 0) & ~near[1:-1, 1:-1].astype(bool)
    assert interior.sum() > 0.2 * h * w
    np.testing.assert_array_equal(labels[interior], truth[interior])
    covered = count > 0
    assert (labels[covered] == truth[covered]).mean() > 0.97


# --- helpers -------------------------------------------------------------------------------------
def test_canvas_and_padding_helpers():
    assert seg.validate_canvas_sizes([512, 320]) == (320, 512)
    with pytest.raises(ValueError, match="multiples of 32"):
        seg.validate_canvas_sizes([500])
    with pytest.raises(ValueError, match="224"):
        seg.validate_canvas_sizes([192])
    assert seg.canvas_for(300, 200, (320, 512)) == 320
    assert seg.canvas_for(321, 200, (320, 512)) == 512
    boxes, valid = seg.pad_boxes(np.array([[1, 2, 3, 4], [5, 6, 7, 8]]), 4)
    np.testing.assert_array_equal(valid, [True, True, False, False])
    np.testing.assert_array_equal(boxes[:2], [[1, 2, 3, 4], [5, 6, 7, 8]])
    img = np.ones((3, 5, 3), np.float32)
    padded = seg.pad_image(img, 8)
    assert padded.sum() == 45 and padded[:3, :5].min() == 1
    with pytest.raises(ValueError, match="does not fit"):
        seg.pad_image(np.ones((9, 2, 3)), 8)
    with pytest.raises(ValueError, match="aggregate"):
        seg.make_segment_fn(oracle_apply, aggregate="median")
    with pytest.raises(ValueError, match="resize_impl"):
        seg.make_segment_fn(oracle_apply, resize_impl="fft")
