"""Max pooling that records argmax switches, and the max-unpooling that consumes them.

Conventions (the same as Caffe and PyTorch, see PAPER.md "Pooling switches"):
  * layout NHWC; a switch is the flat index ``h * W + w`` of the maximum inside the
    (image, channel) input plane of size ``H x W``;
  * ties go to the FIRST maximum in row-major order of the window;
  * pooling uses floor mode (PyTorch's default); unpooling always takes the output size,
    so odd sizes round-trip (7x7 -> 3x3 -> 7x7, the dropped row/column stays zero).

Two bit-identical unpooling formulations are provided:
  * ``"scatter"``: a scatter of every value to its switch in a zero plane, with a custom
    VJP whose backward pass is a gather. Works for any switches.
  * ``"window"``: no scatter. Each value is compared against the position of every cell of
    its own pooling window and written there when the switch matches; this is pure
    elementwise work plus a reshape. Valid only for switches produced by a
    non-overlapping pooling (window == stride) of the same geometry, which is what
    DeconvNet uses.
``max_unpool`` picks ``DEFAULT_UNPOOL`` (chosen by ``benchmarks/bench_unpool.py``).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

# Chosen by benchmarks/bench_unpool.py (forward+backward, CPU): see benchmarks/NOTES.md.
DEFAULT_UNPOOL = "window"
UNPOOL_IMPLS = ("scatter", "window")


def _pool_out_size(size: int, window: int, stride: int) -> int:
    if size < window:
        raise ValueError(f"pooling window {window} is larger than the input side {size}")
    return (size - window) // stride + 1


def _window_stack(x: jax.Array, window: int, stride: int) -> jax.Array:
    """[B, H, W, C] -> [B, Ho, Wo, window*window, C], window cells in row-major order."""
    _, h, w, _ = x.shape
    ho, wo = _pool_out_size(h, window, stride), _pool_out_size(w, window, stride)
    cells = []
    for dy in range(window):
        for dx in range(window):
            cells.append(
                x[
                    :,
                    dy : dy + stride * (ho - 1) + 1 : stride,
                    dx : dx + stride * (wo - 1) + 1 : stride,
                    :,
                ]
            )
    return jnp.stack(cells, axis=3)


def max_pool_with_switches(
    x: jax.Array, window: int = 2, stride: int = 2
) -> tuple[jax.Array, jax.Array]:
    """Max pooling that also returns the argmax switches.

    Args:
      x: [B, H, W, C] input.
      window: square pooling window side.
      stride: pooling stride.

    Returns:
      (pooled [B, Ho, Wo, C], switches [B, Ho, Wo, C] int32) where a switch is the flat
      index ``h * W + w`` of the max in its input plane; ties go to the first maximum.
    """
    if x.ndim != 4:
        raise ValueError(f"max_pool_with_switches expects [B, H, W, C], got shape {x.shape}")
    _, h, w, _ = x.shape
    stacked = _window_stack(x, window, stride)  # [B, Ho, Wo, K, C]
    ho, wo = stacked.shape[1], stacked.shape[2]
    k = jnp.argmax(stacked, axis=3)  # first maximum wins (row-major within the window)
    pooled = jnp.take_along_axis(stacked, k[:, :, :, None, :], axis=3)[:, :, :, 0, :]
    dy, dx = k // window, k % window
    rows = (jnp.arange(ho, dtype=jnp.int32) * stride)[None, :, None, None] + dy.astype(jnp.int32)
    cols = (jnp.arange(wo, dtype=jnp.int32) * stride)[None, None, :, None] + dx.astype(jnp.int32)
    switches = rows * w + cols
    return pooled, switches.astype(jnp.int32)


# ----------------------------------------------------------------------------- scatter


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _unpool_scatter(x: jax.Array, switches: jax.Array, output_hw: tuple[int, int]) -> jax.Array:
    b, h, w, c = x.shape
    oh, ow = output_hw
    xf = jnp.transpose(x, (0, 3, 1, 2)).reshape(b, c, h * w)  # [B, C, h*w]
    sf = jnp.transpose(switches, (0, 3, 1, 2)).reshape(b, c, h * w)
    bi = jnp.arange(b)[:, None, None]
    ci = jnp.arange(c)[None, :, None]
    out = jnp.zeros((b, c, oh * ow), x.dtype).at[bi, ci, sf].set(xf, mode="drop")
    return jnp.transpose(out.reshape(b, c, oh, ow), (0, 2, 3, 1))


def _unpool_scatter_fwd(x, switches, output_hw):
    return _unpool_scatter(x, switches, output_hw), switches


def _unpool_scatter_bwd(output_hw, switches, g):
    # The adjoint of a scatter is a gather at the same indices.
    b, oh, ow, c = g.shape
    _, h, w, _ = switches.shape
    gf = jnp.transpose(g, (0, 3, 1, 2)).reshape(b, c, oh * ow)
    sf = jnp.transpose(switches, (0, 3, 1, 2)).reshape(b, c, h * w)
    gx = jnp.take_along_axis(gf, sf, axis=2, mode="fill", fill_value=0)
    gx = jnp.transpose(gx.reshape(b, c, h, w), (0, 2, 3, 1))
    return gx, None


_unpool_scatter.defvjp(_unpool_scatter_fwd, _unpool_scatter_bwd)


# ----------------------------------------------------------------------------- window


def _unpool_window(
    x: jax.Array, switches: jax.Array, output_hw: tuple[int, int], window: int
) -> jax.Array:
    b, h, w, c = x.shape
    oh, ow = output_hw
    if not (h * window <= oh < (h + 1) * window and w * window <= ow < (w + 1) * window):
        raise ValueError(
            f"window unpooling needs output_hw {output_hw} to match pooled size {(h, w)} "
            f"with window {window}"
        )
    # Flat index of every cell of every window: [1, h, w, K, 1]
    offs = jnp.arange(window, dtype=jnp.int32)
    rows = jnp.arange(h, dtype=jnp.int32)[:, None, None, None] * window + offs[None, None, :, None]
    cols = jnp.arange(w, dtype=jnp.int32)[None, :, None, None] * window + offs[None, None, None, :]
    cell = (rows * ow + cols).reshape(h, w, window * window)[None, :, :, :, None]
    hit = switches[:, :, :, None, :] == cell  # [B, h, w, K, C]
    vals = jnp.where(hit, x[:, :, :, None, :], jnp.zeros((), x.dtype))
    vals = vals.reshape(b, h, w, window, window, c)
    out = jnp.transpose(vals, (0, 1, 3, 2, 4, 5)).reshape(b, h * window, w * window, c)
    # Floor-mode pooling dropped trailing rows/cols: pad them back with zeros (or crop).
    pad_h, pad_w = oh - h * window, ow - w * window
    if pad_h or pad_w:
        out = jnp.pad(out, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    return out


def max_unpool(
    x: jax.Array,
    switches: jax.Array,
    output_hw: Sequence[int],
    impl: str | None = None,
    window: int = 2,
) -> jax.Array:
    """Max unpooling: writes each value at its switch index in a zero map of size output_hw.

    Args:
      x: [B, h, w, C] values (e.g. the decoder's activations at pooled resolution).
      switches: [B, h, w, C] int flat indices ``row * W + col`` into the output plane.
      output_hw: (H, W) of the output planes (the input size of the matching pooling).
      impl: "scatter" or "window" (default ``DEFAULT_UNPOOL``). "window" requires the
        switches of a non-overlapping ``window`` x ``window`` pooling with stride ``window``.
      window: pooling window side (only used by the "window" formulation).

    Returns:
      [B, H, W, C] map, zero except at the switch positions.
    """
    if x.shape != switches.shape:
        raise ValueError(f"max_unpool: values {x.shape} and switches {switches.shape} differ")
    output_hw = (int(output_hw[0]), int(output_hw[1]))
    impl = impl or DEFAULT_UNPOOL
    if impl == "scatter":
        return _unpool_scatter(x, switches.astype(jnp.int32), output_hw)
    if impl == "window":
        return _unpool_window(x, switches.astype(jnp.int32), output_hw, window)
    raise ValueError(f"unknown unpool impl {impl!r}; choose one of {UNPOOL_IMPLS}")
