"""Samplers and normalisation (deconvnet_jax/data/crops.py) against a small NumPy reference:
stage-1 windows, padding outside the image, bilinear / nearest resize, random crop and flip,
stage-2 windows on proposals, whole-image mode, the two normalisations."""

import json
import math

import numpy as np
import pytest

from deconvnet_jax.data import crops
from deconvnet_jax.data.voc import VOCDataset

# --- NumPy reference -------------------------------------------------------------------


def ref_window(image, label, window, pad):
    """Crop of `window` rounded outward to whole pixels, reading pad / 255 outside the image,
    by index arithmetic (no slicing of padded canvases as crops.py does)."""
    h, w = label.shape
    x0, y0 = math.floor(window[0]), math.floor(window[1])
    x1, y1 = max(math.ceil(window[2]), x0 + 1), max(math.ceil(window[3]), y0 + 1)
    ys, xs = np.arange(y0, y1), np.arange(x0, x1)
    iny, inx = (ys >= 0) & (ys < h), (xs >= 0) & (xs < w)
    img = np.empty((len(ys), len(xs), 3), np.uint8)
    img[...] = pad
    lab = np.full((len(ys), len(xs)), 255, np.uint8)
    img[np.ix_(iny, inx)] = image[np.ix_(ys[iny], xs[inx])]
    lab[np.ix_(iny, inx)] = label[np.ix_(ys[iny], xs[inx])]
    return img, lab


def ref_bilinear(a, size):
    """Bilinear resize with pixel centres aligned ((d + 0.5) * n / S - 0.5), edges clamped."""

    def taps(n):
        c = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
        i0 = np.floor(c).astype(int)
        return i0, np.minimum(i0 + 1, n - 1), c - i0

    y0, y1, fy = taps(a.shape[0])
    x0, x1, fx = taps(a.shape[1])
    a = a.astype(np.float64)
    fx = fx[None, :, None]
    top = a[y0][:, x0] * (1 - fx) + a[y0][:, x1] * fx
    bottom = a[y1][:, x0] * (1 - fx) + a[y1][:, x1] * fx
    return top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]


def ref_nearest(a, size):
    """Nearest neighbour at pixel centres: source index floor((d + 0.5) n / S), in exact
    integers. Where a centre lands exactly on a pixel border (a tie, which OpenCV's fixed-point
    arithmetic may send either way) both neighbours are allowed: returns the 4 candidate maps
    (row tie low / high x column tie low / high); the first is the no-tie-low answer."""

    def idx(n, tie_low):
        d = np.arange(size)
        num, den = (2 * d + 1) * n, 2 * size
        return np.maximum(-(-num // den) - 1, 0) if tie_low else num // den

    return [
        a[idx(a.shape[0], ry)][:, idx(a.shape[1], cx)]
        for ry in (False, True)
        for cx in (False, True)
    ]


def assert_nearest(lab, candidates):
    assert np.any([lab == c for c in candidates], axis=0).all()


@pytest.fixture(scope="module")
def example():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 64, 3)).astype(np.uint8)
    label = rng.integers(0, 21, (48, 64)).astype(np.uint8)
    boxes = np.array([[10, 8, 30, 40], [40, 2, 63, 20]], np.float32)
    return dict(
        id="ex", image=image, label=label, boxes=boxes, box_labels=np.array([3, 5], np.int32)
    )


# --- windows, padding, resize ---------------------------------------------------------------


def test_stage1_window_is_the_box_enlarged_about_its_centre():
    box = (10.0, 20.0, 50.0, 100.0)
    x0, y0, x1, y1 = crops.stage1_window(box, 1.2)
    assert ((x0 + x1) / 2, (y0 + y1) / 2) == pytest.approx((30.0, 60.0))
    assert (x1 - x0, y1 - y0) == pytest.approx((48.0, 96.0))
    assert crops.stage1_window(box, 1.0) == pytest.approx(box)


WINDOWS = [
    (10.3, 5.7, 40.2, 30.1),  # inside, fractional
    (-15.0, -10.0, 20.0, 25.0),  # leaves the image top-left
    (50.0, 30.0, 90.0, 70.0),  # leaves bottom-right
    (100.0, 100.0, 140.0, 130.0),  # entirely outside
    (3.0, 3.0, 3.2, 3.5),  # sub-pixel: one pixel
    (-20.0, -20.0, 84.0, 68.0),  # contains the whole image
]


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("size", [250, 17])
def test_extract_window_matches_numpy_reference(example, window, size):
    pad = np.array([123, 117, 104], np.uint8)
    img, lab = crops.extract_window(example["image"], example["label"], window, size, pad)
    ref_img, ref_lab = ref_window(example["image"], example["label"], window, pad)
    assert img.shape == (size, size, 3) and lab.shape == (size, size)
    assert img.dtype == np.uint8 and lab.dtype == np.uint8
    np.testing.assert_allclose(img, ref_bilinear(ref_img, size), atol=1)  # uint8 rounding
    assert_nearest(lab, ref_nearest(ref_lab, size))


