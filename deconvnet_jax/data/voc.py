"""PASCAL VOC 2012 (+ SBD) readers: images, class masks, object boxes, splits, class names, palette.

Layout read (VOCdevkit/VOC2012):
  JPEGImages/<id>.jpg, SegmentationClass/<id>.png (palette PNG, values = class indices, 255 = void),
  SegmentationObject/<id>.png (optional instance masks), Annotations/<id>.xml (optional boxes),
  ImageSets/Segmentation/<split>.txt.
SBD (benchmark_RELEASE/dataset): cls/<id>.mat (GTcls.Segmentation), inst/<id>.mat
  (GTinst.Segmentation), img/<id>.jpg, train.txt, val.txt.
The `train_aug` split is VOC train + SBD train + SBD val minus VOC val.

Every reader validates what it reads and raises `DataError` naming the file and the problem.
"""

from __future__ import annotations

import dataclasses
import io
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import numpy as np
from etils import epath
from PIL import Image, UnidentifiedImageError

from deconvnet_jax import paths
from deconvnet_jax.errors import UserError

CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
NUM_CLASSES = 21
IGNORE_LABEL = 255


class DataError(UserError, ValueError):
    """Bad input data; the message names the file and the problem."""


def voc_palette() -> np.ndarray:
    """The standard 256-entry VOC colormap (the devkit's bitget construction), uint8 [256, 3]."""
    palette = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


# Images with more pixels are refused by name (a decompression bomb, or a scan far larger than
# any canvas): 8192 x 8192. PIL's own limit (Image.MAX_IMAGE_PIXELS) is also reported by name.
MAX_IMAGE_PIXELS = 8192 * 8192


def _source(path: epath.Path):
    """What a reader opens: the local file name, or the bytes of a remote file (PIL, XML and
    scipy need a file; object stores have none)."""
    return io.BytesIO(path.read_bytes()) if paths.is_remote(path) else os.fspath(path)


