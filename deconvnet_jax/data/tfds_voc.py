"""TFDS builder `voc2012_segmentation`: VOC 2012 (+ SBD) segmentation as array_record files.

Configs:
  plain: splits `train` and `val` of VOC 2012 (ImageSets/Segmentation).
  aug:   splits `train_aug` (VOC train + SBD train + SBD val minus VOC val) and `val`.
Sources, in order: `manual_dir` holding the extracted folders (a VOCdevkit/VOC2012-layout folder,
SBD's benchmark_RELEASE/dataset) or the archives (VOCtrainval_11-May-2012.tar, benchmark.tgz);
without a manual_dir, the official URLs (online users only).

Examples are read through `voc.VOCDataset`, so preparation validates exactly like the folder
reader: strict by default (a bad example raises `DataError` naming the file); `strict=False` skips
bad examples, lists them in `builder.skipped` and in the prepared dataset's metadata.

Neither preparation nor reading needs TensorFlow: records are written as array_record (the
default file format of this builder) and read with `builder.as_data_source(split)`, which decodes
images with OpenCV. Features of a record:
  image:   uint8 [H, W, 3], the source JPEG bytes unchanged (non-RGB sources: lossless PNG of the
           RGB conversion voc.read_image makes);
  label:   uint8 [H, W, 1] class indices 0..20, 255 = void (a grey PNG);
  id:      the VOC image id (bytes when read back);
  objects: box float32 [N, 4] (x0, y0, x1, y1) in pixels, exclusive max (voc.VOCDataset's
           convention), label int64 [N] index into voc.CLASS_NAMES (1..20).
`record_to_example` turns a record into a voc.VOCDataset example; `TFDSVOCDataset` offers the
VOCDataset interface (ids, load, strict, skipped) over a prepared split.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pathlib
import shutil
import tarfile
import tempfile

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from tqdm import tqdm

from deconvnet_jax import errors
from deconvnet_jax.data.voc import CLASS_NAMES, DataError, VOCDataset

log = logging.getLogger(__name__)

VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
SBD_URL = (
    "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/"
    "benchmark.tgz"
)
# md5 of the official archives (as torchvision's VOCSegmentation / SBDataset check them)
_MD5 = {"voc": "6cd6e144f989b92b3379bac3b3de84fd", "sbd": "82b4d87ceb2ed10f6038a1cba92111cb"}
_ARCHIVES = {
    "voc": ("VOCtrainval_11-May-2012.tar", "VOCtrainval*.tar"),
    "sbd": ("benchmark.tgz", "benchmark*.tgz", "benchmark*.tar.gz", "benchmark*.tar"),
}
# Big leaf folders never searched for a dataset root.
_LEAVES = {
    "JPEGImages",
    "SegmentationClass",
    "SegmentationObject",
    "Annotations",
    "cls",
    "inst",
    "img",
    "cls_png",
    "inst_png",
}

_MANUAL = """\
Put into `manual_dir` either the archives or their extracted folders:
  VOC 2012: VOCtrainval_11-May-2012.tar (from http://host.robots.ox.ac.uk/pascal/VOC/voc2012/)
            or a folder in VOCdevkit/VOC2012 layout (JPEGImages/, SegmentationClass/,
            ImageSets/Segmentation/, optionally Annotations/, SegmentationObject/);
  SBD (config `aug` only): benchmark.tgz (from
            http://home.bharathh.info/pubs/codes/SBD/download.html) or its extracted
            benchmark_RELEASE/dataset folder (cls/, inst/, img/, train.txt, val.txt).
Without a manual_dir the builder downloads the archives from the official URLs.
"""


def _is_voc_root(path: pathlib.Path) -> bool:
    return (path / "JPEGImages").is_dir() and (path / "ImageSets" / "Segmentation").is_dir()


def _is_sbd_root(path: pathlib.Path) -> bool:
    return (
        (path / "cls").is_dir() and (path / "train.txt").is_file() and (path / "val.txt").is_file()
    )


def find_root(base, kind: str, max_depth: int = 4) -> pathlib.Path | None:
    """The first folder under `base` (itself included, breadth first) that holds a VOC 2012
    (`kind="voc"`) or SBD dataset (`kind="sbd"`) root, or None."""
    test = _is_voc_root if kind == "voc" else _is_sbd_root
    level = [pathlib.Path(base)]
    for _ in range(max_depth + 1):
        nxt = []
        for path in sorted(level):
            if not path.is_dir():
                continue
            if test(path):
                return path
            nxt += [p for p in path.iterdir() if p.is_dir() and p.name not in _LEAVES]
        level = nxt
    return None


def extract_archive(archive: pathlib.Path, dest_parent: pathlib.Path) -> pathlib.Path:
    """Extracts a tar archive (any compression) once into dest_parent/<archive name>/.

    Python's tarfile with the "data" filter (no absolute paths, links out of the tree or device
    files); TFDS's own extractor would need TensorFlow.
    """
    dest = pathlib.Path(dest_parent) / archive.name
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{archive.name}-", dir=dest.parent))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                for member in tqdm(tar, desc=f"extract {archive.name}", unit=" files"):
                    tar.extract(member, tmp, filter="data")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"{archive}: corrupt or unreadable archive ({e})") from None
        try:
            tmp.rename(dest)
        except OSError:  # another process finished first
            if not dest.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def locate(base: pathlib.Path, kind: str, extract_to: pathlib.Path) -> pathlib.Path | None:
    """A VOC/SBD root under `base`: an extracted folder, else a known archive extracted to
    `extract_to`; None when neither is there."""
    root = find_root(base, kind)
    if root is not None:
        return root
    for pattern in _ARCHIVES[kind]:
        for archive in sorted(pathlib.Path(base).glob(pattern)):
            root = find_root(extract_archive(archive, extract_to), kind)
            if root is not None:
                return root
    return None


def check_md5(path: pathlib.Path, expected: str) -> None:
    """Raises DataError when the file's md5 is not `expected` (a broken download)."""
    md5 = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            md5.update(block)
    if md5.hexdigest() != expected:
        raise DataError(
            f"{path}: md5 {md5.hexdigest()} is not the official {expected} "
            "(incomplete or corrupt download: delete it and retry)"
        )


def _manual_dir(dl_manager) -> pathlib.Path | None:
    """The user's manual_dir, or None when none was given (or it is empty)."""
    try:
        return pathlib.Path(os.fspath(dl_manager.manual_dir))
    except AssertionError:  # TFDS: "Manual directory ... does not exist or is empty"
        return None


class Voc2012SegmentationConfig(tfds.core.BuilderConfig):
    """`plain` (VOC train/val) or `aug` (train_aug/val, needs SBD)."""

    def __init__(self, *, splits: tuple[str, ...], **kwargs):
        super().__init__(**kwargs)
        self.splits = splits


class Voc2012Segmentation(tfds.core.GeneratorBasedBuilder):
    """PASCAL VOC 2012 semantic segmentation (+ SBD augmented training set), without TensorFlow.

    Args (beyond tfds.core.GeneratorBasedBuilder's: config, data_dir, version, file_format):
      strict: raise on a bad example while preparing (default); False skips it and lists it in
        `self.skipped` and in `info.metadata["skipped"]`.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "VOC 2012 segmentation (+ SBD train_aug): image, mask, boxes, id."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
    # TFDS derives this from the package through the `importlib_resources` backport, which it
    # only requires on Python < 3.9: set it directly.
    code_path = epath.Path(__file__)
    BUILDER_CONFIGS = [
        Voc2012SegmentationConfig(
            name="plain", splits=("train", "val"), description="VOC 2012 segmentation train / val."
        ),
        Voc2012SegmentationConfig(
            name="aug",
            splits=("train_aug", "val"),
            description="train_aug (VOC train + SBD train/val minus VOC "
            "val, ~10.5k images) / VOC val.",
        ),
    ]

    def __init__(self, *, strict: bool = True, **kwargs):
        kwargs.setdefault("file_format", "array_record")  # readable without TensorFlow
        self.strict = strict
        self.skipped: list[tuple[str, str]] = []  # (id, reason) skipped while preparing
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="PASCAL VOC 2012 semantic segmentation with object boxes (from the XML "
            "annotations, else instance masks, else connected components).",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "label": tfds.features.Image(shape=(None, None, 1), use_colormap=True),
                    "id": tfds.features.Text(),
                    "objects": tfds.features.Sequence(
                        {
                            "box": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                        }
                    ),
                }
            ),
            homepage="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        need_sbd = self.builder_config.name == "aug"
        extract_to = pathlib.Path(os.fspath(dl_manager.download_dir)) / "extracted"
        manual = _manual_dir(dl_manager)
        if manual is not None:
            voc_root = locate(manual, "voc", extract_to)
            if voc_root is None:
                raise DataError(
                    f"{manual}: no VOC 2012 folder (JPEGImages/ + "
                    f"ImageSets/Segmentation/) or archive {_ARCHIVES['voc'][0]}"
                )
            sbd_root = locate(manual, "sbd", extract_to) if need_sbd else None
            if need_sbd and sbd_root is None:
                raise DataError(
                    f"{manual}: config 'aug' needs SBD: no benchmark_RELEASE/"
                    "dataset folder (cls/, train.txt, val.txt) or archive "
                    f"{_ARCHIVES['sbd'][0]}"
                )
        else:  # online: TFDS downloads (requests, no TensorFlow); tarfile extracts
            urls = {"voc": VOC_URL, **({"sbd": SBD_URL} if need_sbd else {})}
            archives = {k: pathlib.Path(os.fspath(p)) for k, p in dl_manager.download(urls).items()}
            for k, path in archives.items():
                check_md5(path, _MD5[k])
            roots = {k: find_root(extract_archive(p, extract_to), k) for k, p in archives.items()}
            voc_root, sbd_root = roots["voc"], roots.get("sbd")
        return {
            split: self._generate_examples(voc_root=voc_root, split=split, sbd_root=sbd_root)
            for split in self.builder_config.splits
        }

    def _generate_examples(self, voc_root, split: str, sbd_root=None):
        dataset = VOCDataset(voc_root, split, sbd_root=sbd_root, strict=self.strict)
        skipped = list(dataset.skipped)
        for i in dataset.ids:
            try:
                yield i, self._features(dataset, i)
            except DataError as e:
                if self.strict:
                    raise
                skipped.append((i, str(e)))
        if skipped:
            log.warning(
                "voc2012_segmentation/%s %s: %d bad examples skipped (first: %s)",
                self.builder_config.name,
                split,
                len(skipped),
                skipped[0][1],
            )
        self.skipped += skipped
        self.info.metadata.setdefault("skipped", {})[split] = [list(s) for s in skipped]

    @staticmethod
    def _features(dataset: VOCDataset, i: str) -> dict:
        """One record; raises DataError on bad input (voc.py's validation)."""
        ex = dataset.load(i)
        path = dataset.image_path(i)
        with Image.open(path) as im:
            as_is = im.format == "JPEG" and im.mode == "RGB"
        if as_is:
            image = path.read_bytes()
        else:  # e.g. CMYK or grey JPEG: store voc.read_image's RGB conversion losslessly
            buf = io.BytesIO()
            Image.fromarray(ex["image"]).save(buf, format="PNG")
            image = buf.getvalue()
        return {
            "image": image,
            "label": Image.fromarray(ex["label"], mode="L"),  # grey PNG of class indices
            "id": i,
            "objects": {
                "box": np.asarray(ex["boxes"], np.float32).reshape(-1, 4),
                "label": np.asarray(ex["box_labels"], np.int64),
            },
        }


def prepare(
    data_dir,
    manual_dir=None,
    config: str = "plain",
    strict: bool = True,
) -> Voc2012Segmentation:
    """Prepares (once) and returns the builder `voc2012_segmentation/<config>`.

    Args:
      data_dir: TFDS data folder to write into.
      manual_dir: folder with the VOC/SBD archives or extracted folders (None: download).
      config: "plain" or "aug".
      strict: raise on bad examples (True) or skip them (see Voc2012Segmentation).

    Returns:
      The prepared builder; `builder.as_data_source(split)` reads a split without TensorFlow.
    """
    builder = Voc2012Segmentation(config=config, data_dir=os.fspath(data_dir), strict=strict)
    dl_config = tfds.download.DownloadConfig(
        manual_dir=os.fspath(manual_dir) if manual_dir else None
    )
    builder.download_and_prepare(download_config=dl_config)
    return builder


def record_to_id(record: dict) -> str:
    """The image id of a record (str)."""
    rid = record["id"]
    return rid.decode() if isinstance(rid, bytes) else str(rid)


def record_to_example(record: dict) -> dict:
    """A record of `as_data_source` -> a voc.VOCDataset example: dict(id str, image uint8
    [H, W, 3], label uint8 [H, W], boxes float32 [N, 4], box_labels int32 [N])."""
    objects = record["objects"]
    return dict(
        id=record_to_id(record),
        image=np.asarray(record["image"], np.uint8),
        label=np.asarray(record["label"], np.uint8)[..., 0],
        boxes=np.asarray(objects["box"], np.float32).reshape(-1, 4),
        box_labels=np.asarray(objects["label"], np.int32).reshape(-1),
    )


class TFDSVOCDataset:
    """voc.VOCDataset's interface (ids, load, len, iteration, strict, skipped) over a prepared
    split, so loader.TrainLoader can read from it. `ids` are sorted (TFDS stores records in
    hashed order): for VOC's sorted split files that is VOCDataset's order, and the same seed
    then gives the same crops from either source.

    Args:
      data_dir: the TFDS data folder `prepare` wrote into.
      split: "train", "val" (config plain) or "train_aug", "val" (config aug).
      config: "plain" or "aug".
    """

    strict = True  # records were validated while preparing

    def __init__(self, data_dir, split: str, config: str = "plain"):
        builder = Voc2012Segmentation(config=config, data_dir=os.fspath(data_dir))
        if not builder.is_prepared():
            raise DataError(
                f"{builder.data_dir}: voc2012_segmentation/{config} is not prepared "
                "(run deconvnet_jax.data.tfds_voc.prepare first)"
            )
        if split not in builder.info.splits:
            raise DataError(
                f"voc2012_segmentation/{config} has no split {split!r} "
                f"(has {sorted(builder.info.splits)})"
            )
        self.split = split
        self.source = builder.as_data_source(split)
        skip = tfds.decode.SkipDecoding()
        ids_only = builder.as_data_source(split, decoders={"image": skip, "label": skip})
        self._index = {record_to_id(ids_only[k]): k for k in range(len(ids_only))}
        self.ids = sorted(self._index)
        self.skipped: list[tuple[str, str]] = [
            tuple(s) for s in builder.info.metadata.get("skipped", {}).get(split, [])
        ]

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, i: str) -> dict:
        """Example by id (voc.VOCDataset.load's format)."""
        return record_to_example(self.source[self._index[i]])

    def __getitem__(self, index: int) -> dict:
        return self.load(self.ids[index])

    def __iter__(self):
        for k in range(len(self)):
            yield self[k]


def main(argv=None) -> None:
    """`python -m deconvnet_jax.data.tfds_voc --data_dir D [--manual_dir M] [--config aug]`
    (the `tfds build` CLI imports TensorFlow; this does not)."""
    import argparse

    parser = argparse.ArgumentParser(description="Prepare voc2012_segmentation (no TensorFlow).")
    parser.add_argument("--data_dir", required=True, help="TFDS data folder to write into")
    parser.add_argument(
        "--manual_dir",
        default=None,
        help="folder with the archives or extracted folders (else: download)",
    )
    parser.add_argument("--config", default="plain", choices=("plain", "aug"))
    parser.add_argument("--lenient", action="store_true", help="skip bad examples (counted)")
    parser.add_argument("--debug", action="store_true", help="tracebacks of user errors")
    args = parser.parse_args(argv)
    errors.report_user_errors(_build, debug=lambda: args.debug)(args)


def _build(args) -> None:
    if args.manual_dir and not epath.Path(args.manual_dir).exists():
        raise DataError(f"--manual_dir {args.manual_dir}: no such folder")
    builder = prepare(args.data_dir, args.manual_dir, args.config, strict=not args.lenient)
    for name, split in builder.info.splits.items():
        print(f"{name}: {split.num_examples} examples")
    if builder.skipped:
        print(f"{len(builder.skipped)} bad examples skipped, e.g. {builder.skipped[0][1]}")
    print(f"prepared in {builder.data_dir}")


if __name__ == "__main__":
    main()