def test_padding_values_exactly_at_scale_one():
    image = np.full((40, 40, 3), 200, np.uint8)
    label = np.full((40, 40), 7, np.uint8)
    img, lab = crops.extract_window(image, label, (-10, -5, 30, 35), 40, pad_value=0)
    assert np.all(img[:5] == 0) and np.all(img[:, :10] == 0)
    assert np.all(lab[:5] == 255) and np.all(lab[:, :10] == 255)
    assert np.all(img[5:, 10:] == 200) and np.all(lab[5:, 10:] == 7)
    img, _ = crops.extract_window(image, None, (-10, -5, 30, 35), 40, pad_value=(1, 2, 3))
    np.testing.assert_array_equal(img[0, 0], [1, 2, 3])


def test_random_crop_and_flip_match_reference():
    rng0 = np.random.default_rng(0)
    image = rng0.integers(0, 256, (250, 250, 3)).astype(np.uint8)
    label = rng0.integers(0, 21, (250, 250)).astype(np.uint8)
    flips = set()
    for seed in range(12):
        img, lab = crops.random_crop_flip(image, label, 224, np.random.default_rng(seed))
        ref = np.random.default_rng(seed)
        oy, ox = int(ref.integers(0, 27)), int(ref.integers(0, 27))
        flip = ref.random() < 0.5
        ri, rl = image[oy : oy + 224, ox : ox + 224], label[oy : oy + 224, ox : ox + 224]
        if flip:
            ri, rl = ri[:, ::-1], rl[:, ::-1]
        np.testing.assert_array_equal(img, ri)
        np.testing.assert_array_equal(lab, rl)
        assert img.flags.c_contiguous and lab.flags.c_contiguous
        flips.add(flip)
    assert flips == {True, False}
    img, _ = crops.random_crop_flip(image, label, 224, np.random.default_rng(1), flip=False)
    ref = np.random.default_rng(1)
    oy, ox = int(ref.integers(0, 27)), int(ref.integers(0, 27))
    np.testing.assert_array_equal(img, image[oy : oy + 224, ox : ox + 224])
    with pytest.raises(ValueError, match="cannot crop 224 from a 200x250"):
        crops.random_crop_flip(image[:, :200], label[:, :200], 224, np.random.default_rng(0))


def _ref_sample_stage1(ex, seed, resize, crop, pad, enlarge=1.2):
    rng = np.random.default_rng(seed)
    box = ex["boxes"][rng.integers(len(ex["boxes"]))]
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hw, hh = (x1 - x0) * enlarge / 2, (y1 - y0) * enlarge / 2
    img, lab = ref_window(ex["image"], ex["label"], (cx - hw, cy - hh, cx + hw, cy + hh), pad)
    img, labs = ref_bilinear(img, resize), ref_nearest(lab, resize)
    oy, ox = int(rng.integers(0, resize - crop + 1)), int(rng.integers(0, resize - crop + 1))
    out = [a[oy : oy + crop, ox : ox + crop] for a in [img] + labs]
    if rng.random() < 0.5:
        out = [a[:, ::-1] for a in out]
    return out[0], out[1:]


def test_stage1_sample_crop_matches_reference(example):
    pad = crops.mean_pixel()
    for seed in range(8):
        img, lab = crops.sample_crop(
            example, "stage1", np.random.default_rng(seed), resize=60, crop_size=48, pad_value=pad
        )
        ref_img, ref_labs = _ref_sample_stage1(example, seed, 60, 48, pad)
        np.testing.assert_allclose(img, ref_img, atol=1)
        assert_nearest(lab, ref_labs)


def test_stage1_on_real_samples_keeps_the_object(voc_samples):
    ds = VOCDataset(voc_samples, "val")
    for ex in ds:
        for box, c in zip(ex["boxes"], ex["box_labels"]):
            window = crops.stage1_window(box, 1.2)
            _, lab = crops.extract_window(ex["image"], ex["label"], window, 250)
            assert (lab == c).mean() > 0.01  # the object is in its window
            # a 1.2x window leaves a margin of ~1/12 of its side on each side around the box
            bw = (box[2] - box[0]) * 1.2
            if bw >= 20:
                margin = int(250 * 0.1 / 1.2) - 2
                assert not (lab[:, :margin] == c).all()


def test_whole_mode_and_boxless_examples(example):
    rng = np.random.default_rng(0)
    assert crops.choose_window(example, "whole", rng) == (0.0, 0.0, 64.0, 48.0)
    boxless = dict(example, boxes=np.zeros((0, 4), np.float32))
    assert crops.choose_window(boxless, "stage1", rng) == (0.0, 0.0, 64.0, 48.0)
    img, lab = crops.sample_crop(
        example, "whole", np.random.default_rng(3), resize=50, crop_size=50, flip=False
    )
    np.testing.assert_allclose(img, ref_bilinear(example["image"], 50), atol=1)
    assert_nearest(lab, ref_nearest(example["label"], 50))
    with pytest.raises(ValueError, match="unknown crop mode 'stage3'"):
        crops.choose_window(example, "stage3", rng)


