"""Jitted proposal-batch segmentation (PAPER.md "Inference") and the whole-image mode.

Geometry (the same as the training crops, ``data.crops.extract_window``):
  * Pixel (row y, column x) of an image covers [x, x+1) x [y, y+1); its centre is (x+0.5, y+0.5).
    A box (x0, y0, x1, y1) has an exclusive max; it is rounded outward to the integer window
    X0 = floor(x0), X1 = ceil(x1) (and likewise in y). Boxes with x1 <= x0 or y1 <= y0 (zero
    area) or non-finite coordinates are ignored, as are boxes whose ``valid`` flag is False.
  * Crop: the window is resized to S x S (S = 224) by bilinear interpolation with half-pixel
    centres (``align_corners=False``; cv2 INTER_LINEAR, torch ``interpolate(...,
    align_corners=False)`` without antialiasing): output index j samples window coordinate
    u = (j + 0.5) * n / S - 0.5 (n = window side), clamped to [0, n - 1], blending window pixels
    floor(u) and floor(u) + 1 (clamped to n - 1). Window pixels outside the image read 0
    (the normalised mean colour: the training crops pad the same way).
  * Paste: the crop's S x S class scores are resized to the window's n_y x n_x by the same rule
    (window index r samples crop coordinate (r + 0.5) * S / n - 0.5) and placed on the window;
    pixels outside the image are dropped.
  * Aggregation: "max" (the release) -- pixel-wise max of the pasted scores against a zero map,
    so negative scores clip at 0 -- or "mean" -- the mean over the proposals covering the pixel.
    Pixels no proposal reaches score 0 for every class; ``labels_from_scores`` makes them
    background (class 0).
Crop and paste are small matrix products: crop = Ry @ image @ Rx^T with Ry [S, canvas] and
Rx [S, canvas] per box, paste = Py @ scores @ Px^T with Py, Px [canvas, S] (``resize_impl=
"matmul"``), or the same two-tap weights applied by gathers (``"gather"``). Images are padded to a
fixed square canvas (bottom/right, value 0) and boxes to a fixed count K with a valid mask, so one
compile serves a whole dataset. The network runs on the B*K crops in chunks (``lax.scan``; chunks
without any valid box are skipped with ``lax.cond``).
"""

from __future__ import annotations

import functools
import logging
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)

CROP_SIZE = 224
AGGREGATIONS = ("max", "mean")
ApplyFn = Callable[..., jax.Array]  # (variables, crops [n, S, S, 3]) -> scores [n, S, S, C]


