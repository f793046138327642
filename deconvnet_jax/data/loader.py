"""Input pipelines: a resumable grain training loader and a static-shape whole-image eval loader.

Training: the split's ids are sharded per process (`ids[process_index::process_count]`, disjoint
and complete), shuffled by seed (reshuffled every epoch), repeated forever, and each example is
read and cropped by `crops.sample_crop` with an RNG derived from (seed, global position), so the
stream is a pure function of the seed. `get_state()` / `set_state()` capture the position: a
resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import grain
import numpy as np
from etils import epath

from deconvnet_jax import paths
from deconvnet_jax.data import crops, synthetic
from deconvnet_jax.data.voc import IGNORE_LABEL, DataError, VOCDataset

log = logging.getLogger(__name__)

normalize = crops.normalize  # re-exported: inference uses the same normalisation


def _process(process_index, process_count) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    return int(process_index), int(process_count)


def dataset_root(data_config) -> epath.Path:
    """The VOC2012-layout root of config.data (generating the synthetic set if asked)."""
    if data_config.name == "synthetic":
        return synthetic.ensure_dataset(data_config.cache_dir, **data_config.synthetic)
    if data_config.name == "voc":
        if not data_config.voc_root:
            raise ValueError(
                "config.data.voc_root is empty: point it at VOCdevkit/VOC2012 "
                "(or use config.data.name='synthetic' for the generated demo set)"
            )
        return paths.as_path(data_config.voc_root)
    raise ValueError(
        f"unknown config.data.name {data_config.name!r} (expected 'voc' or 'synthetic')"
    )


def open_split(data_config, split: str) -> VOCDataset:
    """The dataset of a split of config.data: a prepared TFDS voc2012_segmentation when
    `config.data.tfds_dir` is set (config `tfds_config`, default "aug" for train_aug runs, else
    "plain"), otherwise the VOCdevkit folder (or the generated set)."""
    if data_config.tfds_dir:
        from deconvnet_jax.data.tfds_voc import TFDSVOCDataset  # imports tensorflow_datasets

        tfds_config = data_config.tfds_config or (
            "aug" if data_config.train_split == "train_aug" else "plain"
        )
        return TFDSVOCDataset(data_config.tfds_dir, split, config=tfds_config)
    sbd = data_config.sbd_root or None
    if split == "train_aug" and sbd is None and data_config.name == "synthetic":
        split = "train"  # the generated set has no SBD part
    return VOCDataset(dataset_root(data_config), split, sbd_root=sbd, strict=data_config.strict)


def _allow_unparsed_absl_flags() -> None:
    """grain's worker processes read absl flags, which raises outside an absl app (scripts,
    notebooks, pytest: google/grain#1355); there the flags' defaults are what we want."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class _CropTransform(grain.transforms.RandomMap):
    """Reads example `i` of the dataset and samples one training crop (uint8)."""

    def __init__(self, dataset: VOCDataset, data_config, proposals):
        self.dataset = dataset
        self.cfg = dict(
            mode=data_config.mode,
            resize=data_config.resize,
            crop_size=data_config.crop_size,
            flip=data_config.flip,
            box_enlarge=data_config.box_enlarge,
            pad_value=crops.mean_pixel(data_config.normalization),
        )
        self.proposals = proposals

    def random_map(self, index: int, rng: np.random.Generator):
        i = self.dataset.ids[index]
        try:
            example = self.dataset.load(i)
        except DataError as e:
            if self.dataset.strict:
                raise
            return {"skipped_id": i, "reason": str(e)}
        image, label = crops.sample_crop(example, rng=rng, proposals=self.proposals, **self.cfg)
        # uint8 out: 4x less to move from worker processes; normalised per batch in __next__
        return {"image": image, "label": label}