# --- stage 2 -----------------------------------------------------------------------------


def test_box_iou_matches_loop():
    rng = np.random.default_rng(0)
    a = np.sort(rng.uniform(0, 50, (5, 2, 2)), axis=1).transpose(0, 2, 1).reshape(5, 4)
    b = np.sort(rng.uniform(0, 50, (4, 2, 2)), axis=1).transpose(0, 2, 1).reshape(4, 4)
    a, b = a[:, [0, 2, 1, 3]], b[:, [0, 2, 1, 3]]  # (x0, y0, x1, y1)
    iou = crops.box_iou(a, b)
    for i in range(5):
        for j in range(4):
            iw = max(0.0, min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0]))
            ih = max(0.0, min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1]))
            area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
            ref = iw * ih / (area(a[i]) + area(b[j]) - iw * ih)
            assert iou[i, j] == pytest.approx(ref, rel=1e-9)


def test_stage2_windows_overlap_a_ground_truth_box():
    ex = dict(
        id="p",
        image=np.zeros((100, 100, 3), np.uint8),
        label=np.zeros((100, 100), np.uint8),
        boxes=np.array([[10, 10, 50, 50], [60, 60, 90, 90]], np.float32),
        box_labels=np.array([1, 2], np.int32),
    )
    props = np.array(
        [
            [12, 12, 52, 52],  # IoU 0.82 with box 0
            [0, 0, 20, 20],  # IoU 0.04: never
            [62, 58, 92, 88],  # IoU 0.78 with box 1
            [70, 0, 99, 30],
        ],
        np.float32,
    )  # no overlap: never
    chosen = set()
    for seed in range(40):
        for source in ({"p": props}, lambda e: props):
            w = crops.choose_window(ex, "stage2", np.random.default_rng(seed), proposals=source)
            assert crops.box_iou(np.array(w), ex["boxes"]).max() >= 0.5
            chosen.add(tuple(w))
    assert chosen == {tuple(props[0].tolist()), tuple(props[2].tolist())}
    # nothing overlapping (or no proposals for the id) falls back to a stage-1 window
    rng = np.random.default_rng(0)
    w = crops.choose_window(ex, "stage2", rng, proposals={"p": props[[1, 3]]})
    boxes = [tuple(crops.stage1_window(b)) for b in ex["boxes"]]
    assert tuple(w) in boxes
    assert tuple(crops.choose_window(ex, "stage2", rng, proposals={})) in boxes
    with pytest.raises(ValueError, match="stage2 sampling needs proposals"):
        crops.choose_window(ex, "stage2", rng)


def test_load_proposals(tmp_path):
    p = {"a": np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32), "b": np.zeros((0, 4))}
    np.savez(tmp_path / "p.npz", **p)
    got = crops.load_proposals(tmp_path / "p.npz")
    np.testing.assert_array_equal(got["a"], p["a"])
    assert got["b"].shape == (0, 4)
    (tmp_path / "p.json").write_text(json.dumps({"a": [[1, 2, 3, 4, 0.9], [5, 6, 7, 8, 0.1]]}))
    np.testing.assert_array_equal(crops.load_proposals(tmp_path / "p.json")["a"], p["a"])
    with pytest.raises(ValueError, match="must be .npz or .json"):
        (tmp_path / "p.txt").write_text("")
        crops.load_proposals(tmp_path / "p.txt")
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        crops.load_proposals(tmp_path / "nope.npz")


# --- normalisation -------------------------------------------------------------------------


def test_normalize_values():
    px = np.array([[[10, 20, 30]]], np.uint8)  # R, G, B
    np.testing.assert_allclose(
        crops.normalize(px, "caffe_bgr")[0, 0],
        [30 - 104.008, 20 - 116.669, 10 - 122.675],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        crops.normalize(px, "imagenet")[0, 0],
        [(10 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224, (30 / 255 - 0.406) / 0.225],
        rtol=1e-5,
    )
    for mode in ("caffe_bgr", "imagenet"):
        out = crops.normalize(crops.mean_pixel(mode)[None, None], mode)
        assert out.dtype == np.float32
        scale = 1.0 if mode == "caffe_bgr" else 1 / (255 * 0.224)
        assert np.abs(out).max() <= 0.5 * scale + 1e-6  # padding normalises to ~0
    batch = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3)).astype(np.uint8)
    for mode in ("caffe_bgr", "imagenet"):  # uint8 (OpenCV) and float (NumPy) paths agree
        fast, slow = crops.normalize(batch, mode), crops.normalize(batch.astype(np.float64), mode)
        assert fast.shape == slow.shape == batch.shape and fast.dtype == slow.dtype == np.float32
        np.testing.assert_allclose(fast, slow, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="unknown normalization 'bgr'"):
        crops.normalize(px, "bgr")
