"""The 3x3 kernel gradient written as matrix products in several ways, against XLA's and torch's.

benchmarks/NOTES.md change 12: whether any pure-JAX matrix-product form of
dK[a, b, i, o] = sum_{n,h,w} xpad[n, h + a, w + b, i] g[n, h, w, o] beats XLA:CPU's own kernel
gradient (it does not, by more than 18% at one shape under AVX2). Batch 2, SAME padding,
float32, median of 5 after one warm-up; every form is checked against XLA's to 1e-4 first.

  python benchmarks/bench_kernel_grad_forms.py [forms, comma-separated]
  XLA_FLAGS=--xla_cpu_max_isa=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 \\
      python benchmarks/bench_kernel_grad_forms.py xla,patches,rows
"""

from __future__ import annotations

import sys

import common
import jax
import jax.numpy as jnp
import numpy as np

from deconvnet_jax.models import conv_grad

PAD = ((1, 1), (1, 1))
SHAPES = [(224, 64, 64), (112, 128, 128), (56, 256, 256), (28, 512, 512)]


def _pad(x):
    return jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))


def xla(x, k, g):
    return jax.vjp(lambda k: conv_grad.conv3x3(x, k, PAD, "xla"), k)[1](g)[0]


def patches(x, k, g):
    return conv_grad.kernel_grad_patches(x, g, PAD)


def rows3(x, k, g, blocks=1):
    """Three b-shifted copies side by side [B, H+2, W, 3C]; one product per kernel row a."""
    b, h, w, c = x.shape
    x3 = jnp.concatenate([_pad(x)[:, :, j : j + w] for j in range(3)], -1)
    n = b * h * w
    out = [
        jnp.einsum(
            "pmk,pmo->ko",
            x3[:, a : a + h].reshape(blocks, n // blocks, 3 * c),
            g.reshape(blocks, n // blocks, -1),
        )
        for a in range(3)
    ]
    return jnp.stack(out).reshape(3, 3, c, -1)


def patches9(x, k, g, blocks=8, transposed=False):
    """Full [N, 9C] patches as a batched product over `blocks` blocks of N, summed."""
    b, h, w, c = x.shape
    xp = _pad(x)
    x9 = jnp.concatenate([xp[:, i : i + h, j : j + w] for i in range(3) for j in range(3)], -1)
    n, o = b * h * w, g.shape[-1]
    x9, gb = x9.reshape(blocks, n // blocks, 9 * c), g.reshape(blocks, n // blocks, o)
    if transposed:
        return jnp.einsum("pmo,pmk->ok", gb, x9).T.reshape(3, 3, c, o)
    return jnp.einsum("pmk,pmo->ko", x9, gb).reshape(3, 3, c, o)


def row_loop(x, k, g):
    """fori_loop over output rows: one [9C, B W] x [B W, O] product per row."""
    b, h, w, c = x.shape
    o = g.shape[-1]
    x3 = jnp.moveaxis(jnp.concatenate([_pad(x)[:, :, j : j + w] for j in range(3)], -1), 1, 0)
    gt = jnp.moveaxis(g, 1, 0)

    def body(r, acc):
        window = jnp.moveaxis(jax.lax.dynamic_slice_in_dim(x3, r, 3, 0), 0, 2)
        return acc + window.reshape(b * w, 9 * c).T @ gt[r].reshape(b * w, o)

    return jax.lax.fori_loop(0, h, body, jnp.zeros((9 * c, o), x.dtype)).reshape(3, 3, c, o)


FORMS = {
    "xla": xla,
    "patches": patches,
    "rows3": rows3,
    "rows3_8": lambda x, k, g: rows3(x, k, g, 8),
    "patches9_8": patches9,
    "patches9_32": lambda x, k, g: patches9(x, k, g, 32),
    "patches9_t8": lambda x, k, g: patches9(x, k, g, 8, True),
    "row_loop": row_loop,
}


def main() -> None:
    names = sys.argv[1].split(",") if len(sys.argv) > 1 else list(FORMS)
    print(f"{common.cpu_model()}, ISA: {common.isa_limit()}")
    rng = np.random.default_rng(0)
    for side, cin, cout in SHAPES:
        x = jnp.asarray(rng.standard_normal((2, side, side, cin)), jnp.float32)
        k = jnp.asarray(rng.standard_normal((3, 3, cin, cout)) * 0.05, jnp.float32)
        g = jnp.asarray(rng.standard_normal((2, side, side, cout)), jnp.float32)
        ref = jax.jit(xla)(x, k, g)
        row = [f"{side}x{side}x{cin}->{cout}:"]
        for name in names:
            f = jax.jit(FORMS[name])
            err = float(jnp.max(jnp.abs(f(x, k, g) - ref)) / jnp.max(jnp.abs(ref)))
            assert err < 1e-4, (name, err)
            ms = 1e3 * common.median_time(lambda f=f: f(x, k, g).block_until_ready(), 5)[0]
            row.append(f"{name} {ms:.0f} ms")
        try:
            import torch

            xt = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous()
            gt = torch.from_numpy(np.array(g)).permute(0, 3, 1, 2).contiguous()
            shape = (cout, cin, 3, 3)
            ms = (
                1e3
                * common.median_time(
                    lambda: torch.nn.grad.conv2d_weight(xt, shape, gt, padding=1), 5
                )[0]
            )
            row.append(f"torch {ms:.0f} ms")
        except ImportError:
            pass
        print(" ".join(row), flush=True)


if __name__ == "__main__":
    main()
