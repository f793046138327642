"""The paper's training samplers (PAPER.md "Training recipe"), pure NumPy/OpenCV, seeded.

  stage1: a window around a ground-truth object box, enlarged by `box_enlarge` (1.2), centred;
  stage2: a window at an object proposal that overlaps a ground-truth object (IoU >= min_iou);
  whole:  the whole image (what the PyTorch ports do).
Then: window -> resize to `resize` (250; image bilinear, label nearest) -> random `crop_size` (224)
crop -> random horizontal flip. Windows that leave the image read image 0 and label 255.
`normalize` subtracts the release's BGR mean (or ImageNet mean/std for torchvision weights).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from deconvnet_jax.data.voc import IGNORE_LABEL

CAFFE_BGR_MEAN = np.array([104.008, 116.669, 122.675], np.float32)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
MODES = ("stage1", "stage2", "whole")

cv2.setNumThreads(1)  # loader workers parallelise across examples instead


# per-channel constants as OpenCV scalars (4 entries)
_CV_BGR_MEAN = tuple(float(v) for v in CAFFE_BGR_MEAN) + (0.0,)
_CV_IMAGENET_SCALE = tuple(float(v) for v in 1 / (255 * IMAGENET_STD.astype(np.float64))) + (0.0,)
_CV_IMAGENET_SHIFT = tuple(float(v) for v in IMAGENET_MEAN / IMAGENET_STD.astype(np.float64)) + (
    0.0,
)


def normalize(image: np.ndarray, mode: str = "caffe_bgr") -> np.ndarray:
    """uint8 RGB [..., 3] -> float32 network input [..., 3].

    Args:
      image: RGB image(s), uint8 (fast path) or any numeric type on the 0..255 scale.
      mode: "caffe_bgr" (reorder to BGR, subtract the release's mean, 0..255 scale) or
        "imagenet" (RGB / 255, minus mean, over std: torchvision weights).

    OpenCV on a flat pixel row: 15x faster than NumPy on the stride-3 channel axis (which made
    normalisation a third of a training crop's cost).
    """
    if mode not in ("caffe_bgr", "imagenet"):
        raise ValueError(f"unknown normalization {mode!r} (expected 'caffe_bgr' or 'imagenet')")
    image = np.asarray(image)
    if image.dtype != np.uint8:  # e.g. float 0..255: the plain NumPy formula
        x = image.astype(np.float32)
        if mode == "caffe_bgr":
            return x[..., ::-1] - CAFFE_BGR_MEAN
        return (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    flat = np.ascontiguousarray(image).reshape(1, -1, 3)  # [1, pixels, 3]
    if mode == "caffe_bgr":
        bgr = cv2.cvtColor(flat, cv2.COLOR_RGB2BGR).astype(np.float32)
        out = cv2.subtract(bgr, _CV_BGR_MEAN)
    else:
        out = cv2.subtract(
            cv2.multiply(flat.astype(np.float32), _CV_IMAGENET_SCALE), _CV_IMAGENET_SHIFT
        )
    return out.reshape(image.shape)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [N, M] of boxes (x0, y0, x1, y1)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def stage1_window(box: Sequence[float], enlarge: float = 1.2) -> tuple[float, float, float, float]:
    """The object box enlarged by `enlarge` about its centre (may leave the image)."""
    x0, y0, x1, y1 = box
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * enlarge / 2, (y1 - y0) * enlarge / 2
    return cx - hw, cy - hh, cx + hw, cy + hh


def mean_pixel(normalization: str = "caffe_bgr") -> np.ndarray:
    """The uint8 RGB colour that normalises to ~0: the value training pads windows with."""
    if normalization == "imagenet":
        return np.round(IMAGENET_MEAN * 255).astype(np.uint8)
    return np.round(CAFFE_BGR_MEAN[::-1]).astype(np.uint8)


def extract_window(image: np.ndarray, label: np.ndarray | None, window, out_size: int, pad_value=0):
    """Crops `window` (x0, y0, x1, y1; rounded outward to whole pixels) with padding (image
    `pad_value`, label 255) and resizes it to out_size x out_size (image bilinear, label nearest).

    Returns:
      (image uint8 [S, S, 3], label uint8 [S, S] or None).
    """
    h, w = image.shape[:2]
    x0, y0 = math.floor(window[0]), math.floor(window[1])
    x1, y1 = max(math.ceil(window[2]), x0 + 1), max(math.ceil(window[3]), y0 + 1)
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    pad = tuple(float(v) for v in np.broadcast_to(np.asarray(pad_value, np.float64), (3,)))
    if ix1 <= ix0 or iy1 <= iy0:  # entirely outside the image
        out_img = np.empty((out_size, out_size, 3), np.uint8)
        out_img[...] = np.asarray(pad, np.uint8)
        out_lab = np.full((out_size, out_size), IGNORE_LABEL, np.uint8)
        return out_img, (out_lab if label is not None else None)
    # the part inside the image as a view, padded only where the window leaves it
    border = (iy0 - y0, y1 - iy1, ix0 - x0, x1 - ix1)  # top, bottom, left, right
    crop_img = image[iy0:iy1, ix0:ix1]
    if any(border):
        crop_img = cv2.copyMakeBorder(crop_img, *border, cv2.BORDER_CONSTANT, value=pad)
    out_img = cv2.resize(crop_img, (out_size, out_size), interpolation=cv2.INTER_LINEAR)
    if label is None:
        return out_img, None
    crop_lab = label[iy0:iy1, ix0:ix1]
    if any(border):
        crop_lab = cv2.copyMakeBorder(
            crop_lab, *border, cv2.BORDER_CONSTANT, value=float(IGNORE_LABEL)
        )
    # NEAREST_EXACT samples at pixel centres, as INTER_LINEAR does (and PIL's NEAREST); plain
    # INTER_NEAREST samples at floor(dst * scale), half a pixel off the image it labels.
    return out_img, cv2.resize(
        crop_lab, (out_size, out_size), interpolation=cv2.INTER_NEAREST_EXACT
    )


def random_crop_flip(image, label, crop_size: int, rng: np.random.Generator, flip: bool = True):
    """A random crop_size crop (uniform offset) and a random horizontal flip (p = 0.5)."""
    h, w = label.shape
    if h < crop_size or w < crop_size:
        raise ValueError(
            f"cannot crop {crop_size} from a {w}x{h} window (resize must be >= crop_size)"
        )
    oy, ox = int(rng.integers(0, h - crop_size + 1)), int(rng.integers(0, w - crop_size + 1))
    image = image[oy : oy + crop_size, ox : ox + crop_size]
    label = label[oy : oy + crop_size, ox : ox + crop_size]
    if flip and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


ProposalFn = Callable[[dict], np.ndarray]  # example -> boxes [N, 4]


def choose_window(
    example: dict,
    mode: str,
    rng: np.random.Generator,
    box_enlarge: float = 1.2,
    proposals: ProposalFn | dict | None = None,
    min_iou: float = 0.5,
):
    """The sampling window of one training example for `mode` (stage1 | stage2 | whole).

    stage1 falls back to the whole image when the example has no object box; stage2 falls back
    to stage1 when no proposal overlaps a ground-truth object by `min_iou`.
    """
    h, w = example["label"].shape
    boxes = example["boxes"]
    if mode == "whole" or (mode in ("stage1", "stage2") and len(boxes) == 0):
        return (0.0, 0.0, float(w), float(h))
    if mode == "stage2":
        if proposals is None:
            raise ValueError(
                "stage2 sampling needs proposals (config.data.proposals or a callable)"
            )
        props = proposals(example) if callable(proposals) else proposals.get(example["id"])
        if props is not None and len(props):
            props = np.asarray(props, np.float32).reshape(-1, 4)
            good = props[box_iou(props, boxes).max(axis=1) >= min_iou]
            if len(good):
                return tuple(good[rng.integers(len(good))].tolist())
        mode = "stage1"
    if mode == "stage1":
        return stage1_window(boxes[rng.integers(len(boxes))], box_enlarge)
    raise ValueError(f"unknown crop mode {mode!r} (expected one of {MODES})")


def sample_crop(
    example: dict,
    mode: str,
    rng: np.random.Generator,
    resize: int = 250,
    crop_size: int = 224,
    flip: bool = True,
    box_enlarge: float = 1.2,
    proposals: ProposalFn | dict | None = None,
    pad_value=0,
):
    """One training crop: window by `mode` -> resize -> random crop -> random flip.

    Parts of the window outside the image get `pad_value` (the loader passes `mean_pixel()`, so
    the padding is 0 after mean subtraction, as the release pads its mean-subtracted input) and
    label 255.

    Returns:
      (image uint8 [crop, crop, 3], label uint8 [crop, crop]).
    """
    window = choose_window(example, mode, rng, box_enlarge, proposals)
    image, label = extract_window(example["image"], example["label"], window, resize, pad_value)
    return random_crop_flip(image, label, crop_size, rng, flip)


def load_proposals(path) -> dict[str, np.ndarray]:
    """Proposals file for stage 2: .npz (one array [N, 4] per image id) or .json
    ({id: [[x0, y0, x1, y1], ...]})."""
    import io
    import json

    from deconvnet_jax import paths

    path = paths.as_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"proposals file {path} not found")
    if path.suffix == ".npz":
        with np.load(io.BytesIO(path.read_bytes()) if paths.is_remote(path) else path) as z:
            return {k: np.asarray(z[k], np.float32).reshape(-1, 4) for k in z.files}
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        # rows are [x0, y0, x1, y1] or [x0, y0, x1, y1, score]
        return {k: np.asarray(v, np.float32).reshape(len(v), -1)[:, :4] for k, v in data.items()}
    raise ValueError(f"{path}: proposals file must be .npz or .json")
