"""Sweeps: one training run per override dict, each in its own workdir, then a comparison table.

A sweep file defines ``get_sweep()``, a generator of override dicts (``{"optim.lr": 0.01}``) applied
on top of the base config. Each run lives in ``<workdir>/<name>`` where the name is made from its
overrides; a run with ``final_metrics.json`` is finished and skipped, a partial one resumes from its
checkpoints. At the end ``results.md`` and ``results.csv`` compare the final metrics.

  python -m deconvnet_jax.sweep --config configs/demo.py --sweep configs/sweeps/lr.py \
      --workdir runs/sweep_lr [--config.train.num_steps=100]
"""

from __future__ import annotations

import copy
import csv
import importlib.util
import io
import json
import logging
import re
from typing import Any, Callable, Iterable

from deconvnet_jax import config_check, errors, paths

log = logging.getLogger(__name__)


def load_sweep(path) -> list[dict[str, Any]]:
    """The override dicts of a sweep file (its ``get_sweep()`` generator), checked. The sweep
    file is Python, imported from a local file (a URL is copied locally first)."""
    path = paths.as_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file {path} not found")
    with paths.local_copy(path) as local:
        spec = importlib.util.spec_from_file_location(f"sweep_{path.stem}", local)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"{path}: a sweep file must define get_sweep() yielding override dicts")
    overrides = list(module.get_sweep())
    for i, o in enumerate(overrides):
        if not isinstance(o, dict):
            raise ValueError(f"{path}: item {i} of get_sweep() is {type(o).__name__}, not a dict")
    return overrides


def run_name(overrides: dict[str, Any]) -> str:
    """A folder-safe name for a run: ``optim.lr=0.01,data.mode=whole``."""
    if not overrides:
        return "base"
    show = lambda v: "-".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)  # noqa: E731
    text = ",".join(f"{k}={show(v)}" for k, v in overrides.items())
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)


def apply_overrides(config, overrides: dict[str, Any]):
    """A locked copy of `config` with dotted-key overrides set.

    Raises:
      KeyError naming the override when the field does not exist or the value has the wrong type.
    """
    config = copy.deepcopy(config)
    config.lock()
    for key, value in overrides.items():
        try:
            config.update_from_flattened_dict({key: value})
        except (KeyError, TypeError, AttributeError) as e:
            reason = "no such field" if isinstance(e, (KeyError, AttributeError)) else str(e)
            raise KeyError(f"sweep override {key!r}: {reason}") from None
    return config


def _last(path, key: str):
    path = paths.as_path(path)
    value = None
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line) if line.strip() else {}
            if key in row:
                value = row[key]
    return value


def check_overrides(config, overrides: list[dict[str, Any]]) -> None:
    """Raises config_check.ConfigError listing, one line each, every override that names no field
    or makes an invalid config (before any run trains)."""
    problems = []
    for o in overrides:
        try:
            problems += [
                f"sweep run {run_name(o)}: {p}"
                for p in config_check.train_config_problems(apply_overrides(config, o))
            ]
        except KeyError as e:
            problems.append(f"sweep run {run_name(o)}: {e.args[0]}")
    if problems:
        raise config_check.ConfigError("\n".join(problems))


