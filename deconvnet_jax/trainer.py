"""The training loop: sharded state, resumable data, periodic validation, checkpoints, logs.

`train_and_evaluate(config, workdir)` is what `train.py` runs, in three parts (as MaxText's
setup_mesh_and_model / setup_train_loop / train_loop):

- `setup`: mesh, model, optimiser, the state born sharded and resumed (checkpoint.restore_or_init),
  the data iterator at its saved position, the jitted steps;
- `train_loop`: train steps with the next batch read while the device runs, logging, periodic
  validation and checkpoints, preemption;
- `finish`: the optional BN-statistics recompute, final validation, last checkpoint, plots.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
import math
import os
import signal
import time
from typing import Any, Callable

import jax
import numpy as np
from etils import epath
from tqdm import tqdm

from deconvnet_jax import (
    bn_stats,
    checkpoint,
    config_check,
    optim,
    parallel,
    paths,
    train_lib,
    viz,
    weights,
)
from deconvnet_jax.data import class_balance
from deconvnet_jax.data import loader as data_loader
from deconvnet_jax.data.voc import CLASS_NAMES
from deconvnet_jax.errors import UserError
from deconvnet_jax.metrics import compute_metrics
from deconvnet_jax.models import build_model

log = logging.getLogger(__name__)


class MetricWriter:
    """JSONL + TensorBoard scalars in the workdir; only process 0 writes.

    Local workdirs get appended lines; on an object store (no append) the rows read back at start
    plus the new ones are rewritten whole on each write, and TensorBoard event files are buffered
    and uploaded whole on each flush (``_RemoteEventFile``).
    """

    def __init__(self, workdir):
        workdir = paths.as_path(workdir)
        self.active = jax.process_index() == 0
        self.path = workdir / "metrics.jsonl"
        self.remote = paths.is_remote(workdir)
        self.tb = None
        self._lines: list[str] = []
        if self.active:
            workdir.mkdir(parents=True, exist_ok=True)
            if self.remote and self.path.exists():
                self._lines = self.path.read_text().splitlines(keepends=True)
            try:
                from tensorboardX import SummaryWriter

                if self.remote:
                    _register_remote_event_files(os.fspath(workdir).split("://")[0])
                self.tb = SummaryWriter(os.fspath(workdir / "tensorboard"))
            except ImportError:
                log.warning("tensorboardX not installed: no TensorBoard events")

    def write(self, step: int, scalars: dict) -> None:
        if not self.active:
            return
        line = json.dumps({"step": step, **scalars}) + "\n"
        if self.remote:
            self._lines.append(line)
            paths.rewrite_text(self.path, "".join(self._lines))
        else:
            with open(self.path, "a") as f:
                f.write(line)
        if self.tb:
            for k, v in scalars.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb:
            self.tb.close()


class _RemoteEventFile:
    """A TensorBoard event file on an object store: bytes kept in memory, the whole file written
    (``epath``) on each flush and on close."""

    def __init__(self, path: str):
        self.path = paths.as_path(path)
        self.buffer = io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        self.path.write_bytes(self.buffer.getvalue())

    def close(self) -> None:
        self.flush()


class _RemoteEventFiles:
    """tensorboardX's writer factory interface over epath."""

    def open(self, path: str) -> _RemoteEventFile:
        return _RemoteEventFile(path)

    def directory_check(self, path: str) -> None:
        paths.as_path(path).mkdir(parents=True, exist_ok=True)


def _register_remote_event_files(scheme: str) -> None:
    """Routes tensorboardX's event files under ``scheme://`` through epath (its own gs:// writer
    needs google-cloud-storage; this one uses whatever epath reads that scheme with)."""
    from tensorboardX import record_writer

    record_writer.register_writer_factory(scheme, _RemoteEventFiles())


class TrainingDiverged(UserError, FloatingPointError):
    """A non-finite loss: training stopped, the last checkpoint kept (one line, exit 2)."""


