"""Training-step throughput: the JAX DeconvNet vs the PyTorch reference, same batch/size/precision.

Both do one full training step: forward in train mode (batch-statistics BN), pixel softmax
cross-entropy ignoring 255 averaged over valid pixels, backward, SGD momentum 0.9 with weight decay
5e-4 on kernels. Same random weights (copied through deconvnet_jax.interop) and the same batch.
Times are medians of repeated steps after warm-up, device synchronised. On a GPU both use bf16
(JAX: bf16 compute with f32 params; PyTorch: bf16 autocast + channels_last).

  python benchmarks/bench_train.py --batch 2 --out benchmarks/results/train_cpu.json
  python benchmarks/bench_train.py --batch 32 --dtype bfloat16 --torch_compile --max_batch \
      --peak_tflops 798 --out benchmarks/results/train_h100.json      # on a GPU
"""

from __future__ import annotations

import argparse
import functools
import time

import common  # noqa: F401  (puts the repo root on sys.path)
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from deconvnet_jax import optim, train_lib
from deconvnet_jax.models.deconvnet import DeconvNet


def _optim_config(lr: float = 1e-3) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            name="sgd",
            lr=lr,
            momentum=0.9,
            momentum_style="optax",  # lr outside the velocity, as torch.optim.SGD
            weight_decay=5e-4,
            bn_weight_decay=False,  # the PyTorch side decays kernels only
            bias_lr_mult=1.0,
            schedule="constant",
            decay_steps=(),
            gamma=0.1,
            accum_steps=1,
            clip_norm=0.0,
        )
    )


def _batch(batch: int, size: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 21, (batch, size, size)).astype(np.int32)
    label[:, : size // 10] = 255
    return {"image": rng.standard_normal((batch, size, size, 3)).astype(np.float32), "label": label}


def jax_setup(args, batch: int, conv_impl: str = "auto"):
    """(step fn, state, device batch, init seconds)."""
    model = DeconvNet(
        width_multiplier=args.width,
        dtype=jnp.dtype(args.dtype),
        remat=args.remat,
        unpool_impl=args.unpool or None,
        conv_impl=conv_impl,
    )
    shape = (1, args.size, args.size, 3)
    tx = optim.make_optimizer(_optim_config())
    init = jax.jit(functools.partial(train_lib.create_train_state, model, tx, 0, shape))
    t0 = time.perf_counter()
    state = jax.block_until_ready(init())
    init_s = time.perf_counter() - t0
    step = jax.jit(train_lib.make_train_step(model, tx), donate_argnums=(0,))
    data = jax.device_put(_batch(batch, args.size))
    return step, state, data, init_s


def run_jax(args, conv_impl: str) -> dict:
    step, state, data, init_s = jax_setup(args, args.batch, conv_impl)
    t0 = time.perf_counter()
    compiled = step.lower(state, data).compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def one():
        holder["state"], m = compiled(holder["state"], data)
        return jax.block_until_ready(m)["loss"]

    first_loss = float(one())
    med, times = common.median_time(one, args.repeats)
    mem = compiled.memory_analysis()
    out = dict(
        conv_impl=conv_impl,
        step_s=med,
        times_s=times,
        compile_s=compile_s,
        init_s=init_s,
        first_loss=first_loss,
    )
    if mem is not None:
        out["temp_bytes"] = int(mem.temp_size_in_bytes)
        out["argument_bytes"] = int(mem.argument_size_in_bytes)
    return out


def jax_memory(args) -> dict:
    """Compiled train-step memory (XLA's memory_analysis, no run) with and without remat.

    Skipped on CPU: XLA:CPU reports the same temp bytes with and without jax.checkpoint, even for
    a toy chain of checkpointed matmuls (benchmarks/NOTES.md), so it is no measure of peak memory.
    """
    if jax.default_backend() == "cpu":
        return {"skipped": "XLA:CPU memory_analysis does not reflect liveness/remat"}
    out = {}
    for remat in (False, True):
        a = argparse.Namespace(**{**vars(args), "remat": remat})
        step, state, data, _ = jax_setup(a, args.batch)
        mem = step.lower(state, data).compile().memory_analysis()
        if mem is None:
            return {}
        key = "remat" if remat else "no_remat"
        out[key] = {
            "temp_bytes": int(mem.temp_size_in_bytes),
            "argument_bytes": int(mem.argument_size_in_bytes),
            "temp_bytes_per_image": int(mem.temp_size_in_bytes) / args.batch,
        }
        del step, state, data
    return out


def _torch_model(args, state_dict):
    import torch

    from deconvnet_jax.torch.reference import DeconvNetTorch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = DeconvNetTorch(width_multiplier=args.width).to(device).train()
    if state_dict is not None:
        model.load_flat({k: np.array(v) for k, v in state_dict.items()})
    if device == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model, device


def torch_step_fn(args, model, device, batch: int, compiled: bool):
    import torch

    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and "_bn" not in n]
    rest = [p for n, p in model.named_parameters() if not (n.endswith("weight") and "_bn" not in n)]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": rest, "weight_decay": 0}],
        lr=1e-3,
        momentum=0.9,
    )
    data = _batch(batch, args.size)
    x = torch.as_tensor(data["image"]).permute(0, 3, 1, 2).contiguous().to(device)
    y = torch.as_tensor(data["label"]).long().to(device)
    if device == "cuda":
        x = x.to(memory_format=torch.channels_last)
    fwd = torch.compile(model) if compiled else model
    bf16 = args.dtype == "bfloat16"

    def one():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            logits = fwd(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y, ignore_index=255)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return loss.item()

    return one


