"""Evaluation over a split: the paper's variants, confusion matrices on device, tables and images.

``resolve_config`` merges a run's config.json with the inference config, ``load_net`` restores a
checkpoint (or imports PyTorch weights), ``load_extras`` finds FCN-8s / ensemble / CRF when they
are asked for and available (a missing part skips its variants with a message), and ``evaluate``
runs a split: one confusion matrix per variant accumulated on device (label 255 ignored), then
per-class IoU, mIoU, pixel and mean class accuracy as ``results.md`` (markdown) and
``results.json`` in the output folder, plus palette PNGs and image | truth | prediction overlays
with ``save_predictions``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
import pathlib
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
from tqdm import tqdm

from deconvnet_jax import inference, viz
from deconvnet_jax.data import loader as data_loader
from deconvnet_jax.data.voc import CLASS_NAMES, IGNORE_LABEL, DataError
from deconvnet_jax.metrics import compute_metrics, confusion_matrix, markdown_table

log = logging.getLogger(__name__)


# --- configuration and weights ----------------------------------------------------------------
def load_run_config(run_dir) -> ml_collections.ConfigDict | None:
    """The config.json a training run wrote in its directory, or None when there is none."""
    path = pathlib.Path(run_dir) / "config.json" if run_dir else None
    if path is None or not path.is_file():
        return None
    try:
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: unreadable run config ({e})") from None


def resolve_config(config, overrides: dict, run_config=None) -> ml_collections.ConfigDict:
    """The inference config: the run's config (its model and data: the checkpoint's architecture
    and normalisation) with ``config.infer`` from ``config``, then the command-line overrides.

    Args:
      config: the --config file's ConfigDict (configs/infer.py), overrides already applied.
      overrides: flattened command-line overrides (``config_flags.get_override_values``).
      run_config: the run's config.json (None: ``config`` is used as is).
    """
    if run_config is None:
        return config
    merged = ml_collections.ConfigDict(run_config.to_dict())
    merged.infer = ml_collections.ConfigDict(config.infer.to_dict())
    merged.update_from_flattened_dict(dict(overrides))
    return merged


def _model_variables_like(model, size: int):
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))


def load_net(
    config, workdir: str = "", torch_weights: str = "", run_config=None, best: bool = False
) -> inference.Net:
    """The DeconvNet for inference: a run's checkpoint, or a PyTorch state dict (interop format).

    Args:
      config: the resolved config (config.model builds the network).
      workdir: a training run directory (restored with ``checkpoint.load_variables``).
      torch_weights: a .pth DeconvNet state dict (deconvnet_jax/interop/torch_weights.py format).
      run_config: the run's own config (the checkpoint's shapes); defaults to ``config``.
      best: restore the best-mIoU checkpoint instead of the latest.
    """
    from deconvnet_jax import checkpoint  # noqa: PLC0415
    from deconvnet_jax.models.deconvnet import build_model  # noqa: PLC0415

    model = build_model(config.model)
    if torch_weights:
        from deconvnet_jax.interop import torch_weights as tw  # noqa: PLC0415

        like = _model_variables_like(model, config.data.crop_size)
        variables = tw.torch_state_dict_to_flax(
            tw.load_torch_checkpoint(torch_weights), like, source=str(torch_weights)
        )
    elif workdir:
        variables = checkpoint.load_variables(workdir, run_config or config, best=best)
    else:
        raise ValueError("no weights: pass --workdir (a training run) or --torch_weights (a .pth)")
    variables = jax.device_put(variables)
    apply = lambda v, x: model.apply(v, x, train=False)  # noqa: E731
    return inference.Net(apply, variables, config.data.normalization)


def load_extras(config) -> dict:
    """FCN-8s (config.infer.ensemble), ensemble.combine and dense_crf, each when asked for and
    available; what is missing is reported and its variants are skipped.

    Returns:
      dict(fcn=Net | None, combine=callable | None, dense_crf=callable | None, variants=tuple).
    """
    infer = config.infer
    out = dict(fcn=None, combine=None, dense_crf=None)
    if infer.get("ensemble"):
        try:
            from deconvnet_jax.postprocess import ensemble  # noqa: PLC0415

            run = load_run_config(infer.ensemble)
            if run is None:
                raise FileNotFoundError(
                    f"{infer.ensemble}/config.json not found (an FCN-8s run dir)"
                )
            if run.model.get("name") != "fcn8s":
                raise ValueError(f"{infer.ensemble} is a {run.model.get('name')!r} run, not fcn8s")
            fcn = load_net(
                run, workdir=infer.ensemble, run_config=run, best=infer.get("best", False)
            )
            out.update(fcn=fcn, combine=ensemble.combine)
        except (ImportError, FileNotFoundError, ValueError) as e:
            log.warning("EDeconvNet variants skipped: %s", e)
    if infer.get("crf"):
        try:
            from deconvnet_jax.postprocess import crf  # noqa: PLC0415

            if not crf.crf_available():
                raise ImportError(getattr(crf, "INSTALL_HINT", "pydensecrf2 is not installed"))
            out["dense_crf"] = crf.dense_crf
        except ImportError as e:
            log.warning("+CRF variants skipped: %s", e)
    out["variants"] = variants_for(out["fcn"] is not None, out["dense_crf"] is not None)
    return out


def variants_for(ensemble: bool, crf: bool) -> tuple[str, ...]:
    """The variants reported, in the paper's order."""
    names = ["DeconvNet"] + (["DeconvNet+CRF"] if crf else [])
    if ensemble:
        names += ["EDeconvNet"] + (["EDeconvNet+CRF"] if crf else [])
    return tuple(names)