class _Preemption:
    """SIGTERM -> save and exit, at the same step on every process.

    Multi-process: JAX's preemption sync service (started by jax.distributed.initialize) catches
    SIGTERM on whichever host gets it and agrees a step with the others; every process asks
    orbax's ``CheckpointManager.reached_preemption(step)`` each step, so all enter the collective
    save together (as MaxText does). One process: a Python SIGTERM handler sets a flag.
    """

    def __init__(self, manager):
        self.manager = manager
        self.coordinated = jax.process_count() > 1
        self.requested = False
        self._old = None
        if not self.coordinated:
            try:
                self._old = signal.signal(signal.SIGTERM, self._handler)
            except ValueError:  # not the main thread
                self._old = None

    def _handler(self, signum, frame):
        log.warning("SIGTERM received: saving a checkpoint and exiting")
        self.requested = True

    def reached(self, step: int) -> bool:
        """Whether to save and stop after `step` (the same answer on every process)."""
        if self.coordinated:
            return self.manager.reached_preemption(step)
        return self.requested

    def restore(self):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


@dataclasses.dataclass
class Run:
    """What `setup` builds and the loop and `finish` use."""

    config: Any
    workdir: epath.Path
    mesh: jax.sharding.Mesh
    model: Any
    shardings: Any  # of the TrainState
    state: train_lib.TrainState
    train_iter: data_loader.TrainLoader
    train_step: Callable
    eval_step: Callable
    ckpt: checkpoint.Checkpointer
    writer: MetricWriter
    # The data position saved with a checkpoint: after the batches the state has consumed (the
    # loop reads one batch ahead, so it tracks this itself).
    data_position: dict | None = None

    @property
    def step(self) -> int:
        return int(jax.device_get(self.state.step))

    def save(self, metrics: dict | None = None) -> None:
        step = self.step
        self.ckpt.save(step, self.state, self.data_position, meta={"step": step}, metrics=metrics)


def validate(run: Run, split: str | None = None) -> dict:
    """Whole-image validation metrics (compute_metrics) of the current state on a split."""
    config = run.config
    per_proc = max(1, math.ceil(config.train.eval_batch_size / jax.process_count()))
    devices_per_proc = jax.local_device_count()
    per_proc = math.ceil(per_proc / devices_per_proc) * devices_per_proc
    conf = np.zeros((config.model.num_classes,) * 2, np.int64)
    variables = {"params": run.state.params, "batch_stats": run.state.batch_stats}
    for batch in data_loader.make_eval_loader(
        config.data,
        split or config.data.val_split,
        per_proc * jax.process_count(),
        max_images=config.train.eval_max_images,
    ):
        batch = parallel.global_batch(batch, run.mesh)
        conf += np.asarray(jax.device_get(run.eval_step(variables, batch)))
    names = CLASS_NAMES if config.model.num_classes == len(CLASS_NAMES) else None
    return compute_metrics(conf, names)


def class_weights(config, workdir: epath.Path) -> np.ndarray | None:
    """The pixel-loss class weights of config.train.class_weights (None for "none").

    Computed once from the train split's masks and kept in the workdir (class_weights.json), so
    a resumed run uses exactly the weights it started with.
    """
    method = config.train.get("class_weights", "none")
    if method == "none":
        return None
    path = workdir / "class_weights.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("method") == method and len(saved["weights"]) == config.model.num_classes:
            return np.asarray(saved["weights"], np.float32)
        log.warning("%s: made for another method or class count; recomputing", path)
    dataset = data_loader.open_split(config.data, config.data.train_split)
    weights = class_balance.split_weights(dataset, config.model.num_classes, method)
    if jax.process_index() == 0:
        path.write_text(json.dumps({"method": method, "weights": weights.tolist()}, indent=1))
    log.info("class weights (%s): %s", method, np.round(weights, 3).tolist())
    return weights.astype(np.float32)