def run_torch(args, state_dict, compiled: bool) -> dict:
    model, device = _torch_model(args, state_dict)
    one = torch_step_fn(args, model, device, args.batch, compiled)
    t0 = time.perf_counter()
    first_loss = one()
    compile_s = time.perf_counter() - t0
    med, times = common.median_time(one, args.repeats)
    return dict(step_s=med, times_s=times, first_step_s=compile_s, first_loss=first_loss)


def _fits(try_step) -> bool:
    try:
        try_step()
        return True
    except Exception as e:  # noqa: BLE001  (XLA / CUDA raise various OOM types)
        text = str(e).lower()
        if "resource_exhausted" in text or "out of memory" in text or "oom" in text:
            return False
        raise


def largest_batch(try_batch, start: int, limit: int) -> int:
    """Largest batch b <= limit with try_batch(b) fitting: doubling, then bisection."""
    lo, hi = 0, None
    b = start
    while b <= limit and _fits(lambda: try_batch(b)):
        lo, b = b, b * 2
    hi = min(b, limit + 1)
    while hi - lo > max(1, lo // 16):
        mid = (lo + hi) // 2
        if _fits(lambda: try_batch(mid)):
            lo = mid
        else:
            hi = mid
    return lo


def max_batches(args) -> dict:
    import torch

    def jax_try(b, remat):
        a = argparse.Namespace(**{**vars(args), "remat": remat})
        step, state, data, _ = jax_setup(a, b)
        jax.block_until_ready(step(state, data)[1])

    def torch_try(b):
        model, device = _torch_model(args, None)
        try:
            torch_step_fn(args, model, device, b, False)()
        finally:
            del model
            torch.cuda.empty_cache()

    return {
        "jax": largest_batch(lambda b: jax_try(b, False), 8, args.max_batch_limit),
        "jax_remat": largest_batch(lambda b: jax_try(b, True), 8, args.max_batch_limit),
        "torch_eager": largest_batch(torch_try, 8, args.max_batch_limit),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    common.add_network_args(parser, batch=2)
    parser.add_argument("--remat", action="store_true")
    parser.add_argument("--unpool", default="", help="'scatter' | 'window' ('' = default)")
    parser.add_argument("--max_batch", action="store_true", help="search the largest batch (GPU)")
    parser.add_argument("--max_batch_limit", type=int, default=1024)
    args = parser.parse_args()

    from deconvnet_jax.torch.weights import to_torch_state_dict

    model = DeconvNet(width_multiplier=args.width)
    variables = jax.jit(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, args.size, args.size, 3)))
    )()
    state_dict = to_torch_state_dict(jax.device_get(variables))
    del variables

    flops = 3 * common.deconvnet_forward_flops(args.size, args.size, args.width) * args.batch
    rows = {name: run_jax(args, impl) for name, impl in common.jax_row_names(args.conv_impls)}
    rows["torch_eager"] = run_torch(args, state_dict, False)
    if args.torch_compile:
        rows["torch_compile"] = run_torch(args, state_dict, True)
    peak = args.peak_tflops or common.measured_matmul_tflops(args.dtype)
    ratios = common.add_rates(rows, args.batch, flops, peak)
    # Same weights and batch: the first step's losses must agree (both do the same work).
    first_loss_rel_diff = abs(rows["jax"]["first_loss"] - rows["torch_eager"]["first_loss"]) / abs(
        rows["torch_eager"]["first_loss"]
    )
    result = common.network_result(
        args,
        "training step (forward + backward + SGD momentum), full network",
        peak,
        remat=args.remat,
        unpool=args.unpool or "default",
        gflop_per_image_step=flops / args.batch / 1e9,
        results=rows,
        ratios=ratios,
        first_loss_rel_diff_jax_vs_torch=first_loss_rel_diff,
    )
    result["jax_memory"] = jax_memory(args)
    if args.max_batch:
        result["largest_batch"] = max_batches(args)
    common.print_table(
        f"train step: batch {args.batch} {args.size}x{args.size} width {args.width} {args.dtype}",
        rows,
        ratios,
    )
    for k, m in result["jax_memory"].items():
        if not isinstance(m, dict):
            continue
        print(
            f"JAX {k}: activations/temporaries "
            f"{m['temp_bytes_per_image'] / 2**20:.0f} MiB per image"
        )
    print(
        f"JAX compile {rows['jax']['compile_s']:.1f}s, init {rows['jax']['init_s']:.1f}s, "
        f"first-step loss rel diff vs torch {first_loss_rel_diff:.1e}"
    )
    common.write_json(args.out, result)


if __name__ == "__main__":
    main()
