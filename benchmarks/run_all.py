"""Every CPU benchmark of the README table, in one command, each in a fresh process.

  python -m benchmarks.run_all            # full width, as the README table (~15 min on 2 cores)
  python -m benchmarks.run_all --quick    # a 1/4-width smoke run of the same chain (~2 min)

For each ISA (native, and AVX2 via XLA_FLAGS=--xla_cpu_max_isa=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
ATEN_CPU_CAPABILITY=avx2: what a Zen 3 or pre-AVX-512 Intel machine runs) and each allocator
setting (glibc as installed, and tuned: MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000), the
training step (batch 2) and inference (batch 4) benchmarks run JAX and the PyTorch reference in
the same process, and the 3x3 kernel-gradient benchmark runs per layer shape (allocator as
installed); proposal inference and unpooling run natively as installed. Results go to
benchmarks/results/<name>.json (--quick: benchmarks/results/quick/), then the markdown table the
README shows is printed and written to <results>/table_cpu.md, with the machine, ISA, versions and
date. Run it on a quiet machine: other load changes the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks import common  # noqa: E402

ISAS = {"native": {}, "avx2": common.AVX2_ENV}
ALLOCATORS = {"": {}, "_malloc_tuned": common.MALLOC_TUNED_ENV}


def plan(quick: bool) -> list[tuple[str, str, list[str], dict]]:
    """(result name, script, arguments, extra environment) of every run, in order."""
    net = ["--width", "0.25", "--repeats", "2"] if quick else ["--repeats", "3"]
    net += ["--conv_impls", "auto"]
    runs = []
    for isa, isa_env in ISAS.items():
        suffix = "" if isa == "native" else "_avx2"
        for alloc, alloc_env in ALLOCATORS.items():
            env = {**isa_env, **alloc_env}
            runs.append(
                (f"train_cpu{suffix}{alloc}", "bench_train.py", ["--batch", "2", *net], env)
            )
            runs.append(
                (f"infer_cpu{suffix}{alloc}", "bench_infer.py", ["--batch", "4", *net], env)
            )
        grad = ["--max_side", "56", "--repeats", "2"] if quick else []
        runs.append((f"conv_grad_cpu{suffix}", "bench_conv_grad.py", grad, isa_env))
    props = ["--width", "0.25", "--k", "8", "--repeats", "1"] if quick else ["--repeats", "2"]
    runs.append(("proposals_cpu", "bench_proposals.py", props, {}))
    runs.append(("unpool_cpu", "bench_unpool.py", ["--repeats", "3" if quick else "10"], {}))
    return runs


def run(script: str, args: list[str], env_extra: dict, out: str) -> float:
    env = {
        k: v for k, v in os.environ.items() if k not in (*common.ISA_VARS, *common.MALLOC_TUNED_ENV)
    }
    env.update(env_extra)
    cmd = [sys.executable, os.path.join(HERE, script), *args, "--out", out]
    shown = " ".join(f"{k}={v}" for k, v in env_extra.items())
    print(f"$ {shown} {' '.join(cmd[1:])}".strip(), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, cwd=os.path.dirname(HERE))
    return time.perf_counter() - t0


def _load(results: str, name: str) -> dict | None:
    path = os.path.join(results, name + ".json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _step(r: dict | None, row: str) -> float | None:
    try:
        return float(r["results"][row]["step_s"])
    except (TypeError, KeyError):
        return None


def _fmt(v: float | None, unit: str = " s", digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}{unit}"


def table(results: str) -> str:
    """The README's markdown table from the JSON files in `results`."""
    lines = [
        "| benchmark | ISA | JAX | PyTorch eager | JAX / eager | JAX, tuned allocator | "
        "PyTorch, tuned allocator | JAX / tuned |",
        "|---|---|---|---|---|---|---|---|",
    ]
    env, width = None, 1.0
    for bench, label in (("train", "training step, batch 2"), ("infer", "inference, batch 4")):
        for isa in ISAS:
            suffix = "" if isa == "native" else "_avx2"
            plain = _load(results, f"{bench}_cpu{suffix}")
            tuned = _load(results, f"{bench}_cpu{suffix}_malloc_tuned")
            if plain is None and tuned is None:
                continue
            env = env or (plain or tuned)["env"]
            width = (plain or tuned).get("width_multiplier", width)
            j, t = _step(plain, "jax"), _step(plain, "torch_eager")
            jt, tt = _step(tuned, "jax"), _step(tuned, "torch_eager")
            ratio = None if j is None or t is None else j / t
            ratio_t = None if jt is None or tt is None else jt / tt
            isa_shown = (plain or tuned)["env"].get("isa_limit", isa)
            lines.append(
                f"| {label} | {isa_shown} | {_fmt(j)} | {_fmt(t)} | {_fmt(ratio, '')} | "
                f"{_fmt(jt)} | {_fmt(tt)} | {_fmt(ratio_t, '')} |"
            )
    for isa in ISAS:
        grad = _load(results, "conv_grad_cpu" + ("" if isa == "native" else "_avx2"))
        if grad and grad["rows"]:
            torch_ms = sum(r.get("torch_ms", 0.0) for r in grad["rows"])
            xla, best = grad["sum_ms"]["xla"], grad["best_per_shape_sum_ms"]
            lines.append(
                f"| 3x3 kernel gradients, {len(grad['rows'])} layer shapes, batch "
                f"{grad['batch']} (XLA's / best impl per shape) | {grad['env']['isa_limit']} | "
                f"{xla:.0f} / {best:.0f} ms | {torch_ms:.0f} ms | {best / torch_ms:.2f} | | | |"
            )
    props = _load(results, "proposals_cpu")
    if props and "torch" in props.get("results", {}):
        res = props["results"]
        jax_rows = [k for k in res if k.startswith("jax_") and not k.endswith("_overhead")]
        j = min(res[k]["image_s"] for k in jax_rows)
        t = res["torch"]["image_s"]
        h, w = props["image_hw"]
        lines.append(
            f"| proposal inference, K = {props['k']}, one {w}x{h} image | native | {_fmt(j)} | "
            f"{_fmt(t)} | {_fmt(j / t, '')} | | | |"
        )
    unpool = _load(results, "unpool_cpu")
    if unpool:
        jt = unpool["jax_impls"][unpool["fastest_jax_impl"]]["forward_backward_s"]
        tt = unpool["torch_max_unpool2d"]["forward_backward_s"]
        lines.append(
            f"| unpooling forward+backward (5 stages, batch {unpool['batch']}) | native | "
            f"{_fmt(jt * 1e3, ' ms', 1)} | {_fmt(tt * 1e3, ' ms', 1)} | {_fmt(jt / tt, '')} "
            "| | | |"
        )
    if env:
        lines += [
            "",
            f"Machine: {env.get('cpu_model', env.get('cpu'))}, {env.get('cpu_count')} cores "
            f"(AVX-512: {'yes' if env.get('cpu_has_avx512f') else 'no'}; PyTorch's CPU "
            f"capability as installed: {env.get('torch_cpu_capability', '?')}); "
            f"jax {env.get('jax')}, torch {env.get('torch')}, python {env.get('python')}; "
            f"{env.get('date', '')[:10]}, commit {env.get('git_commit', '?')[:7]}. "
            f"Width {width:g}, float32, medians after warm-up; the two columns of each JAX / "
            "PyTorch pair come from one process (same load, same allocator setting).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1/4 width, fewer repeats (smoke)")
    parser.add_argument("--results", default="", help="output folder (default benchmarks/results)")
    parser.add_argument(
        "--only", default="", help="comma-separated result names to (re)run, e.g. train_cpu_avx2"
    )
    parser.add_argument("--table_only", action="store_true", help="print the table, run nothing")
    args = parser.parse_args()
    results = args.results or os.path.join(HERE, "results", "quick" if args.quick else "")
    os.makedirs(results, exist_ok=True)
    if not args.table_only:
        only = {n.strip() for n in args.only.split(",") if n.strip()}
        runs = [r for r in plan(args.quick) if not only or r[0] in only]
        if only - {r[0] for r in runs}:
            sys.exit(f"error: --only: unknown result names {sorted(only - {r[0] for r in runs})}")
        t0 = time.perf_counter()
        for n, (name, script, bench_args, env) in enumerate(runs, 1):
            s = run(script, bench_args, env, os.path.join(results, name + ".json"))
            print(f"[{n}/{len(runs)}] {name}: {s:.0f} s", flush=True)
        print(f"all runs: {time.perf_counter() - t0:.0f} s")
    md = table(results)
    with open(os.path.join(results, "table_cpu.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