def _open(path: epath.Path) -> Image.Image:
    try:
        img = Image.open(_source(path))  # reads the header only
        if img.size[0] * img.size[1] > MAX_IMAGE_PIXELS:
            raise DataError(
                f"{path}: {img.size[0]}x{img.size[1]} pixels is over the limit of "
                f"{MAX_IMAGE_PIXELS} (data.voc.MAX_IMAGE_PIXELS); shrink it first"
            )
        img.load()  # decode now: truncated files fail here, not later
        return img
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: a folder, not an image") from None
    except Image.DecompressionBombError as e:
        raise DataError(
            f"{path}: refused, over the limit of {MAX_IMAGE_PIXELS} pixels "
            f"(data.voc.MAX_IMAGE_PIXELS; PIL: {e})"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: corrupt or unreadable image ({e})") from None


def _to_uint8(img: Image.Image, path) -> Image.Image:
    """16-bit and 32-bit integer images scaled to 0..255 by their bit depth (PIL's convert would
    clip them at 255); float images in [0, 1] scaled by 255; other float images refused."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img).astype(np.int64)
        if a.min() < 0 or a.max() > 65535:
            raise DataError(f"{path}: {img.mode} image with values outside 0..65535: refused")
        # 16-bit PNGs (PIL opens them as I;16 or I): round(a * 255 / 65535), exactly in integers
        return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), mode="L")
    if img.mode == "F":
        a = np.asarray(img, np.float64)
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise DataError(f"{path}: float image with values outside [0, 1]: refused")
        return Image.fromarray(np.rint(a * 255).astype(np.uint8), mode="L")
    return img


def read_image(path) -> np.ndarray:
    """Reads an image as uint8 RGB [H, W, 3] (grayscale, RGBA, CMYK, palette converted; 16-bit
    and [0, 1] float images scaled, see ``_to_uint8``; over MAX_IMAGE_PIXELS refused)."""
    img = _to_uint8(_open(paths.as_path(path)), path)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, np.uint8)


def validate_labels(label: np.ndarray, source) -> np.ndarray:
    """Checks that a class map holds only 0..20 and 255; raises DataError naming `source`."""
    bad = (label > NUM_CLASSES - 1) & (label != IGNORE_LABEL)
    if bad.any():
        values = sorted(set(np.unique(label[bad]).tolist()))[:10]
        raise DataError(f"{source}: label values {values} outside 0..20 and 255")
    return label


def read_mask(path) -> np.ndarray:
    """Reads a VOC class mask (palette PNG: pixel values are class indices) as uint8 [H, W]."""
    path = paths.as_path(path)
    img = _open(path)
    if img.mode not in ("P", "L"):
        raise DataError(
            f"{path}: class mask must be a palette (P) or grayscale (L) PNG, got mode {img.mode}"
        )
    return validate_labels(np.asarray(img, np.uint8), path)


def read_sbd_mat(path, key: str) -> np.ndarray:
    """Reads SBD's cls/inst .mat (GTcls / GTinst struct, field Segmentation) as uint8 [H, W]."""
    import scipy.io

    path = paths.as_path(path)
    try:
        mat = scipy.io.loadmat(_source(path), squeeze_me=True, struct_as_record=False)
        seg = np.asarray(mat[key].Segmentation)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as e:  # noqa: BLE001  (scipy raises many types on bad files)
        raise DataError(f"{path}: unreadable SBD .mat ({type(e).__name__}: {e})") from None
    if seg.ndim != 2 or seg.dtype.kind not in "uif":
        raise DataError(
            f"{path}: {key}.Segmentation must be a 2-D numeric array, got {seg.dtype} {seg.shape}"
        )
    if seg.dtype != np.uint8:  # a cast would wrap 256 -> 0 silently: check first
        if seg.size and (seg.min() < 0 or seg.max() > 255 or not np.all(seg == np.round(seg))):
            raise DataError(f"{path}: {key}.Segmentation holds values outside the integers 0..255")
        seg = seg.astype(np.uint8)
    return seg


def parse_boxes_xml(path) -> tuple[np.ndarray, np.ndarray]:
    """Object boxes of a VOC Annotations XML: (boxes float32 [N, 4] as x0, y0, x1, y1 with
    exclusive max in 0-based pixels, labels int32 [N] in 1..20)."""
    path = paths.as_path(path)
    try:
        root = ET.parse(_source(path)).getroot()
    except (ET.ParseError, OSError) as e:
        raise DataError(f"{path}: empty or unparsable XML ({e})") from None
    boxes, labels = [], []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in CLASS_NAMES[1:]:
            raise DataError(f"{path}: unknown object class {name!r}")
        bb = obj.find("bndbox")
        try:
            x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            raise DataError(f"{path}: object {name!r} has a missing or malformed bndbox") from None
        if x1 < x0 or y1 < y0:
            raise DataError(
                f"{path}: object {name!r} has an inverted bndbox ({x0:g}, {y0:g}, {x1:g}, {y1:g})"
            )
        boxes.append((x0 - 1, y0 - 1, x1, y1))  # VOC boxes are 1-based inclusive
        labels.append(CLASS_NAMES.index(name))
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int32)


def _present_values(a: np.ndarray) -> np.ndarray:
    """Sorted values present in a uint8 map (np.unique without the sort)."""
    return np.flatnonzero(np.bincount(a.ravel(), minlength=256))