def setup(config, workdir) -> Run:
    """Mesh, model, optimiser, the state (born sharded, resumed per the resume order), the data
    iterator at its saved position, and the jitted train / eval steps."""
    config_check.check_train_config(config)  # before anything is built
    workdir = paths.as_path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    mesh = parallel.make_mesh(config.mesh)
    model = build_model(config.model)
    batch_size, crop = config.train.batch_size, config.data.crop_size
    if batch_size % mesh.size:
        raise ValueError(
            f"config.train.batch_size={batch_size} must divide over {mesh.size} devices"
        )
    tx = optim.make_optimizer(config.optim)
    init_fn = functools.partial(
        train_lib.create_train_state, model, tx, config.train.seed, (1, crop, crop, 3)
    )
    shapes = jax.eval_shape(init_fn)
    shardings = parallel.state_shardings(shapes, mesh, config.mesh.shard_all)
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints)
    if str(config.init_from).endswith(weights.CAFFE_SUFFIX) and (
        config.data.normalization != "caffe_bgr"
    ):
        log.warning(
            "config.init_from=%s: Caffe weights expect BGR 0-255 mean-subtracted input, but "
            "config.data.normalization=%r (set it to 'caffe_bgr')",
            config.init_from,
            config.data.normalization,
        )
    t0 = time.perf_counter()
    state, data_state, how = checkpoint.restore_or_init(
        config,
        ckpt,
        checkpoint.abstract_state(shapes, shardings),
        jax.jit(init_fn, out_shardings=shardings),
        functools.partial(
            weights.init_state_from,
            model=config.model.name,
            bn_epsilon=config.model.bn_epsilon,
        ),
    )
    jax.block_until_ready(state)
    log.info("%s (%.1fs)", how, time.perf_counter() - t0)

    train_iter = data_loader.make_train_loader(config.data, batch_size, config.data.seed)
    if data_state:
        train_iter.set_state(data_state)
    batch_sh = parallel.batch_sharding(mesh)
    batch_shardings = {"image": batch_sh, "label": batch_sh}
    train_step = jax.jit(
        train_lib.make_train_step(
            model,
            tx,
            config.train.seed,
            class_weights=class_weights(config, workdir),
            dice_weight=float(config.train.get("dice_weight", 0.0)),
        ),
        in_shardings=(shardings, batch_shardings),
        out_shardings=(shardings, parallel.replicated(mesh)),
        donate_argnums=(0,),
    )
    # Multi-process: compiled on every process, then a barrier, before its first collective.
    train_step = parallel.compiled_together(train_step, "train_step")
    var_sh = {"params": shardings.params, "batch_stats": shardings.batch_stats}
    eval_step = jax.jit(
        train_lib.make_eval_step(model, config.model.num_classes),
        in_shardings=(var_sh, batch_shardings),
        out_shardings=parallel.replicated(mesh),
    )
    eval_step = parallel.compiled_together(eval_step, "eval_step")
    return Run(
        config=config,
        workdir=workdir,
        mesh=mesh,
        model=model,
        shardings=shardings,
        state=state,
        train_iter=train_iter,
        train_step=train_step,
        eval_step=eval_step,
        ckpt=ckpt,
        writer=MetricWriter(workdir),
        data_position=train_iter.get_state(),
    )


