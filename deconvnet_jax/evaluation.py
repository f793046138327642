"""Evaluation over a split: the paper's variants, confusion matrices on device, tables and images.

``resolve_config`` merges a run's config.json with the inference config, ``load_net`` builds the
network with its weights (a run, a .pth or a .caffemodel: weights.py), ``load_extras`` finds
FCN-8s / ensemble / CRF when they are asked for and available (a missing part skips its variants
with a message), and ``Evaluator`` runs a split: one confusion matrix per variant accumulated on
device (label 255 ignored), then
per-class IoU, mIoU, pixel and mean class accuracy as ``results.md`` (markdown) and
``results.json`` in the output folder, plus palette PNGs and image | truth | prediction overlays
with ``save_predictions``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from PIL import Image
from tqdm import tqdm

from deconvnet_jax import bn_stats, inference, paths, viz, weights
from deconvnet_jax.data import loader as data_loader
from deconvnet_jax.data.voc import CLASS_NAMES, IGNORE_LABEL, DataError
from deconvnet_jax.metrics import compute_metrics, confusion_matrix, markdown_table
from deconvnet_jax.models import build_model

log = logging.getLogger(__name__)


# --- configuration and weights ----------------------------------------------------------------
def load_run_config(run_dir) -> ml_collections.ConfigDict | None:
    """The config.json a training run wrote in its directory, or None when there is none."""
    path = paths.as_path(run_dir) / "config.json" if run_dir else None
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
    merged = ml_collections.ConfigDict(config.to_dict())  # defaults for fields older runs lack
    run = run_config.to_dict()
    run.pop("infer", None)
    merged.update(run)
    merged.update_from_flattened_dict(dict(overrides))
    return merged


RELEASE_BN_EPSILON = 1e-9  # the fork's BN layer (CAFFE.md)


def load_net(config, weights_path: str, best: bool = False, recompute_bn: int = 0) -> inference.Net:
    """The network of ``config.model`` for inference, with its weights.

    Args:
      config: the resolved config (config.model builds the network).
      weights_path: a training run directory, a .pth or a .caffemodel (weights.load_weights).
      best: for a run directory, its best-mIoU checkpoint instead of the latest.
      recompute_bn: if > 0, replace the BN statistics by the release's recompute over this many
        training batches (config.data's train split, config.train.batch_size; bn_stats.py):
        for weights without usable statistics (LEARN-mode Caffe stage results).
    """
    model = build_model(config.model)
    size = config.data.crop_size
    like = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    variables = weights.load_weights(
        weights_path, like, config.model.name, best=best, bn_epsilon=config.model.bn_epsilon
    )
    if recompute_bn:
        variables = recompute_bn_stats(config, model, variables, recompute_bn)
    variables = jax.device_put(variables)
    apply = lambda v, x: model.apply(v, x, train=False)  # noqa: E731
    return inference.Net(apply, variables, config.data.normalization)


def caffe_config(config, model_name: str = "deconvnet") -> ml_collections.ConfigDict:
    """``config`` for a release caffemodel: model ``model_name`` at width 1, the release's BN
    epsilon (1e-9, CAFFE.md "BN") and its input (BGR 0-255 minus the mean: ``caffe_bgr``)."""
    out = ml_collections.ConfigDict(config.to_dict())
    out.model.name, out.model.width_multiplier = model_name, 1.0
    out.model.bn_epsilon = RELEASE_BN_EPSILON
    out.data.normalization = "caffe_bgr"
    return out


def recompute_bn_stats(config, model, variables: dict, num_batches: int) -> dict:
    """``variables`` with batch_stats recomputed over ``num_batches`` training batches."""
    if num_batches < 0:
        raise ValueError(f"--recompute_bn must be >= 0, got {num_batches}")
    if not variables.get("batch_stats"):
        raise ValueError(f"--recompute_bn: model {config.model.name!r} has no BN layers")
    batches = data_loader.make_train_loader(config.data, config.train.batch_size, config.data.seed)
    stats = bn_stats.recompute_batch_stats(model, variables, batches, num_batches)
    return dict(variables, batch_stats=stats)


def load_extras(config) -> dict:
    """FCN-8s (config.infer.ensemble), ensemble.combine and dense_crf, each when asked for and
    available; what is missing is reported and its variants are skipped.

    Returns:
      dict(fcn=Net | None, combine=callable | None, dense_crf=callable | None, variants=tuple).
    """
    infer = config.infer
    out = dict(fcn=None, combine=None, dense_crf=None)
    if infer.ensemble:
        try:
            from deconvnet_jax.postprocess import ensemble

            run = load_run_config(infer.ensemble)
            if str(infer.ensemble).endswith(weights.CAFFE_SUFFIX):  # the public FCN-8s
                run = caffe_config(config, "fcn8s_caffe")
            elif run is None:
                raise FileNotFoundError(
                    f"{infer.ensemble}/config.json not found (an FCN-8s run dir)"
                )
            run = resolve_config(config, {}, run)
            if run.model.name not in ("fcn8s", "fcn8s_caffe"):
                raise ValueError(f"{infer.ensemble} is a {run.model.name!r} run, not fcn8s")
            fcn = load_net(run, infer.ensemble, best=infer.best)
            out.update(fcn=fcn, combine=ensemble.combine)
        except (ImportError, FileNotFoundError, ValueError) as e:
            log.warning("EDeconvNet variants skipped: %s", e)
    if infer.crf:
        try:
            from deconvnet_jax.postprocess import crf

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

    def __init__(self, out_dir: epath.Path, variants):
        self.dirs = {}
        for v in variants:
            slug = v.replace("+", "_").lower()
            self.dirs[v] = (out_dir / "predictions" / slug, out_dir / "overlays" / slug)
            for d in self.dirs[v]:
                d.mkdir(parents=True, exist_ok=True)

    def write(self, variant: str, image_id: str, image: np.ndarray, truth, pred: np.ndarray):
        pred_dir, overlay_dir = self.dirs[variant]
        paths.write_image(viz.palette_image(pred), pred_dir / f"{image_id}.png")
        overlay = Image.fromarray(viz.side_by_side(image, truth, pred))
        paths.write_image(overlay, overlay_dir / f"{image_id}.jpg")


class Evaluator:
    """Scores ``variants`` of a Predictor over ``config.infer.split`` of ``config.data``.

    One confusion matrix per variant is accumulated on device (label 255 ignored); images that
    were shrunk to fit the largest canvas, and +CRF variants, are scored on the host at the
    image's own size. ``run`` writes results.md / results.json (and, with ``save_predictions``,
    palette PNGs and overlays) and returns the summary.

    Args:
      config: the resolved inference config (config.infer, config.data, config.model).
      predictor: an inference.Predictor.
      variants: variant names in the paper's order (``variants_for``).
      combine: the EDeconvNet rule (postprocess.ensemble.combine), for the E* variants.
      dense_crf: postprocess.crf.dense_crf, for the +CRF variants.
    """

    def __init__(
        self,
        config,
        predictor: inference.Predictor,
        variants=("DeconvNet",),
        combine: Callable | None = None,
        dense_crf: Callable | None = None,
    ):
        self.config, self.predictor, self.variants = config, predictor, tuple(variants)
        self.combine, self.dense_crf = combine, dense_crf
        self.num_classes = config.model.num_classes
        self.crf_params = dict(config.infer.crf_params)
        self.conf = {v: jnp.zeros((self.num_classes,) * 2, jnp.int32) for v in self.variants}
        self.writer: _Writer | None = None
        self.dataset = None

    def run(self, out_dir, save_predictions: bool = False) -> dict:
        """Evaluates the split. Returns dict(variants={name: compute_metrics(...)}, images,
        skipped=[(id, reason)], seconds, split, infer, confusion)."""
        infer, strict = self.config.infer, self.config.data.strict
        out_dir = paths.as_path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.dataset = data_loader.open_split(self.config.data, infer.split)
        ids = self.dataset.ids[: infer.max_images or None]
        self.writer = _Writer(out_dir, self.variants) if save_predictions else None
        skipped, done, batch = list(self.dataset.skipped), 0, []
        start = time.perf_counter()
        bar = tqdm(total=len(ids), desc=f"eval {infer.split}", unit="img")
        for i, (prep, lab) in zip(ids, _prefetch(self._load, ids, infer.num_workers, 4)):
            if prep is None:
                bar.update(1)
                if strict:
                    raise DataError(lab)
                log.warning("skipping %s: %s", i, lab)
                skipped.append((i, lab))
                continue
            if batch and (batch[0][0].canvas != prep.canvas or len(batch) == infer.batch_size):
                done += self._add_batch(batch, bar)
                batch = []
            batch.append((prep, lab))
        if batch:
            done += self._add_batch(batch, bar)
        bar.close()
        return self._write_results(out_dir, done, skipped, time.perf_counter() - start)

    def _load(self, image_id: str):
        """(Prepared, label) of an image, or (None, the DataError's message)."""
        try:
            ex = self.dataset.load(image_id)
            return self.predictor.prepare(ex["image"], image_id, ex["boxes"]), ex["label"]
        except DataError as e:
            return None, str(e)

    def _add_batch(self, batch: list, bar) -> int:
        """Scores a batch of (Prepared, label) of one canvas into every variant's confusion."""
        preps = [p for p, _ in batch]
        maps = inference.variant_maps(
            self.predictor.scores(preps),
            self.variants,
            self.config.infer.ensemble_rule,
            self.combine,
        )
        canvas = preps[0].canvas
        labels = np.full((len(batch), canvas, canvas), IGNORE_LABEL, np.int32)  # [B, S, S]
        for k, (p, lab) in enumerate(batch):
            if p.image.shape[:2] == lab.shape:  # shrunk images are scored at their own size below
                labels[k, : lab.shape[0], : lab.shape[1]] = lab
        labels_dev = jnp.asarray(labels)
        shrunk = any(p.image.shape[:2] != lab.shape for p, lab in batch)
        for v in self.variants:
            pred, host = maps[v], None
            if v.endswith("+CRF"):
                host = self._crf_labels(batch, np.asarray(pred), labels.shape)
                pred = jnp.asarray(host)
            self.conf[v] = _update(self.conf[v], pred, labels_dev)
            if self.writer is not None or shrunk:
                self._add_host(v, batch, np.asarray(pred) if host is None else host)
        bar.update(len(batch))
        return len(batch)

    def _crf_labels(self, batch: list, probs: np.ndarray, shape) -> np.ndarray:
        host = np.zeros(shape, np.int32)
        for k, (p, _) in enumerate(batch):
            lab = inference.crf_labels(p, probs[k], self.dense_crf, self.crf_params)
            host[k, : lab.shape[0], : lab.shape[1]] = lab
        return host

    def _add_host(self, variant: str, batch: list, pred: np.ndarray) -> None:
        """Shrunk images' confusion at their original size, and the written predictions."""
        for k, (p, lab) in enumerate(batch):
            full = inference.to_original(p, pred[k])
            same_size = p.image.shape[:2] == lab.shape
            if not same_size:
                self.conf[variant] = self.conf[variant] + confusion_matrix(
                    full, lab, self.num_classes
                )
            if self.writer is not None:
                image = p.image if same_size else self.dataset.load(p.image_id)["image"]
                self.writer.write(variant, p.image_id, image, lab, full)

    def _write_results(self, out_dir: epath.Path, done: int, skipped: list, seconds: float):
        nc = self.num_classes
        names = CLASS_NAMES if nc == len(CLASS_NAMES) else [str(c) for c in range(nc)]
        conf = {v: np.asarray(jax.device_get(c)) for v, c in self.conf.items()}
        results = {v: compute_metrics(conf[v], names) for v in self.variants}
        summary = dict(
            variants=results,
            images=done,
            skipped=skipped,
            seconds=seconds,
            split=self.config.infer.split,
            infer=self.config.infer.to_dict(),
            confusion={v: conf[v].tolist() for v in self.variants},
        )
        (out_dir / "results.md").write_text(markdown_table(results, names))
        (out_dir / "results.json").write_text(json.dumps(summary, indent=2, default=str))
        log.info("evaluated %d images in %.1fs; results in %s", done, seconds, out_dir)
        return summary
