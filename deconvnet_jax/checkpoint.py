"""Orbax checkpoints of the whole run: train state + data-iterator position + metadata.

Layout: <workdir>/checkpoints/<step>/{state, data, meta}. Kept: the last `keep` checkpoints plus
the best by validation mIoU. Saves are asynchronous; `wait()` blocks until they are on disk.

Resume order (`restore_or_init`): the workdir's latest checkpoint; else `config.resume` (another
run's checkpoint folder); else `config.init_from` (weights read by deconvnet_jax/weights.py into a
fresh state: a run directory, e.g. stage 1 -> stage 2, a .pth or a .caffemodel); else scratch. A
checkpoint of the workdir that fails to restore (incomplete or corrupt) is reported, moved aside
to ``<step>.corrupt-<n>`` (never deleted) and the previous one is used, so the run saves that
step again; when none of the workdir's checkpoints restores, ``CheckpointError`` names them (never
a quiet restart from scratch). This module knows orbax, not weight formats.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as ocm

from deconvnet_jax import paths
from deconvnet_jax.errors import UserError

log = logging.getLogger(__name__)


class CheckpointError(UserError, RuntimeError):
    """A workdir whose checkpoints cannot be used (a user-facing, one-line error)."""


def checkpoints_dir(path) -> epath.Path:
    """A run directory's checkpoints folder (or `path` itself when it is one; local or a URL)."""
    path = paths.absolute(path)
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


class Checkpointer:
    """An orbax CheckpointManager over one checkpoints folder (<workdir>/checkpoints)."""

    def __init__(self, directory, keep: int = 3, async_save: bool = True, create: bool = True):
        self.directory = paths.absolute(directory)
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

    def restore_latest(self, abstract_state: Any, move_bad: bool = False):
        """The newest checkpoint that restores; bad ones are reported and skipped.

        Args:
          move_bad: the steps newer than the one restored that failed are renamed
            ``<step>.corrupt-<n>`` (so they are saved again), and when none restores
            ``CheckpointError`` names them. For the run's own workdir; off for other runs'.
        Returns:
          (state, data_state, meta, step) or None when there is none.
        """
        bad = []
        for step in reversed(self.steps()):
            try:
                state, data, meta = self.restore(step, abstract_state)
            except Exception as e:  # noqa: BLE001  (orbax/tensorstore raise many types)
                self._report_bad(step, e)
                bad.append(step)
                continue
            if move_bad and bad:
                self._move_aside(bad)
            return state, data, meta, step
        if move_bad and bad:
            raise CheckpointError(
                f"{self.directory}: none of the checkpoints (steps "
                f"{', '.join(map(str, sorted(bad)))}) restores (incomplete or corrupt); to start "
                "over, use a new --workdir or move that checkpoints folder away"
            )
        return None

    def _move_aside(self, steps: list[int]) -> None:
        """Renames bad step folders to ``<step>.corrupt-<n>`` (process 0) and reloads the steps."""
        self.manager.wait_until_finished()
        if jax.process_index() == 0:
            for step in steps:
                n = 1
                while (self.directory / f"{step}.corrupt-{n}").exists():
                    n += 1
                target = self.directory / f"{step}.corrupt-{n}"
                (self.directory / str(step)).rename(target)
                log.warning("moved the bad checkpoint %d aside to %s", step, target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("deconvnet_jax_move_bad_checkpoints")
        self.manager.reload()

    def _report_bad(self, step: int, error: Exception) -> None:
        log.error(
            "checkpoint %s/%d is incomplete or corrupt (%s: %s); trying the previous one",
            self.directory,
            step,
            type(error).__name__,
            str(error)[:300],
        )

    def restore_variables(self, best: bool = False, sharding=None) -> dict:
        """params + batch_stats only (no optimiser state needed to read them) of the best step
        (``best``) or the latest restorable one, onto ``sharding`` (default: the first device).

        Raises:
          FileNotFoundError when no checkpoint here restores.
        """
        sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        steps = self.steps()
        if best and self.best_step() is not None:
            steps = [self.best_step()]
        for step in reversed(steps):
            try:
                return self._restore_subtree(step, ("params", "batch_stats"), sharding)
            except Exception as e:  # noqa: BLE001  (orbax/tensorstore raise many types)
                self._report_bad(step, e)
        raise FileNotFoundError(f"{self.directory}: no restorable checkpoint")

    def _restore_subtree(self, step: int, keys: tuple[str, ...], sharding) -> dict:
        path = self.directory / str(step) / "state"
        reader = ocp.PyTreeCheckpointer()
        tree = reader.metadata(path).item_metadata.tree
        want = {
            k: jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree[k]
            )
            for k in keys
        }
        args = ocp.args.PyTreeRestore(
            want,
            restore_args=jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), want),
            partial_restore=True,
        )
        return reader.restore(path, args=args)

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
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state_shapes, shardings
    )


def restore_or_init(
    config,
    ckpt: Checkpointer,
    abstract: Any,
    init_fn: Callable[[], Any],
    init_from_fn: Callable[[str, Any], Any],
):
    """Applies the resume order (module docstring).

    Args:
      config: the run's config (``resume``, ``init_from``).
      ckpt: the workdir's Checkpointer.
      abstract: the state's abstract tree with target shardings (``abstract_state``).
      init_fn: makes a fresh state.
      init_from_fn: ``(config.init_from, fresh state) -> state`` (weights.init_state_from).
    Returns:
      (state, data-iterator state or None, a description of what happened).
    """
    got = ckpt.restore_latest(abstract, move_bad=True)
    if got is not None:
        state, data, _, step = got
        return state, data, f"resumed from {ckpt.directory}/{step}"
    if config.resume:
        other = Checkpointer(checkpoints_dir(config.resume), create=False, async_save=False)
        got = other.restore_latest(abstract)
        other.close()
        if got is None:
            raise FileNotFoundError(
                f"config.resume={config.resume}: no restorable checkpoint there"
            )
        return got[0], got[1], f"resumed from config.resume {config.resume} step {got[3]}"
    fresh = init_fn()
    if config.init_from:
        return init_from_fn(config.init_from, fresh), None, f"initialised from {config.init_from}"
    return fresh, None, "initialised from scratch"
