"""Inference throughput: the JAX DeconvNet vs the PyTorch reference, same batch, size, precision.

Both run the full network in eval mode (running BN statistics) on the same random weights
(copied through deconvnet_jax.interop) and the same input; the outputs are checked to agree.
Times are medians of repeated calls after warm-up, with the device synchronised.

  python benchmarks/bench_infer.py --batch 4 --out benchmarks/results/infer_cpu.json
  python benchmarks/bench_infer.py --batch 64 --dtype bfloat16 --torch_compile   # on a GPU
"""

from __future__ import annotations

import argparse
import time

import common  # noqa: F401  (puts the repo root on sys.path)
import jax
import jax.numpy as jnp
import numpy as np

from deconvnet_jax.models.deconvnet import DeconvNet


def run_jax(args, variables, x_nhwc, conv_impl: str):
    model = DeconvNet(width_multiplier=args.width, dtype=jnp.dtype(args.dtype), conv_impl=conv_impl)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    x = jax.device_put(jnp.asarray(x_nhwc))
    t0 = time.perf_counter()
    out = apply(variables, x).block_until_ready()
    compile_s = time.perf_counter() - t0
    med, times = common.median_time(lambda: apply(variables, x).block_until_ready(), args.repeats)
    return np.asarray(out), med, times, compile_s


def run_torch(args, state_dict, x_nhwc, compiled: bool):
    import torch

    from deconvnet_jax.torch.reference import DeconvNetTorch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = DeconvNetTorch(width_multiplier=args.width).to(device).eval()
    model.load_flat({k: np.array(v) for k, v in state_dict.items()})
    x = torch.as_tensor(x_nhwc).permute(0, 3, 1, 2).contiguous().to(device)
    if device == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    fn = torch.compile(model) if compiled else model
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    def call():
        with torch.inference_mode(), autocast:
            y = fn(x)
        if device == "cuda":
            torch.cuda.synchronize()
        return y

    t0 = time.perf_counter()
    out = call()
    compile_s = time.perf_counter() - t0
    med, times = common.median_time(call, args.repeats)
    return out.float().permute(0, 2, 3, 1).cpu().numpy(), med, times, compile_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    common.add_network_args(parser, batch=4)
    args = parser.parse_args()

    from deconvnet_jax.torch.weights import to_torch_state_dict

    model = DeconvNet(width_multiplier=args.width)
    x = (
        np.random.default_rng(0)
        .standard_normal((args.batch, args.size, args.size, 3))
        .astype(np.float32)
    )
    t0 = time.perf_counter()
    variables = jax.jit(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, args.size, args.size, 3)))
    )()
    jax.block_until_ready(variables)
    init_s = time.perf_counter() - t0
    state_dict = to_torch_state_dict(variables)

    flops = common.deconvnet_forward_flops(args.size, args.size, args.width) * args.batch
    rows, outs = {}, {}
    for name, impl in common.jax_row_names(args.conv_impls):
        outs[name], med, times, comp = run_jax(args, variables, x, impl)
        rows[name] = dict(conv_impl=impl, step_s=med, times_s=times, compile_s=comp, init_s=init_s)
    out_t, med, times, comp = run_torch(args, state_dict, x, compiled=False)
    rows["torch_eager"] = dict(step_s=med, times_s=times)
    if args.torch_compile:
        _, med, times, comp = run_torch(args, state_dict, x, compiled=True)
        rows["torch_compile"] = dict(step_s=med, times_s=times, compile_s=comp)
    rel_err = max(
        float(np.abs(o - out_t).max() / (np.abs(out_t).max() + 1e-12)) for o in outs.values()
    )

    peak = args.peak_tflops or common.measured_matmul_tflops(args.dtype)
    ratios = common.add_rates(rows, args.batch, flops, peak)
    result = common.network_result(
        args,
        "inference (eval mode), full network",
        peak,
        gflop_per_image=flops / args.batch / 1e9,
        results=rows,
        ratios=ratios,
        output_rel_err_jax_vs_torch=rel_err,
    )
    common.print_table(
        f"batch {args.batch} {args.size}x{args.size} width {args.width} {args.dtype}", rows, ratios
    )
    print(
        f"JAX compile {rows['jax']['compile_s']:.1f}s, init {init_s:.1f}s, "
        f"output rel err {rel_err:.2e}"
    )
    common.write_json(args.out, result)


if __name__ == "__main__":
    main()