def run_sweep(
    config,
    overrides: Iterable[dict[str, Any]],
    workdir,
    train_fn: Callable[[Any, str], dict] | None = None,
) -> list[dict[str, Any]]:
    """Runs (or resumes, or skips when finished) every override and writes the comparison table.

    Args:
      config: the base config.
      overrides: the sweep's override dicts.
      workdir: the sweep folder; run i goes to ``workdir/run_name(overrides[i])``.
      train_fn: ``(config, workdir) -> final metrics`` (default: trainer.train_and_evaluate).

    Returns:
      One row per run: name, overrides, status, final metrics.
    """
    if train_fn is None:
        from deconvnet_jax import trainer  # heavy (jax, orbax): only when running

        train_fn = trainer.train_and_evaluate
    overrides = list(overrides)
    check_overrides(config, overrides)
    workdir = paths.as_path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, o in enumerate(overrides):
        name = run_name(o)
        run_dir = workdir / name
        final_path = run_dir / "final_metrics.json"
        if final_path.is_file():
            print(f"[{i + 1}/{len(overrides)}] {name}: finished earlier, skipped", flush=True)
            final, status = json.loads(final_path.read_text()), "done"
        else:
            print(f"[{i + 1}/{len(overrides)}] {name}: training in {run_dir}", flush=True)
            try:
                final = train_fn(apply_overrides(config, o), str(run_dir))
                status = "preempted" if final.get("preempted") else "done"
            except (FloatingPointError, ValueError, KeyError, FileNotFoundError) as e:
                log.error("%s failed: %s", name, e)
                final, status = {}, f"failed: {type(e).__name__}: {str(e)[:120]}"
        rows.append(
            {
                "name": name,
                "overrides": o,
                "status": status,
                "val_miou": final.get("miou"),
                "val_pixel_acc": final.get("pixel_acc"),
                "val_mean_class_acc": final.get("mean_class_acc"),
                "final_loss": _last(run_dir / "metrics.jsonl", "loss"),
                "steps": _last(run_dir / "metrics.jsonl", "step"),
            }
        )
        if status.startswith("preempted"):
            break
    write_table(rows, workdir)
    return rows


def write_table(rows: list[dict[str, Any]], workdir) -> None:
    """``results.md`` (sorted by val mIoU) and ``results.csv`` in the sweep folder."""
    workdir = paths.as_path(workdir)
    keys = sorted({k for r in rows for k in r["overrides"]})
    fields = [
        "name",
        *keys,
        "status",
        "val_miou",
        "val_pixel_acc",
        "val_mean_class_acc",
        "final_loss",
        "steps",
    ]
    flat = [
        {**{k: r["overrides"].get(k, "") for k in keys}, **{f: r[f] for f in fields if f in r}}
        for r in rows
    ]
    csv_text = io.StringIO(newline="")
    writer = csv.DictWriter(csv_text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(flat)
    (workdir / "results.csv").write_bytes(csv_text.getvalue().encode())
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731
    num = lambda v: "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    ranked = sorted(
        flat, key=lambda r: -1 if r["val_miou"] is None else r["val_miou"], reverse=True
    )
    lines = [
        "| "
        + " | ".join(
            [
                "run",
                *keys,
                "status",
                "val mIoU %",
                "pixel acc %",
                "mean acc %",
                "final loss",
                "steps",
            ]
        )
        + " |",
        "|" + "---|" * (len(keys) + 7),
    ]
    for r in ranked:
        lines.append(
            "| "
            + " | ".join(
                [
                    r["name"],
                    *(str(r[k]) for k in keys),
                    r["status"],
                    pct(r["val_miou"]),
                    pct(r["val_pixel_acc"]),
                    pct(r["val_mean_class_acc"]),
                    num(r["final_loss"]),
                    num(r["steps"]),
                ]
            )
            + " |"
        )
    (workdir / "results.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Base config file.", lock_config=True)
    flags.DEFINE_string("sweep", None, "Sweep file with get_sweep() yielding override dicts.")
    flags.DEFINE_string("workdir", "runs/sweep", "Sweep folder (one subfolder per run).")
    flags.DEFINE_bool("debug", False, "Show tracebacks of user errors.")
    flags.mark_flags_as_required(["config", "sweep"])

    def _main(argv):
        del argv
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)
        logging.getLogger("deconvnet_jax").setLevel(logging.INFO)
        f = flags.FLAGS
        rows = run_sweep(f.config, load_sweep(f.sweep), f.workdir)
        print((paths.as_path(f.workdir) / "results.md").read_text())
        print(f"{len(rows)} runs; table in {f.workdir}/results.md and results.csv")

    errors.run_app(_main, argv=argv)


if __name__ == "__main__":
    main()
