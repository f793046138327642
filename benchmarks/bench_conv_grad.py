"""Kernel gradient of DeconvNet's 3x3 convolutions: XLA's against the custom VJPs of conv_grad.py.

For each distinct 3x3 layer shape of the full-width network (batch 2, 224 input: the encoder's;
the decoder's transposed layers have the same sizes mirrored), times under jit the kernel gradient
alone (`jax.vjp` of the layer w.r.t. its kernel, applied to a fixed output gradient) for
`conv_grad_impl` = xla | patches | shifted, the forward for scale, and PyTorch's
`conv2d_weight`-equivalent (`torch.nn.grad.conv2d_weight`) in the same run. Run it once natively
and once under the AVX2 limit (benchmarks/run_all.py does both):

  python benchmarks/bench_conv_grad.py --out benchmarks/results/conv_grad_cpu.json
  XLA_FLAGS=--xla_cpu_max_isa=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 \\
      python benchmarks/bench_conv_grad.py --out benchmarks/results/conv_grad_cpu_avx2.json
"""

from __future__ import annotations

import argparse

import common  # noqa: F401  (puts the repo root on sys.path)
import jax
import jax.numpy as jnp
import numpy as np

from deconvnet_jax.models import conv_grad

# (side, in channels, out channels) of the distinct 3x3 layers at 224 input, full width.
SHAPES = [
    (224, 3, 64),
    (224, 64, 64),
    (112, 64, 128),
    (112, 128, 128),
    (56, 128, 256),
    (56, 256, 256),
    (28, 256, 512),
    (28, 512, 512),
    (14, 512, 512),
]
IMPLS = ("xla", "patches", "shifted")


def time_shape(batch, side, cin, cout, repeats, rng) -> dict:
    x = jnp.asarray(rng.standard_normal((batch, side, side, cin)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, cin, cout)) * 0.05, jnp.float32)
    g = jnp.asarray(rng.standard_normal((batch, side, side, cout)), jnp.float32)
    pad = ((1, 1), (1, 1))
    row = {"side": side, "cin": cin, "cout": cout}
    fwd = jax.jit(lambda x, k: conv_grad.conv3x3(x, k, pad, "xla"))
    row["forward_ms"] = 1e3 * common.median_time(lambda: fwd(x, k).block_until_ready(), repeats)[0]
    for impl in IMPLS:

        def kgrad(x, k, g, impl=impl):
            return jax.vjp(lambda k: conv_grad.conv3x3(x, k, pad, impl), k)[1](g)[0]

        f = jax.jit(kgrad)
        row[f"{impl}_ms"] = (
            1e3 * common.median_time(lambda f=f: f(x, k, g).block_until_ready(), repeats)[0]
        )
    try:
        import torch

        xt = torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2).contiguous()
        gt = torch.from_numpy(np.asarray(g)).permute(0, 3, 1, 2).contiguous()

        def torch_kgrad():
            with torch.no_grad():
                torch.nn.grad.conv2d_weight(xt, (cout, cin, 3, 3), gt, padding=1)

        row["torch_ms"] = 1e3 * common.median_time(torch_kgrad, repeats)[0]
    except ImportError:
        pass
    row["fastest"] = min(IMPLS, key=lambda i: row[f"{i}_ms"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max_side", type=int, default=224, help="skip larger layers (quick runs)")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    print(f"{'layer':<16}" + "".join(f"{c:>10}" for c in ("fwd", *IMPLS, "torch")) + "  fastest")
    for side, cin, cout in SHAPES:
        if side > args.max_side:
            continue
        r = time_shape(args.batch, side, cin, cout, args.repeats, rng)
        rows.append(r)
        cells = [r["forward_ms"], *(r[f"{i}_ms"] for i in IMPLS), r.get("torch_ms", float("nan"))]
        print(
            f"{side}x{cin}->{cout:<8}" + "".join(f"{c:>10.1f}" for c in cells) + f"  {r['fastest']}"
        )
    totals = {i: sum(r[f"{i}_ms"] for r in rows) for i in IMPLS}
    best = sum(min(r[f"{i}_ms"] for i in IMPLS) for r in rows)
    print("sum over shapes (ms): " + ", ".join(f"{i} {v:.0f}" for i, v in totals.items()))
    print(f"best per shape: {best:.0f} ms")
    result = {
        "benchmark": "3x3 kernel gradient per layer shape (ms, median, jit)",
        "batch": args.batch,
        "rows": rows,
        "sum_ms": totals,
        "best_per_shape_sum_ms": best,
        "env": common.environment(),
    }
    common.write_json(args.out, result)


if __name__ == "__main__":
    main()
