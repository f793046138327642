"""Winograd F(2x2, 3x3) convolution (Lavin & Gray, "Fast Algorithms for Convolutional Neural
Networks", 2016): the 3x3, stride-1, pad-1 layers that make up ~94% of DeconvNet's FLOPs.

Each 2x2 output tile is computed from a 4x4 input tile as ``A^T [(G g G^T) * (B^T d B)] A``; the
elementwise product over channels becomes 16 independent matrix products
``[tiles, C_in] x [C_in, C_out]``, i.e. 16 multiplies per 4 outputs instead of 36 (2.25x fewer
multiply-adds). The transforms are additions only (the kernel transform also halves), so the
result equals the direct convolution up to float rounding (relative error ~1e-6 in float32,
tests/test_winograd.py). Gradients flow through the same linear maps.

When it pays (benchmarks/NOTES.md): the transforms are memory bound, so the saving shows where the
channel counts are large and the maps small (VGG blocks 3-5 and their decoder mirrors); at 224x224
with 64 channels the direct convolution is faster. On GPUs, cuDNN / cuBLAS pick their own
algorithms (Winograd included), so "auto" only turns this on for the CPU backend.
``use_winograd`` encodes that rule.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLS = ("direct", "winograd", "auto")
# Use Winograd for a layer when its input has at least this many channels ("auto" mode).
AUTO_MIN_CHANNELS = 256


def _bt(r0, r1, r2, r3):
    """B^T d for B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]."""
    return (r0 - r2, r1 + r2, r2 - r1, r1 - r3)


def _g(g0, g1, g2):
    """G g for G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]."""
    s = 0.5 * (g0 + g2)
    return (g0, s + 0.5 * g1, s - 0.5 * g1, g2)


def _at(m0, m1, m2, m3):
    """A^T m for A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]."""
    return (m0 + m1 + m2, m1 - m2 - m3)


def kernel_transform(kernel: jax.Array) -> jax.Array:
    """[3, 3, C, O] (HWIO, correlation) -> [16, C, O] = G g G^T per (C, O)."""
    rows = _g(kernel[0], kernel[1], kernel[2])  # 4 x [3, C, O]
    return jnp.stack([u for r in rows for u in _g(r[0], r[1], r[2])])


def _tiles(h: int, w: int) -> tuple[int, int]:
    """Number of 2x2 output tiles along H and W (odd sides get one padded row / column)."""
    return (h + 1) // 2, (w + 1) // 2


def input_transform(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [16, B * th * tw, C]: B^T d B for every overlapping 4x4 tile (stride 2)
    of the input padded by 1 (and by one more row / column where H / W is odd)."""
    b, h, w, c = x.shape
    th, tw = _tiles(h, w)
    xp = jnp.pad(x, ((0, 0), (1, 1 + 2 * th - h), (1, 1 + 2 * tw - w), (0, 0)))
    rows = _bt(*[xp[:, i : i + 2 * th : 2] for i in range(4)])  # 4 x [B, th, W + 2, C]
    tiles = [v for r in rows for v in _bt(*[r[:, :, j : j + 2 * tw : 2] for j in range(4)])]
    return jnp.stack(tiles).reshape(16, b * th * tw, c)


def output_transform(m: jax.Array, b: int, h: int, w: int) -> jax.Array:
    """[16, B * th * tw, O] -> [B, H, W, O]: A^T m A per tile, tiles put back in place."""
    th, tw = _tiles(h, w)
    m = m.reshape(4, 4, b, th, tw, m.shape[-1])
    rows = _at(m[0], m[1], m[2], m[3])  # 2 x [4, B, th, tw, O]
    y = jnp.stack([jnp.stack(_at(r[0], r[1], r[2], r[3]), -2) for r in rows], 2)
    return y.reshape(b, 2 * th, 2 * tw, -1)[:, :h, :w]  # y was [B, th, 2, tw, 2, O]


def conv3x3_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Correlation of x [B, H, W, C] with kernel [3, 3, C, O], stride 1, padding 1 (no bias).

    Equals ``lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), ("NHWC", "HWIO",
    "NHWC"))`` up to rounding.
    """
    if kernel.shape[:2] != (3, 3) or kernel.shape[2] != x.shape[-1]:
        raise ValueError(
            f"winograd conv3x3_same needs a [3, 3, {x.shape[-1]}, O] kernel, got {kernel.shape}"
        )
    b, h, w, _ = x.shape
    m = jnp.einsum("tni,tio->tno", input_transform(x), kernel_transform(kernel))
    return output_transform(m, b, h, w)


def use_winograd(impl: str, kernel_size: int, padding, in_channels: int) -> bool:
    """Whether a stride-1 layer runs as Winograd under ``conv_impl`` = impl.

    impl: "direct" (never), "winograd" (every 3x3 pad-1 layer), "auto" (on the CPU backend, 3x3
    pad-1 layers with at least AUTO_MIN_CHANNELS input channels; elsewhere never).
    """
    if impl not in IMPLS:
        raise ValueError(f"conv_impl must be one of {IMPLS}, got {impl!r}")
    if impl == "direct" or kernel_size != 3 or padding not in (1, ((1, 1), (1, 1))):
        return False
    if impl == "winograd":
        return True
    return jax.default_backend() == "cpu" and in_channels >= AUTO_MIN_CHANNELS
