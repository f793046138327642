"""The training loop: sharded state, resumable data, periodic validation, checkpoints, logs.

`train_and_evaluate(config, workdir)` is what `train.py` runs. Sections: setup (mesh, model,
optimiser, state born sharded), resume, the loop (train step, logging, validation, checkpoints,
preemption), and the end (final validation, plot).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import pathlib
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from deconvnet_jax import bn_stats, checkpoint, optim, parallel, train_lib, viz
from deconvnet_jax.data import loader as data_loader
from deconvnet_jax.data.voc import CLASS_NAMES
from deconvnet_jax.metrics import compute_metrics
from deconvnet_jax.models.deconvnet import build_model

log = logging.getLogger(__name__)


class MetricWriter:
    """JSONL + TensorBoard scalars in the workdir; only process 0 writes."""

    def __init__(self, workdir: pathlib.Path):
        self.active = jax.process_index() == 0
        self.path = workdir / "metrics.jsonl"
        self.tb = None
        if self.active:
            workdir.mkdir(parents=True, exist_ok=True)
            try:
                from tensorboardX import SummaryWriter  # noqa: PLC0415

                self.tb = SummaryWriter(str(workdir / "tensorboard"))
            except ImportError:
                log.warning("tensorboardX not installed: no TensorBoard events")

    def write(self, step: int, scalars: dict) -> None:
        if not self.active:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **scalars}) + "\n")
        if self.tb:
            for k, v in scalars.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb:
            self.tb.close()


class _Preemption:
    """Turns SIGTERM into a flag the loop checks once per step."""

    def __init__(self):
        self.requested = False
        try:
            self._old = signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread
            self._old = None

    def _handler(self, signum, frame):
        log.warning("SIGTERM received: saving a checkpoint and exiting")
        self.requested = True

    def restore(self):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def evaluate(
    config, model, state, mesh, eval_step, split: str | None = None, max_images: int = 0
) -> dict:
    """Whole-image validation mIoU of the current state over config.data.val_split."""
    bs = config.train.get("eval_batch_size", 8)
    per_proc = max(1, math.ceil(bs / jax.process_count()))
    devices_per_proc = jax.local_device_count()
    per_proc = math.ceil(per_proc / devices_per_proc) * devices_per_proc
    conf = np.zeros((config.model.num_classes,) * 2, np.int64)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    for batch in data_loader.make_eval_loader(
        config.data,
        split or config.data.val_split,
        per_proc * jax.process_count(),
        max_images=max_images,
    ):
        conf += np.asarray(jax.device_get(eval_step(variables, parallel.global_batch(batch, mesh))))
    names = CLASS_NAMES if config.model.num_classes == len(CLASS_NAMES) else None
    return compute_metrics(conf, names)


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains config's model in `workdir` (resuming from its checkpoints). Returns val metrics."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

    # --- setup: mesh, model, optimiser, state born sharded ---------------------------
    mesh = parallel.make_mesh(config.mesh)
    model = build_model(config.model)
    crop, batch_size = config.data.crop_size, config.train.batch_size
    if batch_size % mesh.size:
        raise ValueError(
            f"config.train.batch_size={batch_size} must divide over {mesh.size} devices"
        )
    input_shape = (1, crop, crop, 3)
    param_shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(input_shape), train=False)
    )["params"]
    tx = optim.make_optimizer(config.optim, param_shapes)
    init_fn = functools.partial(
        train_lib.create_train_state, model, tx, config.train.seed, input_shape
    )
    shapes = jax.eval_shape(init_fn)
    shardings = parallel.state_shardings(shapes, mesh, config.mesh.shard_all)
    abstract = checkpoint.abstract_state(shapes, shardings)

    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints)
    t0 = time.perf_counter()
    state, data_state, how = checkpoint.restore_or_init(
        config, ckpt, abstract, jax.jit(init_fn, out_shardings=shardings)
    )
    jax.block_until_ready(state)
    log.info("%s (%.1fs)", how, time.perf_counter() - t0)

    train_iter = data_loader.make_train_loader(config.data, batch_size, config.data.seed)
    if data_state:
        train_iter.set_state(data_state)

    batch_sh = parallel.batch_sharding(mesh)
    train_step = jax.jit(
        train_lib.make_train_step(model, tx),
        in_shardings=(shardings, {"image": batch_sh, "label": batch_sh}),
        out_shardings=(shardings, parallel.replicated(mesh)),
        donate_argnums=(0,),
    )
    var_sh = {"params": shardings.params, "batch_stats": shardings.batch_stats}
    eval_step = jax.jit(
        train_lib.make_eval_step(model, config.model.num_classes),
        in_shardings=(var_sh, {"image": batch_sh, "label": batch_sh}),
        out_shardings=parallel.replicated(mesh),
    )
    writer = MetricWriter(workdir)
    preempt = _Preemption()

    # The data position saved with a checkpoint is the one after the batches the state has
    # consumed; the loop prefetches one batch ahead, so it tracks that position itself.
    position = {"after_consumed": train_iter.get_state()}

    def save(step: int, metrics: dict | None = None):
        ckpt.save(step, state, position["after_consumed"], meta={"step": step}, metrics=metrics)

    def fetch():
        """The next global batch (host reading + transfer), and the stream position after it."""
        batch = parallel.global_batch(next(train_iter), mesh)
        return batch, train_iter.get_state()

    # --- the loop ----------------------------------------------------------------------
    step = int(jax.device_get(state.step))
    num_steps = config.train.num_steps
    accum = max(1, config.optim.accum_steps)
    bar = tqdm(
        total=num_steps,
        initial=step,
        desc="train",
        disable=jax.process_index() != 0,
        dynamic_ncols=True,
    )
    window_t, window_n = time.perf_counter(), 0
    try:
        batch, after_batch = fetch() if step < num_steps else (None, None)
        while step < num_steps:
            state, metrics = train_step(state, batch)  # dispatched asynchronously...
            position["after_consumed"] = after_batch
            if step + 1 < num_steps:  # ...so reading the next batch overlaps the device step
                batch, after_batch = fetch()
            metrics = jax.device_get(metrics)
            if not bool(metrics["finite"]):
                ckpt.wait()
                raise FloatingPointError(
                    f"loss became {float(metrics['loss'])} at step {step + 1}: training stopped; "
                    f"the last good checkpoint (step {max(ckpt.steps(), default='none')}) in "
                    f"{ckpt.directory} is "
                    "untouched. Lower config.optim.lr or set config.optim.clip_norm."
                )
            step += 1
            window_n += batch_size
            bar.update(1)
            if step % config.train.log_every == 0 or step == num_steps:
                rate = window_n / (time.perf_counter() - window_t)
                lr = float(optim.current_lr(config.optim, step // accum))
                bar.set_postfix(loss=f"{float(metrics['loss']):.4f}", img_s=f"{rate:.1f}")
                writer.write(
                    step,
                    {
                        "loss": float(metrics["loss"]),
                        "pixel_acc": float(metrics["pixel_acc"]),
                        "lr": lr,
                        "images_per_s": rate,
                    },
                )
                window_t, window_n = time.perf_counter(), 0
            val = None
            if config.train.eval_every and step % config.train.eval_every == 0 and step < num_steps:
                val = evaluate(
                    config,
                    model,
                    state,
                    mesh,
                    eval_step,
                    max_images=config.train.get("eval_max_images", 0),
                )
                writer.write(step, {"val_miou": val["miou"], "val_pixel_acc": val["pixel_acc"]})
                tqdm.write(f"step {step}: val mIoU {100 * val['miou']:.2f}")
            if preempt.requested:
                save(step)
                ckpt.wait()
                log.warning("preempted: checkpoint %d saved, exiting", step)
                return {"preempted": True, "step": step}
            if step % config.train.checkpoint_every == 0 and step < num_steps:
                save(step, {"miou": val["miou"]} if val else None)
    finally:
        bar.close()
        preempt.restore()

    # --- the end: optional BN statistics recompute, final validation, checkpoint, plot ----------
    num_bn = config.train.get("recompute_bn_batches", 0)
    if num_bn:
        batches = (parallel.global_batch(next(train_iter), mesh) for _ in range(num_bn))
        stats = bn_stats.recompute_batch_stats(
            model,
            {"params": state.params, "batch_stats": state.batch_stats},
            batches,
            num_bn,
            progress=jax.process_index() == 0,
        )
        state = state.replace(batch_stats=jax.device_put(stats, shardings.batch_stats))
    final = evaluate(
        config, model, state, mesh, eval_step, max_images=config.train.get("eval_max_images", 0)
    )
    writer.write(step, {"val_miou": final["miou"], "val_pixel_acc": final["pixel_acc"]})
    if not ckpt.steps() or ckpt.steps()[-1] != step:
        save(step, {"miou": final["miou"]})
    ckpt.close()
    writer.close()
    if jax.process_index() == 0:
        (workdir / "final_metrics.json").write_text(json.dumps(final, indent=2))
        viz.plot_training_curves(workdir / "metrics.jsonl", workdir / "curves.png")
        if train_iter.report():
            log.warning(train_iter.report())
    train_iter.close()
    return final