# --- the evaluation loop --------------------------------------------------------------------------
@jax.jit
def _update(conf, pred, label):
    return conf + confusion_matrix(pred, label, conf.shape[0])


def _prefetch(fn: Callable, items: list, workers: int, ahead: int):
    """fn(item) for each item in order, computed up to `ahead` items ahead on `workers` threads."""
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        queue = collections.deque()
        for item in items:
            queue.append(pool.submit(fn, item))
            if len(queue) > ahead:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()


class _Writer:
    """Palette PNGs and overlays of every variant: <out>/predictions/<variant>/<id>.png and
    <out>/overlays/<variant>/<id>.jpg."""

    def __init__(self, out_dir: pathlib.Path, variants):
        self.dirs = {}
        for v in variants:
            slug = v.replace("+", "_").lower()
            self.dirs[v] = (out_dir / "predictions" / slug, out_dir / "overlays" / slug)
            for d in self.dirs[v]:
                d.mkdir(parents=True, exist_ok=True)

    def write(self, variant: str, image_id: str, image: np.ndarray, truth, pred: np.ndarray):
        pred_dir, overlay_dir = self.dirs[variant]
        viz.palette_image(pred).save(pred_dir / f"{image_id}.png")
        Image.fromarray(viz.side_by_side(image, truth, pred)).save(overlay_dir / f"{image_id}.jpg")


def evaluate(
    config,
    predictor: inference.Predictor,
    out_dir,
    variants=("DeconvNet",),
    combine: Callable | None = None,
    dense_crf: Callable | None = None,
    save_predictions: bool = False,
) -> dict:
    """Evaluates ``variants`` on config.infer.split of config.data; writes results.md/.json.

    Returns:
      dict(variants={name: compute_metrics(...)}, images=int, skipped=[(id, reason)], ...).
    """
    infer = config.infer
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = data_loader.open_split(config.data, infer.split)
    ids = dataset.ids[: infer.max_images or None]
    num_classes = config.model.num_classes
    conf = {v: jnp.zeros((num_classes, num_classes), jnp.int32) for v in variants}
    writer = _Writer(out_dir, variants) if save_predictions else None
    crf_params = dict(infer.get("crf_params", {}))
    skipped = list(dataset.skipped)
    done = 0

    def load(i):
        try:
            ex = dataset.load(i)
            return predictor.prepare(ex["image"], i, ex["boxes"]), ex["label"]
        except DataError as e:
            return None, str(e)

    def flush(batch):
        nonlocal done
        preps = [p for p, _ in batch]
        maps = inference.variant_maps(
            predictor.scores(preps), variants, infer.ensemble_rule, combine
        )
        canvas = preps[0].canvas
        labels = np.full((len(batch), canvas, canvas), IGNORE_LABEL, np.int32)
        for k, (p, lab) in enumerate(batch):
            if p.image.shape[:2] == lab.shape:  # shrunk images are scored at their own size below
                labels[k, : lab.shape[0], : lab.shape[1]] = lab
        labels_dev = jnp.asarray(labels)
        for v in variants:
            pred = maps[v]
            host = None
            if v.endswith("+CRF"):
                probs = np.asarray(pred)
                host = np.zeros(labels.shape, np.int32)
                for k, (p, _) in enumerate(batch):
                    lab = inference.crf_labels(p, probs[k], dense_crf, crf_params)
                    host[k, : lab.shape[0], : lab.shape[1]] = lab
                pred = jnp.asarray(host)
            conf[v] = _update(conf[v], pred, labels_dev)
            need_host = writer is not None or any(
                p.image.shape[:2] != lab.shape for p, lab in batch
            )
            if need_host:
                host = np.asarray(pred) if host is None else host
                for k, (p, lab) in enumerate(batch):
                    full = inference.to_original(p, host[k])
                    if p.image.shape[:2] != lab.shape:
                        conf[v] = conf[v] + confusion_matrix(full, lab, num_classes)
                    if writer is not None:
                        image = (
                            p.image
                            if p.image.shape[:2] == lab.shape
                            else dataset.load(p.image_id)["image"]
                        )
                        writer.write(v, p.image_id, image, lab, full)
        done += len(batch)
        bar.update(len(batch))

    start = time.perf_counter()
    batch = []
    bar = tqdm(total=len(ids), desc=f"eval {infer.split}", unit="img")
    for i, (prep, lab) in zip(ids, _prefetch(load, ids, infer.get("num_workers", 2), 4)):
        if prep is None:
            bar.update(1)
            if config.data.strict:
                raise DataError(lab)
            log.warning("skipping %s: %s", i, lab)
            skipped.append((i, lab))
            continue
        if batch and (batch[0][0].canvas != prep.canvas or len(batch) == infer.batch_size):
            flush(batch)
            batch = []
        batch.append((prep, lab))
    if batch:
        flush(batch)
    bar.close()
    seconds = time.perf_counter() - start
    names = CLASS_NAMES if num_classes == len(CLASS_NAMES) else [str(c) for c in range(num_classes)]
    results = {v: compute_metrics(np.asarray(jax.device_get(conf[v])), names) for v in variants}
    table = markdown_table(results, names)
    summary = dict(
        variants=results,
        images=done,
        skipped=skipped,
        seconds=seconds,
        split=infer.split,
        infer=config.infer.to_dict(),
        confusion={v: np.asarray(conf[v]).tolist() for v in variants},
    )
    (out_dir / "results.md").write_text(table)
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    log.info("evaluated %d images in %.1fs; results in %s", done, seconds, out_dir)
    return summary