def boxes_from_instances(inst: np.ndarray, cls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of every instance id (1..254) in an instance map, labelled by the majority class."""
    boxes, labels = [], []
    for i in _present_values(inst):
        if i == 0 or i == IGNORE_LABEL:
            continue
        ys, xs = np.nonzero(inst == i)
        classes = cls[ys, xs]
        classes = classes[(classes > 0) & (classes < NUM_CLASSES)]
        if classes.size == 0:
            continue
        boxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
        labels.append(np.bincount(classes).argmax())
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int32)


def boxes_from_class_mask(cls: np.ndarray, min_pixels: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of the 8-connected components of each class in a class map (no instance data)."""
    from scipy import ndimage

    boxes, labels = [], []
    for c in _present_values(cls):
        if c == 0 or c == IGNORE_LABEL:
            continue
        comp, _ = ndimage.label(cls == c, structure=np.ones((3, 3)))
        for sl, size in zip(ndimage.find_objects(comp), np.bincount(comp.ravel())[1:]):
            if size >= min_pixels:
                boxes.append((sl[1].start, sl[0].start, sl[1].stop, sl[0].stop))
                labels.append(int(c))
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int32)


def read_split(path) -> list[str]:
    """Image ids of a split file (first column of each non-empty line)."""
    path = paths.as_path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


@dataclasses.dataclass(frozen=True)
class _Source:
    image: epath.Path
    label: epath.Path
    label_kind: str  # "png" | "sbd"
    xml: epath.Path | None
    instances: epath.Path | None