class TrainLoader:
    """Infinite iterator of process-local training batches with checkpointable state.

    Yields dict(image=float32 [b, crop, crop, 3], label=int32 [b, crop, crop]).
    In lenient mode (config.data.strict False) bad examples are skipped and counted in
    `skipped` (one "id: reason" per distinct bad example, also across resumes), reported by
    `report()`.
    """

    def __init__(
        self, data_config, local_batch: int, seed: int, process_index: int, process_count: int
    ):
        self.dataset = open_split(data_config, data_config.train_split)
        self.local_batch = local_batch
        self._norm = data_config.normalization
        self._skipped: dict[str, str] = {i: r for i, r in self.dataset.skipped}
        proposals = None
        if data_config.mode == "stage2":
            if not data_config.proposals:
                raise ValueError(
                    "config.data.mode='stage2' needs config.data.proposals (a .npz/.json file)"
                )
            proposals = crops.load_proposals(data_config.proposals)
        if len(self.dataset) < process_count:
            raise ValueError(
                f"split {data_config.train_split!r} has {len(self.dataset)} examples "
                f"for {process_count} processes"
            )
        ds = grain.MapDataset.range(len(self.dataset))[process_index::process_count]
        self._shard_size = len(ds)
        ds = ds.shuffle(seed=seed).repeat()
        ds = ds.random_map(_CropTransform(self.dataset, data_config, proposals), seed=seed + 1)
        it_ds = ds.to_iter_dataset(
            grain.ReadOptions(
                num_threads=0 if data_config.num_workers else 2,
                prefetch_buffer_size=4 * local_batch,
            )
        )
        if data_config.num_workers:
            _allow_unparsed_absl_flags()
            it_ds = it_ds.mp_prefetch(
                grain.MultiprocessingOptions(num_workers=data_config.num_workers)
            )
        self._it = iter(it_ds)

    def __iter__(self) -> Iterator[dict]:
        return self

    @property
    def skipped(self) -> list[str]:
        """One "id: reason" per distinct bad example skipped so far."""
        return [f"{i}: {r}" for i, r in self._skipped.items()]

    def __next__(self) -> dict:
        images, labels = [], []
        run = 0  # consecutive bad examples: a split with no good example must not spin forever
        while len(images) < self.local_batch:
            ex = next(self._it)
            if "skipped_id" in ex:
                if ex["skipped_id"] not in self._skipped:
                    log.warning("skipping bad example %s: %s", ex["skipped_id"], ex["reason"])
                self._skipped[ex["skipped_id"]] = ex["reason"]
                run += 1
                if run > self._shard_size:
                    raise DataError(
                        f"every example of this process's shard of split "
                        f"{self.dataset.split!r} is bad ({len(self._skipped)} "
                        f"skipped; first: {self.skipped[0]})"
                    )
                continue
            run = 0
            images.append(ex["image"])
            labels.append(ex["label"])
        return {
            "image": normalize(np.stack(images), self._norm),  # [b, crop, crop, 3] float32
            "label": np.stack(labels).astype(np.int32),
        }  # [b, crop, crop]

    def get_state(self) -> dict:
        """JSON-serialisable position of the stream (and the bad examples met so far)."""
        return {"grain": self._it.get_state(), "skipped": dict(self._skipped)}

    def set_state(self, state: dict) -> None:
        """Restores a position from `get_state()`: the next batches are those that followed it."""
        self._it.set_state(state["grain"])
        if isinstance(state.get("skipped"), dict):
            self._skipped.update(state["skipped"])

    def report(self) -> str:
        """ "N bad training examples skipped" (lenient mode), or "" when none was."""
        n = len(self._skipped)
        return f"{n} bad training example{'s' * (n != 1)} skipped" if n else ""

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close:
            close()


def make_train_loader(
    data_config,
    global_batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> TrainLoader:
    """The training loader of config.data for this process.

    Args:
      data_config: config.data (configs/default.py).
      global_batch_size: batch over all processes (must divide by the process count).
      seed: shuffling and augmentation seed.
      process_index, process_count: default jax.process_index() / jax.process_count().
    """
    pi, pc = _process(process_index, process_count)
    if global_batch_size % pc:
        raise ValueError(f"global batch {global_batch_size} does not divide over {pc} processes")
    return TrainLoader(data_config, global_batch_size // pc, seed, pi, pc)


def _fit(image, label, size: int, strict: bool, source: str):
    h, w = label.shape
    if h <= size and w <= size:
        return image, label
    if strict:
        raise DataError(f"{source}: image {w}x{h} is larger than config.data.eval_size={size}")
    import cv2

    scale = size / max(h, w)
    nw, nh = max(1, int(w * scale)), max(1, int(h * scale))
    log.warning("%s: %dx%d image resized down to %dx%d to fit eval_size", source, w, h, nw, nh)
    return (
        cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR),
        cv2.resize(label, (nw, nh), interpolation=cv2.INTER_NEAREST_EXACT),
    )


def make_eval_loader(
    data_config,
    split: str,
    batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
    max_images: int = 0,
) -> Iterator[dict]:
    """Whole-image evaluation batches of this process (finite, static shapes).

    Yields dict(image=float32 [b, S, S, 3], label=int32 [b, S, S], id=list[str]) with
    S = config.data.eval_size: images padded at the bottom/right (normalised value 0, label 255);
    the last batch padded with all-255 examples (id ""); every process yields the same number of
    batches.
    """
    pi, pc = _process(process_index, process_count)
    dataset = open_split(data_config, split)
    ids = dataset.ids[: max_images or None]
    mine = ids[pi::pc]
    num_batches = math.ceil(math.ceil(len(ids) / pc) / batch_size)
    size = data_config.eval_size
    for b in range(num_batches):
        image = np.zeros((batch_size, size, size, 3), np.float32)
        label = np.full((batch_size, size, size), IGNORE_LABEL, np.int32)
        names = []
        for k, i in enumerate(mine[b * batch_size : (b + 1) * batch_size]):
            try:
                ex = dataset.load(i)
            except DataError as e:
                if data_config.strict:
                    raise
                log.warning("skipping bad example %s: %s", i, e)
                names.append("")
                continue
            img, lab = _fit(ex["image"], ex["label"], size, data_config.strict, i)
            image[k, : lab.shape[0], : lab.shape[1]] = normalize(img, data_config.normalization)
            label[k, : lab.shape[0], : lab.shape[1]] = lab
            names.append(i)
        names += [""] * (batch_size - len(names))
        yield {"image": image, "label": label, "id": names}