def train_loop(run: Run) -> bool:
    """Trains until config.train.num_steps. Returns False when preempted (checkpoint saved)."""
    config = run.config
    num_steps, batch_size = config.train.num_steps, config.train.batch_size
    accum = max(1, config.optim.accum_steps)
    step = run.step

    def fetch():
        """The next global batch (host reading + transfer), and the stream position after it."""
        return parallel.global_batch(next(run.train_iter), run.mesh), run.train_iter.get_state()

    bar = tqdm(
        total=num_steps,
        initial=step,
        desc="train",
        disable=jax.process_index() != 0,
        dynamic_ncols=True,
    )
    preempt = _Preemption(run.ckpt.manager)
    window_t, window_n = time.perf_counter(), 0
    try:
        batch, after_batch = fetch() if step < num_steps else (None, None)
        while step < num_steps:
            run.state, metrics = run.train_step(run.state, batch)  # dispatched asynchronously...
            run.data_position = after_batch
            if step + 1 < num_steps:  # ...so reading the next batch overlaps the device step
                batch, after_batch = fetch()
            metrics = jax.device_get(metrics)
            if not bool(metrics["finite"]):
                run.ckpt.wait()
                raise TrainingDiverged(
                    f"loss became {float(metrics['loss'])} at step {step + 1}: training stopped; "
                    f"the last good checkpoint (step {max(run.ckpt.steps(), default='none')}) in "
                    f"{run.ckpt.directory} is untouched. Lower config.optim.lr or set "
                    "config.optim.clip_norm."
                )
            step += 1
            window_n += batch_size
            bar.update(1)
            if step % config.train.log_every == 0 or step == num_steps:
                rate = window_n / (time.perf_counter() - window_t)
                bar.set_postfix(loss=f"{float(metrics['loss']):.4f}", img_s=f"{rate:.1f}")
                run.writer.write(
                    step,
                    {
                        "loss": float(metrics["loss"]),
                        "pixel_acc": float(metrics["pixel_acc"]),
                        "lr": float(optim.current_lr(config.optim, step // accum)),
                        "images_per_s": rate,
                    },
                )
                window_t, window_n = time.perf_counter(), 0
            val = None
            if config.train.eval_every and step % config.train.eval_every == 0 and step < num_steps:
                val = validate(run)
                run.writer.write(step, {"val_miou": val["miou"], "val_pixel_acc": val["pixel_acc"]})
                tqdm.write(f"step {step}: val mIoU {100 * val['miou']:.2f}")
            if preempt.reached(step):
                run.save()
                run.ckpt.wait()
                log.warning("preempted: checkpoint %d saved, exiting", step)
                return False
            if step % config.train.checkpoint_every == 0 and step < num_steps:
                run.save({"miou": val["miou"]} if val else None)
    finally:
        bar.close()
        preempt.restore()
    return True


def finish(run: Run) -> dict:
    """The optional BN-statistics recompute, final validation, last checkpoint, metrics and plot."""
    config = run.config
    num_bn = config.train.recompute_bn_batches
    if num_bn:
        batches = (parallel.global_batch(next(run.train_iter), run.mesh) for _ in range(num_bn))
        stats = bn_stats.recompute_batch_stats(
            run.model,
            {"params": run.state.params, "batch_stats": run.state.batch_stats},
            batches,
            num_bn,
            progress=jax.process_index() == 0,
        )
        run.state = run.state.replace(batch_stats=jax.device_put(stats, run.shardings.batch_stats))
    final = validate(run)
    run.writer.write(run.step, {"val_miou": final["miou"], "val_pixel_acc": final["pixel_acc"]})
    if not run.ckpt.steps() or run.ckpt.steps()[-1] != run.step:
        run.save({"miou": final["miou"]})
    if jax.process_index() == 0:
        (run.workdir / "final_metrics.json").write_text(json.dumps(final, indent=2))
        viz.plot_training_curves(run.workdir / "metrics.jsonl", run.workdir / "curves.png")
        if jax.process_count() == 1:
            write_predictions(run, run.workdir / "predictions.png")
        if run.train_iter.report():
            log.warning(run.train_iter.report())
    return final


def write_predictions(run: Run, out_png, num_images: int = 4) -> epath.Path | None:
    """image | truth | prediction of the first ``num_images`` val images (the eval loader's
    padded batch, predictions cropped back to each image) as ``out_png``."""
    config = run.config
    batch = next(iter(data_loader.make_eval_loader(config.data, config.data.val_split, num_images)))
    dataset = data_loader.open_split(config.data, config.data.val_split)
    variables = {"params": run.state.params, "batch_stats": run.state.batch_stats}
    logits = jax.jit(functools.partial(run.model.apply, train=False))(variables, batch["image"])
    preds = np.asarray(jax.device_get(logits)).argmax(-1)
    examples = []
    for image_id, pred, truth in zip(batch["id"], preds, batch["label"]):
        if not image_id:  # padding example
            continue
        image = dataset.load(image_id)["image"]
        h, w = min(image.shape[0], pred.shape[0]), min(image.shape[1], pred.shape[1])
        examples.append((image[:h, :w], truth[:h, :w], pred[:h, :w]))
    return viz.write_predictions(examples, out_png) if examples else None


def train_and_evaluate(config, workdir) -> dict:
    """Trains config's model in `workdir` (resuming from its checkpoints).

    Returns:
      The final validation metrics, or {"preempted": True, "step": step} after a preemption.
    """
    run = setup(config, workdir)
    try:
        if not train_loop(run):
            return {"preempted": True, "step": run.step}
        return finish(run)
    finally:
        run.ckpt.close()
        run.writer.close()
        run.train_iter.close()