class VOCDataset:
    """Random-access VOC 2012 (+ SBD) segmentation examples.

    Args:
      root: the VOCdevkit/VOC2012 folder.
      split: a file name under ImageSets/Segmentation ("train", "val", "trainval", ...) or
        "train_aug" (needs sbd_root).
      sbd_root: SBD's `dataset` folder (with cls/, inst/, img/, train.txt, val.txt).
      strict: raise on bad examples (default); otherwise skip them, counted in `skipped`.

    An example is a dict(id, image uint8 [H, W, 3], label uint8 [H, W], boxes float32 [N, 4]
    (x0, y0, x1, y1), box_labels int32 [N] in 1..20). Boxes come from the XML when present,
    else from instance masks, else from connected components of each class.
    """

    def __init__(self, root, split: str = "train", sbd_root=None, strict: bool = True):
        self.root = paths.as_path(root)
        self.sbd_root = paths.as_path(sbd_root) if sbd_root else None
        self.split = split
        self.strict = strict
        self.skipped: list[tuple[str, str]] = []  # (id, reason) of examples skipped (lenient mode)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: VOC root folder not found")
        self._listings: dict[str, frozenset[str]] = {}  # remote roots: folder -> file names
        self._sources = self._resolve(split)
        self.ids = list(self._sources)
        self._box_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    # -- split resolution -------------------------------------------------------------------
    def _is_file(self, path: epath.Path) -> bool:
        """``path.is_file()``; on an object store one listing per folder instead of two
        requests per file (a split checks up to four files per id)."""
        if not paths.is_remote(path):
            return path.is_file()
        folder = os.fspath(path.parent)
        if folder not in self._listings:
            parent = path.parent
            self._listings[folder] = (
                frozenset(p.name for p in parent.iterdir()) if parent.is_dir() else frozenset()
            )
        return path.name in self._listings[folder]

    def _voc_source(self, i: str) -> _Source:
        xml = self.root / "Annotations" / f"{i}.xml"
        inst = self.root / "SegmentationObject" / f"{i}.png"
        return _Source(
            self.root / "JPEGImages" / f"{i}.jpg",
            self.root / "SegmentationClass" / f"{i}.png",
            "png",
            xml if self._is_file(xml) else None,
            inst if self._is_file(inst) else None,
        )

    def _sbd_source(self, i: str) -> _Source:
        img = self.sbd_root / "img" / f"{i}.jpg"
        if not self._is_file(img):
            img = self.root / "JPEGImages" / f"{i}.jpg"
        xml = self.root / "Annotations" / f"{i}.xml"
        inst = self.sbd_root / "inst" / f"{i}.mat"
        return _Source(
            img,
            self.sbd_root / "cls" / f"{i}.mat",
            "sbd",
            xml if self._is_file(xml) else None,
            inst if self._is_file(inst) else None,
        )

    def _resolve(self, split: str) -> dict[str, _Source]:
        seg = self.root / "ImageSets" / "Segmentation"
        if split == "train_aug":
            if self.sbd_root is None:
                raise DataError("split 'train_aug' needs sbd_root (SBD's dataset folder)")
            voc_val = set(read_split(seg / "val.txt"))
            sources = {i: self._voc_source(i) for i in read_split(seg / "train.txt")}
            for name in ("train.txt", "val.txt"):
                for i in read_split(self.sbd_root / name):
                    if i not in voc_val and i not in sources:
                        sources[i] = self._sbd_source(i)
        else:
            sources = {i: self._voc_source(i) for i in read_split(seg / f"{split}.txt")}
        valid = {}
        for i, src in sources.items():
            missing = [p for p in (src.image, src.label) if not self._is_file(p)]
            if missing:
                self._bad(i, f"split {split!r} lists id {i!r} but {missing[0]} does not exist")
                continue
            valid[i] = src
        return valid

    def _bad(self, i: str, reason: str) -> None:
        if self.strict:
            raise DataError(reason)
        self.skipped.append((i, reason))

    # -- access ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, i: str) -> epath.Path:
        """The image file of example `i` (VOC JPEGImages or SBD img)."""
        return self._sources[i].image

    def load(self, i: str) -> dict:
        """Reads and validates one example by id (raises DataError on bad input).

        Boxes are computed once per id and cached (they depend only on the files): the
        connected-components fallback costs as much as decoding the image.
        """
        src = self._sources[i]
        image = read_image(src.image)
        label = (
            read_mask(src.label)
            if src.label_kind == "png"
            else validate_labels(read_sbd_mat(src.label, "GTcls"), src.label)
        )
        if label.shape != image.shape[:2]:
            raise DataError(
                f"{src.label}: mask size {label.shape[1]}x{label.shape[0]} differs from image "
                f"{src.image} size {image.shape[1]}x{image.shape[0]}"
            )
        cached = self._box_cache.get(i)
        if cached is None:
            cached = self._boxes(src, label)
            for a in cached:
                a.setflags(write=False)  # shared between calls
            self._box_cache[i] = cached
        boxes, box_labels = cached
        return dict(id=i, image=image, label=label, boxes=boxes, box_labels=box_labels)

    @staticmethod
    def _boxes(src: _Source, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = label.shape
        if src.xml is not None:
            boxes, box_labels = parse_boxes_xml(src.xml)
            clipped = np.clip(boxes, 0, [w, h, w, h])
            empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
            if empty.any():
                raise DataError(
                    f"{src.xml}: box {boxes[np.argmax(empty)].tolist()} lies outside "
                    f"the {w}x{h} image"
                )
            return clipped.astype(np.float32), box_labels
        if src.instances is not None:
            inst = (
                read_mask_raw(src.instances)
                if src.label_kind == "png"
                else read_sbd_mat(src.instances, "GTinst")
            )
            if inst.shape != label.shape:
                raise DataError(
                    f"{src.instances}: instance map size "
                    f"{inst.shape[1]}x{inst.shape[0]} differs from class mask "
                    f"size {w}x{h}"
                )
            return boxes_from_instances(inst, label)
        return boxes_from_class_mask(label)

    def __getitem__(self, index: int) -> dict | None:
        """Example `index`; in lenient mode a bad example returns None and is counted."""
        i = self.ids[index]
        try:
            return self.load(i)
        except DataError as e:
            if self.strict:
                raise
            if all(i != j for j, _ in self.skipped):  # count each bad example once
                self.skipped.append((i, str(e)))
            return None

    def __iter__(self) -> Iterator[dict]:
        for k in range(len(self)):
            ex = self[k]
            if ex is not None:
                yield ex


def read_mask_raw(path) -> np.ndarray:
    """Reads an index PNG without class validation (instance maps: ids 1..N, 255 = void)."""
    return np.asarray(_open(paths.as_path(path)), np.uint8)