# --- geometry ------------------------------------------------------------------------------------
def box_windows(boxes: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Integer windows of boxes (rounded outward) and their validity.

    Args:
      boxes: float [..., 4] (x0, y0, x1, y1), exclusive max.
      valid: bool [...].

    Returns:
      (windows int32 [..., 4] as (X0, Y0, X1, Y1), valid bool [...] also False for zero-area or
      non-finite boxes).
    """
    boxes = jnp.asarray(boxes, jnp.float32)
    ok = valid & jnp.all(jnp.isfinite(boxes), -1)
    ok = ok & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    safe = jnp.where(ok[..., None], boxes, 0.0)
    lo = jnp.floor(safe[..., :2])
    hi = jnp.maximum(jnp.ceil(safe[..., 2:]), lo + 1)
    return jnp.concatenate([lo, hi], -1).astype(jnp.int32), ok


def _bilinear_taps(num_out: int, src_len: jax.Array, dst_len: jax.Array, dtype=jnp.float32):
    """Half-pixel bilinear taps of a src_len -> dst_len resize at output indices 0 .. num_out-1.

    Output j samples source coordinate u = ((2j + 1) * src_len - dst_len) / (2 * dst_len), i.e.
    (j + 0.5) * src_len / dst_len - 0.5, clamped to [0, src_len - 1]. The integer part and the
    fraction come from integer arithmetic, so the weights are exact to the rounding of ``dtype``.

    Returns:
      (i0, i1 int32 [num_out], w0, w1 dtype [num_out]); src_len, dst_len are int scalars.
    """
    src_len = jnp.asarray(src_len, jnp.int32)
    dst_len = jnp.asarray(dst_len, jnp.int32)
    num = (2 * jnp.arange(num_out, dtype=jnp.int32) + 1) * src_len - dst_len
    den = 2 * dst_len
    i0 = jnp.floor_divide(num, den)
    frac = (num - i0 * den).astype(dtype) / den.astype(dtype)
    low, high = i0 < 0, i0 >= src_len - 1  # clamped: the edge pixel alone
    frac = jnp.where(low | high, 0.0, frac)
    i0 = jnp.clip(i0, 0, src_len - 1)
    i1 = jnp.minimum(i0 + 1, src_len - 1)
    return i0, i1, 1.0 - frac, frac


def crop_taps(
    start: jax.Array,
    stop: jax.Array,
    extent: jax.Array,
    canvas: int,
    out_size: int = CROP_SIZE,
    dtype=jnp.float32,
):
    """Bilinear taps resizing window [start, stop) of one canvas axis to out_size samples.

    Returns:
      (g0, g1 int32 [out_size] canvas indices (clipped into the canvas), w0, w1 dtype
      [out_size]); taps on window pixels outside [0, extent) (the image) have weight 0 (read 0).
    """
    n = stop - start
    i0, i1, w0, w1 = _bilinear_taps(out_size, n, out_size, dtype)
    g0, g1 = start + i0, start + i1  # canvas indices
    w0 = jnp.where((g0 >= 0) & (g0 < extent), w0, 0.0)
    w1 = jnp.where((g1 >= 0) & (g1 < extent), w1, 0.0)
    return jnp.clip(g0, 0, canvas - 1), jnp.clip(g1, 0, canvas - 1), w0, w1


def paste_taps(
    start: jax.Array,
    stop: jax.Array,
    extent: jax.Array,
    canvas: int,
    in_size: int = CROP_SIZE,
    dtype=jnp.float32,
):
    """Bilinear taps resizing in_size crop samples back onto window [start, stop) of a canvas axis.

    Returns:
      (i0, i1 int32 [canvas] crop indices, w0, w1 dtype [canvas] (0 off the window and off the
      image), covered bool [canvas]: inside the window and the image).
    """
    n = stop - start
    rows = jnp.arange(canvas)
    local = rows - start
    covered = (local >= 0) & (local < n) & (rows < extent)
    # the taps of every window position r = 0 .. canvas-1 (positions >= n are masked below)
    i0, i1, w0, w1 = _bilinear_taps(canvas, in_size, n, dtype)
    shift = jnp.clip(local, 0, canvas - 1)
    i0, i1 = i0[shift], i1[shift]
    w0, w1 = jnp.where(covered, w0[shift], 0.0), jnp.where(covered, w1[shift], 0.0)
    return i0, i1, w0, w1, covered


def _taps_matrix(i0, i1, w0, w1, size: int) -> jax.Array:
    """Dense [len(i0), size] interpolation matrix of two-tap weights."""
    cols = jnp.arange(size)
    return w0[:, None] * (cols == i0[:, None]) + w1[:, None] * (cols == i1[:, None])


def crop_matrix(
    start: jax.Array, stop: jax.Array, extent: jax.Array, canvas: int, out_size: int = CROP_SIZE
) -> jax.Array:
    """[out_size, canvas] weights resizing window [start, stop) of one axis to out_size samples.

    Window pixels outside [0, extent) (the image) get weight 0, i.e. read 0.
    """
    return _taps_matrix(*crop_taps(start, stop, extent, canvas, out_size), canvas)


def paste_matrix(
    start: jax.Array, stop: jax.Array, extent: jax.Array, canvas: int, in_size: int = CROP_SIZE
) -> tuple[jax.Array, jax.Array]:
    """[canvas, in_size] weights resizing in_size crop samples back onto window [start, stop).

    Returns:
      (matrix float32 [canvas, in_size], covered bool [canvas]: inside the window and the image).
    """
    i0, i1, w0, w1, covered = paste_taps(start, stop, extent, canvas, in_size)
    return _taps_matrix(i0, i1, w0, w1, in_size), covered


def _resample_matmul(x: jax.Array, rows, cols, size_in: int) -> jax.Array:
    """x [n, Hin, Win, c] -> [n, Hout, Wout, c] by dense interpolation matrices (Ry @ x @ Rx^T)."""
    ry = jax.vmap(_taps_matrix, in_axes=(0, 0, 0, 0, None))(*rows, size_in[0])  # [n, Hout, Hin]
    rx = jax.vmap(_taps_matrix, in_axes=(0, 0, 0, 0, None))(*cols, size_in[1])  # [n, Wout, Win]
    x = jnp.einsum("njh,nhwc->njwc", ry, x)
    return jnp.einsum("njwc,niw->njic", x, rx)


def _resample_gather(x: jax.Array, rows, cols, size_in) -> jax.Array:
    """The same resampling as two-tap gathers along each axis (no dense matrices)."""
    del size_in

    def axis(x, taps, ax):
        i0, i1, w0, w1 = taps  # [n, out]
        shape = [i0.shape[0], 1, 1, 1]
        shape[ax] = i0.shape[1]
        take = lambda i: jnp.take_along_axis(x, i.reshape(shape), axis=ax)  # noqa: E731
        return w0.reshape(shape) * take(i0) + w1.reshape(shape) * take(i1)

    return axis(axis(x, rows, 1), cols, 2)


RESAMPLERS = {"matmul": _resample_matmul, "gather": _resample_gather}


# --- the jitted proposal segmentation ------------------------------------------------------------
def _segment(
    apply_fn: ApplyFn,
    chunk_size: int,
    aggregate: str,
    impl: str,
    variables,
    images,
    image_hw,
    boxes,
    valid,
):
    b, canvas = images.shape[0], images.shape[1]
    k = boxes.shape[1]
    windows, ok = box_windows(boxes, valid)  # [B, K, 4], [B, K]
    n = b * k
    n_pad = -n % chunk_size
    img_index = jnp.repeat(jnp.arange(b), k)  # [B*K]
    windows = jnp.pad(windows.reshape(n, 4), ((0, n_pad), (0, 0)))
    ok = jnp.pad(ok.reshape(n), (0, n_pad))
    img_index = jnp.pad(img_index, (0, n_pad))
    hw = jnp.asarray(image_hw, jnp.int32)[img_index]  # [N, 2]
    num_chunks = (n + n_pad) // chunk_size

    # The network's precision: float32, or float64 for a float64 network (exactness checks under
    # jax_enable_x64); resampling and aggregation follow it.
    out = jax.eval_shape(
        lambda: apply_fn(variables, jnp.zeros((chunk_size, CROP_SIZE, CROP_SIZE, 3), images.dtype))
    )
    num_classes = out.shape[-1]
    dtype = jnp.promote_types(jnp.promote_types(images.dtype, out.dtype), jnp.float32)
    crop_axis = jax.vmap(functools.partial(crop_taps, dtype=dtype), in_axes=(0, 0, 0, None))
    paste_axis = jax.vmap(functools.partial(paste_taps, dtype=dtype), in_axes=(0, 0, 0, None))
    resample = RESAMPLERS[impl]

    def run_chunk(carry, xs):
        acc, count = carry
        win, good, idx, ext = xs  # [n, 4], [n], [n], [n, 2]
        img = images[idx].astype(dtype)  # [n, canvas, canvas, 3]
        rows = crop_axis(win[:, 1], win[:, 3], ext[:, 0], canvas)  # 4 x [n, S]
        cols = crop_axis(win[:, 0], win[:, 2], ext[:, 1], canvas)
        crops = resample(img, rows, cols, (canvas, canvas))  # [n, S, S, 3]
        scores = apply_fn(variables, crops).astype(dtype)  # [n, S, S, C]
        *rows, cov_y = paste_axis(win[:, 1], win[:, 3], ext[:, 0], canvas)  # 4 x [n, canvas]
        *cols, cov_x = paste_axis(win[:, 0], win[:, 2], ext[:, 1], canvas)
        rows[2], rows[3] = rows[2] * good[:, None], rows[3] * good[:, None]
        pasted = resample(scores, rows, cols, (CROP_SIZE, CROP_SIZE))  # [n, canvas, canvas, C]
        covered = (cov_y[:, :, None] & cov_x[:, None, :] & good[:, None, None]).astype(jnp.int32)
        if aggregate == "max":
            acc = acc.at[idx].max(pasted)  # pasted is 0 off the window: max against the zero map
        else:
            acc = acc.at[idx].add(pasted)
        return acc, count.at[idx].add(covered)

    def step(carry, xs):
        return jax.lax.cond(jnp.any(xs[1]), run_chunk, lambda c, _: c, carry, xs), None

    def chunked(a):
        return a.reshape((num_chunks, chunk_size) + a.shape[1:])

    acc = jnp.zeros((b, canvas, canvas, num_classes), dtype)
    count = jnp.zeros((b, canvas, canvas), jnp.int32)
    (acc, count), _ = jax.lax.scan(
        step, (acc, count), (chunked(windows), chunked(ok), chunked(img_index), chunked(hw))
    )
    if aggregate == "mean":
        acc = acc / jnp.maximum(count, 1)[..., None]
    return acc, count


def make_segment_fn(
    apply_fn: ApplyFn, chunk_size: int = 10, aggregate: str = "max", resize_impl: str = "gather"
) -> Callable:
    """The jitted proposal segmentation.

    Args:
      apply_fn: ``apply_fn(variables, crops float32 [n, 224, 224, 3]) -> scores [n, 224, 224, C]``
        (the network in eval mode).
      chunk_size: crops per network call (the B*K crops run in chunks of this size).
      aggregate: "max" (the release) or "mean".
      resize_impl: "matmul" (dense interpolation matrices: Ry @ x @ Rx^T, tensor-core friendly)
        or "gather" (the same two-tap weights applied by gathers: far fewer FLOPs, faster on CPU).
        Both compute the same numbers (to float rounding).

    Returns:
      ``segment(variables, images float32 [B, P, P, 3], image_hw int32 [B, 2], boxes float32
      [B, K, 4], valid bool [B, K]) -> (scores float32 [B, P, P, C], count int32 [B, P, P])``:
      the aggregated class scores on the canvas and how many proposals cover each pixel. ``images``
      are normalised network inputs padded to the square canvas P; ``image_hw`` is each image's
      true (H, W) (pixels beyond it count as outside the image). One compile per (B, P, K).
    """
    if aggregate not in AGGREGATIONS:
        raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if resize_impl not in RESAMPLERS:
        raise ValueError(f"resize_impl must be one of {tuple(RESAMPLERS)}, got {resize_impl!r}")
    return jax.jit(functools.partial(_segment, apply_fn, chunk_size, aggregate, resize_impl))


def make_whole_image_fn(apply_fn: ApplyFn) -> Callable:
    """The network fully convolutionally on the padded canvas (whole-image mode).

    Returns:
      ``whole(variables, images float32 [B, P, P, 3]) -> scores float32 [B, P, P, C]``; P must be
      a multiple of 32 and >= 224 (``canvas_for`` picks such a side).
    """

    def whole(variables, images):
        if images.shape[1] % 32 or images.shape[1] < CROP_SIZE:
            raise ValueError(
                f"whole-image canvas {images.shape[1]} must be a multiple of 32, >= 224"
            )
        scores = apply_fn(variables, images)
        return scores.astype(jnp.promote_types(scores.dtype, jnp.float32))

    return jax.jit(whole)


def labels_from_scores(scores: jax.Array, count: jax.Array | None = None) -> jax.Array:
    """Argmax class map [B, P, P] of scores [B, P, P, C]; pixels with count 0 are background."""
    labels = jnp.argmax(scores, -1).astype(jnp.int32)
    return labels if count is None else jnp.where(count > 0, labels, 0)


# --- host-side helpers: canvases and padding -----------------------------------------------------
def validate_canvas_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    """Sorted canvas sides; each a multiple of 32 and >= 224 (whole-image mode runs on them)."""
    sizes = tuple(sorted(int(s) for s in sizes))
    if not sizes:
        raise ValueError("config.infer.canvas_sizes is empty")
    bad = [s for s in sizes if s % 32 or s < CROP_SIZE]
    if bad:
        raise ValueError(f"config.infer.canvas_sizes {bad} must be multiples of 32 and >= 224")
    return sizes


def canvas_for(height: int, width: int, sizes: Sequence[int]) -> int:
    """The smallest canvas side in ``sizes`` holding an H x W image (the largest if none does)."""
    side = max(height, width)
    for s in sorted(sizes):
        if side <= s:
            return int(s)
    return int(max(sizes))


def pad_image(image: np.ndarray, canvas: int) -> np.ndarray:
    """Pads a normalised image [H, W, 3] at the bottom/right with 0 to [canvas, canvas, 3]."""
    h, w = image.shape[:2]
    if h > canvas or w > canvas:
        raise ValueError(f"image {w}x{h} does not fit the {canvas}x{canvas} canvas")
    out = np.zeros((canvas, canvas, image.shape[2]), np.float32)
    out[:h, :w] = image
    return out


def pad_boxes(boxes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pads boxes [n, 4] (n <= k) to [k, 4] with a valid mask [k] (extra boxes are dropped)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if len(boxes) > k:
        log.warning("%d boxes given for %d slots; keeping the first %d", len(boxes), k, k)
        boxes = boxes[:k]
    out = np.zeros((k, 4), np.float32)
    out[: len(boxes)] = boxes
    valid = np.zeros((k,), bool)
    valid[: len(boxes)] = True
    return out, valid
