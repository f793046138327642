"""Orbax checkpoints of the whole run: train state + data-iterator position + metadata.

Layout: <workdir>/checkpoints/<step>/{state, data, meta}. Kept: the last `keep` checkpoints plus
the best by validation mIoU. Saves are asynchronous; `wait()` blocks until they are on disk.

Resume order (`restore_or_init`): the workdir's latest checkpoint; else `config.resume` (another
run's checkpoint folder); else `config.init_from` (a run directory: its params and BN statistics
with a fresh optimiser, e.g. stage 1 -> stage 2; or a PyTorch .pth: a full DeconvNet state_dict or
torchvision VGG16 / VGG16-BN through deconvnet_jax.interop); else scratch. A checkpoint that fails
to restore (incomplete or corrupt) is reported and the previous one is used.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

log = logging.getLogger(__name__)


def checkpoints_dir(path) -> pathlib.Path:
    """A run directory's checkpoints folder (or `path` itself when it is one)."""
    path = pathlib.Path(path).absolute()
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


class Checkpointer:
    """An orbax CheckpointManager over one checkpoints folder (<workdir>/checkpoints)."""

    def __init__(self, directory, keep: int = 3, async_save: bool = True, create: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        policy = ocm.AnyPreservationPolicy(
            [
                ocm.LatestN(n=keep),
                ocm.BestN(
                    get_metric_fn=lambda m: m["miou"], n=1, keep_checkpoints_without_metrics=False
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            best_fn=lambda m: m["miou"],  # also makes orbax write each step's metrics to disk,
            best_mode="max",  # so the best checkpoint is still known after a restart
            enable_async_checkpointing=async_save,
            create=create,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(
        self,
        step: int,
        state: Any,
        data_state: dict | None,
        meta: dict | None = None,
        metrics: dict | None = None,
    ) -> None:
        """Saves (asynchronously) the state, the data-iterator state and metadata at `step`."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state or {}),
            meta=ocp.args.JsonSave(meta or {}),
        )
        self.manager.save(step, args=args, metrics=metrics, force=True)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return out["state"], dict(out["data"] or {}), dict(out["meta"] or {})

    def restore_latest(self, abstract_state: Any):
        """The newest checkpoint that restores; bad ones are reported and skipped.

        Returns:
          (state, data_state, meta, step) or None when there is none.
        """
        for step in reversed(self.steps()):
            try:
                state, data, meta = self.restore(step, abstract_state)
                return state, data, meta, step
            except Exception as e:  # noqa: BLE001  (orbax/tensorstore raise many types)
                log.error(
                    "checkpoint %s/%d is incomplete or corrupt (%s: %s); trying the previous one",
                    self.directory,
                    step,
                    type(e).__name__,
                    str(e)[:300],
                )
        return None

    def best_step(self) -> int | None:
        """The kept step with the highest saved val mIoU (None when no step carries metrics)."""
        scored = []
        for step in self.steps():
            metrics = self.manager.metrics(step) or {}
            if metrics.get("miou") is not None:
                scored.append((float(metrics["miou"]), step))
        return max(scored)[1] if scored else None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_state(state_shapes: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the target shardings (restores straight into place)."""
    return jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state_shapes, shardings
    )


def _load_init_from(path: str, abstract: Any, fresh: Any, model_name: str = "deconvnet") -> Any:
    """Params + batch_stats from a run directory or a PyTorch .pth into a fresh state.

    A .pth holds torchvision VGG16(-BN) (`features.*` keys: encoder, fc6, fc7) or a full state
    dict of the model being trained (DeconvNet, or FCN-8s when model_name is "fcn8s")."""
    p = pathlib.Path(path)
    if p.suffix in (".pth", ".pt", ".bin"):
        from deconvnet_jax.interop import torch_weights  # noqa: PLC0415

        sd = torch_weights.load_torch_checkpoint(p)
        like = {
            "params": jax.device_get(fresh.params),
            "batch_stats": jax.device_get(fresh.batch_stats),
        }
        if any(k.startswith("features.") for k in sd):
            variables = torch_weights.vgg16_to_flax(sd, like)
        elif model_name == "fcn8s":
            from deconvnet_jax.interop import fcn_weights  # noqa: PLC0415

            variables = fcn_weights.fcn_from_torch_state_dict(sd, like, source=str(p))
        else:
            variables = torch_weights.torch_state_dict_to_flax(sd, like, source=str(p))
        place = lambda new, old: jax.device_put(np.asarray(new, old.dtype), old.sharding)  # noqa: E731
        return fresh.replace(
            params=jax.tree_util.tree_map(place, variables["params"], fresh.params),
            batch_stats=jax.tree_util.tree_map(place, variables["batch_stats"], fresh.batch_stats),
        )
    ckpt = Checkpointer(checkpoints_dir(p), create=False, async_save=False)
    got = ckpt.restore_latest(abstract)
    ckpt.close()
    if got is None:
        raise FileNotFoundError(f"config.init_from={path}: no restorable checkpoint there")
    return fresh.replace(params=got[0].params, batch_stats=got[0].batch_stats)


def restore_or_init(config, ckpt: Checkpointer, abstract: Any, init_fn: Callable[[], Any]):
    """Applies the resume order. Returns (state, data_state or None, description)."""
    got = ckpt.restore_latest(abstract)
    if got is not None:
        state, data, _, step = got
        return state, data, f"resumed from {ckpt.directory}/{step}"
    if config.get("resume"):
        other = Checkpointer(checkpoints_dir(config.resume), create=False, async_save=False)
        got = other.restore_latest(abstract)
        other.close()
        if got is None:
            raise FileNotFoundError(
                f"config.resume={config.resume}: no restorable checkpoint there"
            )
        return got[0], got[1], f"resumed from config.resume {config.resume} step {got[3]}"
    fresh = init_fn()
    if config.get("init_from"):
        state = _load_init_from(
            config.init_from, abstract, fresh, config.model.get("name", "deconvnet")
        )
        return state, None, f"initialised from {config.init_from}"
    return fresh, None, "initialised from scratch"


def load_variables(path, config, best: bool = False) -> dict:
    """params + batch_stats of a run directory (latest, or best by val mIoU) for inference.

    Args:
      path: a run directory (with checkpoints/) or its checkpoints folder.
      config: the run's config (builds the abstract state to restore into).
      best: restore the best-mIoU checkpoint instead of the latest.
    """
    from deconvnet_jax import optim, train_lib  # noqa: PLC0415
    from deconvnet_jax.models.deconvnet import build_model  # noqa: PLC0415

    model = build_model(config.model)
    size = config.data.crop_size

    def init():
        params = model.init(jax.random.PRNGKey(0), np.zeros((1, size, size, 3), np.float32))[
            "params"
        ]
        tx = optim.make_optimizer(config.optim, params)
        return train_lib.create_train_state(model, tx, 0, (1, size, size, 3))

    shapes = jax.eval_shape(init)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = abstract_state(shapes, jax.tree_util.tree_map(lambda _: sharding, shapes))
    ckpt = Checkpointer(checkpoints_dir(path), create=False, async_save=False)
    if not ckpt.steps():
        raise FileNotFoundError(f"{path}: no checkpoints found")
    if best and ckpt.best_step() is not None:
        state = ckpt.restore(ckpt.best_step(), abstract)[0]
    else:
        got = ckpt.restore_latest(abstract)
        if got is None:
            raise FileNotFoundError(f"{path}: no restorable checkpoint")
        state = got[0]
    ckpt.close()
    return {"params": state.params, "batch_stats": state.batch_stats}
