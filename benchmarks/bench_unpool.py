"""Unpooling formulations, forward + backward, at DeconvNet's five unpooling shapes.

Times `max_unpool` (impl "scatter" and "window") under jit, forward and forward+backward, summed
over the five decoder stages at full width, and torch's max_unpool2d doing the same work (NCHW) in
the same
run. Writes a JSON result.

  python benchmarks/bench_unpool.py --batch 2 --out benchmarks/results/unpool_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, ".")
from deconvnet_jax.models.pooling import UNPOOL_IMPLS, max_pool_with_switches, max_unpool  # noqa: E402

# (pre-pool side, channels) of pool1 .. pool5 at 224 input, full width.
STAGES = [(224, 64), (112, 128), (56, 256), (28, 512), (14, 512)]


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up (compile)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench_jax(batch: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    results = {}
    for impl in UNPOOL_IMPLS:
        fwd_total = bwd_total = 0.0
        for side, ch in STAGES:
            x = jnp.asarray(rng.standard_normal((batch, side, side, ch)), jnp.float32)
            pooled, switches = jax.jit(max_pool_with_switches)(x)
            g = jnp.asarray(rng.standard_normal((batch, side, side, ch)), jnp.float32)
            fwd = jax.jit(
                lambda p, s, impl=impl, side=side: max_unpool(p, s, (side, side), impl=impl)
            )
            # value_and_grad: the forward result must be computed (in the network it feeds
            # the next deconv), so XLA cannot drop the scatter.
            fwd_bwd = jax.jit(
                jax.value_and_grad(
                    lambda p, s, impl=impl, side=side: jnp.sum(
                        max_unpool(p, s, (side, side), impl=impl) * g
                    )
                )
            )
            fwd_total += _median_time(lambda: fwd(pooled, switches).block_until_ready(), repeats)
            bwd_total += _median_time(
                lambda: jax.block_until_ready(fwd_bwd(pooled, switches)), repeats
            )
        results[impl] = {"forward_s": fwd_total, "forward_backward_s": bwd_total}
    return results


def bench_torch(batch: int, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F

    fwd_total = bwd_total = 0.0
    for side, ch in STAGES:
        x = torch.randn(batch, ch, side, side)
        p, i = F.max_pool2d(x, 2, 2, return_indices=True)
        g = torch.randn(batch, ch, side, side)
        fwd_total += _median_time(
            lambda: F.max_unpool2d(p, i, 2, 2, output_size=(side, side)), repeats
        )

        def fb():
            pr = p.detach().requires_grad_(True)
            loss = (F.max_unpool2d(pr, i, 2, 2, output_size=(side, side)) * g).sum()
            loss.backward()
            return loss.item()

        bwd_total += _median_time(fb, repeats)
    return {"forward_s": fwd_total, "forward_backward_s": bwd_total, "version": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    jax_res = bench_jax(args.batch, args.repeats)
    torch_res = bench_torch(args.batch, args.repeats)
    fastest = min(jax_res, key=lambda k: jax_res[k]["forward_backward_s"])
    result = {
        "benchmark": "unpool forward/backward, sum over the 5 DeconvNet unpool stages (full width)",
        "device": str(jax.devices()[0].device_kind),
        "platform": platform.processor() or platform.machine(),
        "cpu_count": __import__("os").cpu_count(),
        "jax": jax.__version__,
        "batch": args.batch,
        "command": " ".join(sys.argv),
        "jax_impls": jax_res,
        "torch_max_unpool2d": torch_res,
        "fastest_jax_impl": fastest,
    }
    print(f"{'impl':<10}{'fwd ms':>10}{'fwd+bwd ms':>12}")
    for name, r in list(jax_res.items()) + [("torch", torch_res)]:
        print(f"{name:<10}{1e3 * r['forward_s']:>10.2f}{1e3 * r['forward_backward_s']:>12.2f}")
    print(f"fastest JAX formulation: {fastest}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
