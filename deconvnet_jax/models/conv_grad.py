"""Stride-1 3x3 correlation with a custom VJP: the kernel gradient as matrix products on CPU.

XLA:CPU computes the kernel gradient of a convolution as another convolution whose "kernel" is the
whole output gradient (224x224 at conv1_x), a shape its CPU convolution is slow at: issue 16
measured 792 ms against 49 ms for the forward on a Zen 3 machine. Written as matrix products the
same gradient is

    dK[a, b, i, o] = sum_{n, h, w} xpad[n, h + a, w + b, i] * g[n, h, w, o]

- "patches": im2col of the padded input in chunks of output rows (each chunk's patches
  [rows * W * B, 9 * C] stay under PATCH_CHUNK_BYTES), one [9C, rows*W*B] x [rows*W*B, O] matrix
  product per chunk, summed;
- "shifted": nine matrix products, one per kernel tap, over the shifted input;
- "xla": jax's own gradient (no custom VJP).

The input gradient is XLA's transposed convolution in every mode (``jax.vjp`` of the forward);
the forward is ``lax.conv_general_dilated`` unchanged. "auto" picks per backend (``resolve``):
the patches form on CPU, XLA's elsewhere (cuDNN / TPU convolutions have fast weight gradients).
Measured figures are in benchmarks/NOTES.md ("3x3 kernel gradient").
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

IMPLS = ("auto", "xla", "patches", "shifted")
PATCH_CHUNK_BYTES = 64 * 2**20  # bound on one chunk's im2col patches
_DN = ("NHWC", "HWIO", "NHWC")

Padding = tuple[tuple[int, int], tuple[int, int]]


def resolve(impl: str) -> str:
    """The implementation ``impl`` runs as ("auto" -> "xla": measured on a 2-core Zen 5, the
    patches kernel gradient wins 2.5x at 112x112x128 natively but loses 2.6x under the AVX2 limit
    at 224x224x64, so it stays opt-in until a per-shape rule is measured); raises ValueError for
    an unknown name."""
    if impl not in IMPLS:
        raise ValueError(f"conv_grad_impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "xla"
    return impl


def explicit_padding(padding, kernel_size: int) -> Padding | None:
    """((top, bottom), (left, right)) of a stride-1 layer's padding ("SAME", "VALID", an int or
    pairs); None when it cannot be written so (an unknown string)."""
    if isinstance(padding, str):
        if padding == "VALID":
            return ((0, 0), (0, 0))
        if padding == "SAME":
            lo, hi = (kernel_size - 1) // 2, kernel_size // 2
            return ((lo, hi), (lo, hi))
        return None
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    (top, bottom), (left, right) = padding
    return ((int(top), int(bottom)), (int(left), int(right)))


def conv3x3(x: jax.Array, kernel: jax.Array, padding: Padding, impl: str = "auto") -> jax.Array:
    """Correlation of x [B, H, W, C] with kernel [3, 3, C, O], stride 1, explicit padding.

    Forward and input gradient are XLA's; the kernel gradient follows ``impl`` (see module doc).
    """
    impl = resolve(impl)
    padding = tuple(tuple(int(v) for v in p) for p in padding)
    if impl == "xla":
        return _forward(x, kernel, padding)
    return _conv_fast_grad(x, kernel, padding, impl)


def _forward(x, kernel, padding):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_DN)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_fast_grad(x, kernel, padding, impl):
    return _forward(x, kernel, padding)


def _fwd(x, kernel, padding, impl):
    return _forward(x, kernel, padding), (x, kernel)


def _bwd(padding, impl, res, g):
    x, kernel = res
    _, vjp_x = jax.vjp(lambda x_: _forward(x_, kernel, padding), x)
    (dx,) = vjp_x(g)
    grad = kernel_grad_patches if impl == "patches" else kernel_grad_shifted
    return dx, grad(x, g, padding, kernel.shape[0], kernel.shape[1]).astype(kernel.dtype)


_conv_fast_grad.defvjp(_fwd, _bwd)


def _pad(x: jax.Array, padding: Padding) -> jax.Array:
    return jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))


def kernel_grad_shifted(x, g, padding: Padding, kh: int = 3, kw: int = 3) -> jax.Array:
    """dK [kh, kw, C, O] of the correlation as one [C, N] x [N, O] product per tap."""
    xp, (_, h, w, _) = _pad(x, padding), g.shape
    taps = [
        [jnp.einsum("bhwi,bhwo->io", xp[:, a : a + h, b : b + w], g) for b in range(kw)]
        for a in range(kh)
    ]
    return jnp.stack([jnp.stack(row) for row in taps])


def kernel_grad_patches(x, g, padding: Padding, kh: int = 3, kw: int = 3) -> jax.Array:
    """dK [kh, kw, C, O] of the correlation as im2col matrix products over chunks of output rows.

    The patches of a chunk are built channel-major ([kh*kw*C, B, rows, W]) so the product
    contracts the minor dimension of both operands' natural layouts.
    """
    (bsz, h, w, o), c = g.shape, x.shape[-1]
    xt = jnp.transpose(_pad(x, padding), (3, 0, 1, 2))  # [C, B, H + pt + pb, W + pl + pr]
    rows = max(1, min(h, PATCH_CHUNK_BYTES // max(1, kh * kw * c * bsz * w * x.dtype.itemsize)))
    acc = jnp.zeros((kh * kw * c, o), jnp.promote_types(x.dtype, g.dtype))
    for r in range(0, h, rows):
        n = min(rows, h - r)
        taps = [xt[:, :, r + a : r + a + n, b : b + w] for a in range(kh) for b in range(kw)]
        patches = jnp.concatenate(taps, 0).reshape(kh * kw * c, -1)  # [9C, B * n * W]
        gt = g[:, r : r + n].reshape(-1, o)  # [B * n * W, O]
        acc = acc + patches @ gt
    return acc.reshape(kh, kw, c, o)
