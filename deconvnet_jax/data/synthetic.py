"""A small generated dataset in VOCdevkit/VOC2012 layout: the embedded default for demos and tests.

Each image holds 1-3 textured objects (ellipses, rectangles, triangles) of a few VOC classes on a
cluttered background (smooth noise plus grey distractor shapes); class masks are palette PNGs with a
void (255) band along object outlines, as in VOC; boxes go to Annotations XML; splits to
ImageSets/Segmentation/{train,val,trainval}.txt. Generated once (deterministic given the arguments)
into a cache folder, written to a temporary folder and renamed, so concurrent processes are safe.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import tempfile

import numpy as np
from etils import epath
from PIL import Image, ImageDraw
from scipy import ndimage

from deconvnet_jax import paths
from deconvnet_jax.data.voc import CLASS_NAMES, IGNORE_LABEL, voc_palette

VERSION = 1
# class id -> base RGB colour and texture
CLASSES = {
    1: ((220, 60, 50), "stripes"),  # aeroplane
    2: ((60, 170, 70), "dots"),  # bicycle
    3: ((50, 90, 220), "checker"),  # bird
    4: ((230, 200, 40), "plain"),  # boat
    5: ((180, 60, 200), "stripes"),  # bottle
}


def default_cache_dir() -> epath.Path:
    default = pathlib.Path.home() / ".cache" / "deconvnet_jax"
    return paths.as_path(os.environ.get("DECONVNET_CACHE", default))


def _texture(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A [size, size] pattern in [0.55, 1]."""
    yy, xx = np.mgrid[:size, :size]
    period = rng.integers(6, 12)
    if kind == "stripes":
        angle = rng.uniform(0, np.pi)
        t = (np.cos(angle) * xx + np.sin(angle) * yy) / period
        return 0.75 + 0.25 * np.sign(np.sin(2 * np.pi * t))
    if kind == "dots":
        r2 = (xx % period - period / 2) ** 2 + (yy % period - period / 2) ** 2
        return np.where(r2 < (period / 3) ** 2, 0.6, 1.0)
    if kind == "checker":
        return np.where(((xx // period) + (yy // period)) % 2 == 0, 0.6, 1.0)
    return np.ones((size, size))


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    coarse = rng.uniform(60, 190, size=(6, 6, 3))
    bg = np.stack([ndimage.zoom(coarse[..., c], size / 6, order=3) for c in range(3)], -1)
    bg = bg[:size, :size]
    bg += rng.normal(0, 12, size=(size, size, 3))
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(4, 10)):  # grey distractors: shapes that are not objects
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(8, 40, 2)
        grey = int(rng.integers(40, 220))
        draw.rectangle([x0, y0, x0 + w, y0 + h], fill=(grey, grey, grey))
    return np.asarray(img, np.float64)


def _shape_mask(
    size: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    w, h = (int(v) for v in rng.integers(size // 5, size // 2, 2))
    x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    kind = rng.integers(3)
    if kind == 0:
        draw.ellipse([x0, y0, x0 + w - 1, y0 + h - 1], fill=1)
    elif kind == 1:
        draw.rectangle([x0, y0, x0 + w - 1, y0 + h - 1], fill=1)
    else:
        draw.polygon([(x0 + w // 2, y0), (x0, y0 + h - 1), (x0 + w - 1, y0 + h - 1)], fill=1)
    mask = np.asarray(canvas, bool)
    ys, xs = np.nonzero(mask)
    return mask, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def generate_example(size: int, rng: np.random.Generator):
    """Returns (image uint8 [S, S, 3], label uint8 [S, S], boxes list of (cls, x0, y0, x1, y1))."""
    image = _background(size, rng)
    label = np.zeros((size, size), np.uint8)
    boxes = []
    for _ in range(rng.integers(1, 4)):
        cls = int(rng.integers(1, len(CLASSES) + 1))
        colour, texture = CLASSES[cls]
        mask, box = _shape_mask(size, rng)
        tint = np.asarray(colour, np.float64) * rng.uniform(0.85, 1.1)
        pattern = _texture(texture, size, rng)[..., None] * tint
        image[mask] = pattern[mask] + rng.normal(0, 8, size=(mask.sum(), 3))
        label[mask] = cls
        boxes.append((cls, *box))
    # VOC-style void band along every object outline.
    edges = np.zeros_like(label, bool)
    for c in np.unique(label):
        m = label == c
        edges |= ndimage.binary_dilation(m, iterations=1) & ~ndimage.binary_erosion(m, iterations=1)
    label[edges & (ndimage.grey_dilation(label, size=3) > 0)] = IGNORE_LABEL
    return np.clip(image, 0, 255).astype(np.uint8), label, boxes


def _xml(image_id: str, size: int, boxes) -> str:
    objects = "".join(
        f"<object><name>{CLASS_NAMES[c]}</name><difficult>0</difficult>"
        f"<bndbox><xmin>{x0 + 1}</xmin>"
        f"<ymin>{y0 + 1}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for c, x0, y0, x1, y1 in boxes
    )
    return (
        f"<annotation><filename>{image_id}.jpg</filename><size><width>{size}</width>"
        f"<height>{size}</height><depth>3</depth></size>{objects}</annotation>"
    )


def write_dataset(
    root: pathlib.Path, num_train: int, num_val: int, image_size: int, seed: int
) -> None:
    """Writes the dataset into `root` (which must not exist yet)."""
    for sub in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    palette = voc_palette().ravel().tolist()
    splits = {"train": [], "val": []}
    for k in range(num_train + num_val):
        split = "train" if k < num_train else "val"
        image_id = f"synth_{k:05d}"
        rng = np.random.default_rng([seed, k])
        image, label, boxes = generate_example(image_size, rng)
        Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        mask = Image.fromarray(label, mode="P")
        mask.putpalette(palette)
        mask.save(root / "SegmentationClass" / f"{image_id}.png")
        (root / "Annotations" / f"{image_id}.xml").write_text(_xml(image_id, image_size, boxes))
        splits[split].append(image_id)
    seg = root / "ImageSets" / "Segmentation"
    for name, ids in splits.items():
        (seg / f"{name}.txt").write_text("\n".join(ids) + "\n")
    (seg / "trainval.txt").write_text("\n".join(splits["train"] + splits["val"]) + "\n")


def ensure_dataset(
    cache_dir: str = "",
    num_train: int = 200,
    num_val: int = 40,
    image_size: int = 256,
    seed: int = 0,
) -> epath.Path:
    """Returns the root of the generated dataset, generating it on first use.

    Args:
      cache_dir: parent folder ("" = $DECONVNET_CACHE or ~/.cache/deconvnet_jax); local or a URL
        (written locally, then uploaded file by file, ``trainval.txt`` last: it marks completion).
      num_train, num_val: split sizes.
      image_size: side of the square images.
      seed: generation seed.

    Returns:
      Path of a VOCdevkit/VOC2012-layout folder.
    """
    key = f"v{VERSION}-{num_train}-{num_val}-{image_size}-{seed}"
    parent = paths.as_path(cache_dir) if cache_dir else default_cache_dir()
    root = parent / f"synthetic-{hashlib.sha1(key.encode()).hexdigest()[:10]}"
    marker = pathlib.PurePosixPath("ImageSets", "Segmentation", "trainval.txt")
    if (root / marker).is_file():
        return root
    remote = paths.is_remote(parent)
    if not remote:
        parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=".synthetic-", dir=None if remote else parent))
    try:
        write_dataset(tmp, num_train, num_val, image_size, seed)
        if remote:  # no atomic rename: the same bytes from any process, the marker last
            files = sorted(f.relative_to(tmp) for f in tmp.rglob("*") if f.is_file())
            for rel in sorted(files, key=lambda f: f == marker):
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes((tmp / rel).read_bytes())
            return root
        try:
            tmp.rename(root)
        except OSError:  # another process finished first
            if not (root / marker).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
