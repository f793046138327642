"""Small generated VOC / SBD trees for the data tests (helpers only; no tests here).

`make_voc_tree` writes a generated VOCdevkit/VOC2012-layout tree (deconvnet_jax.data.synthetic);
`make_grey_tree` one whose image k is the uniform grey 10 k + 5, so a crop tells which example it
came from; `write_sbd_mat` an SBD cls/inst .mat (GTcls / GTinst structs); `break_file` the
bad-input cases.
"""

from __future__ import annotations

import pathlib

import numpy as np
import scipy.io
from PIL import Image

from deconvnet_jax.data import synthetic
from deconvnet_jax.data.voc import voc_palette


def make_voc_tree(
    root: pathlib.Path, num_train: int = 6, num_val: int = 2, size: int = 96, seed: int = 0
) -> pathlib.Path:
    """A generated VOC-layout tree (ids synth_00000 ...; XML boxes for every image)."""
    synthetic.write_dataset(root, num_train, num_val, size, seed)
    return root


def save_mask(path: pathlib.Path, label: np.ndarray) -> None:
    """Writes class indices as a VOC palette PNG."""
    img = Image.fromarray(np.asarray(label, np.uint8), mode="P")
    img.putpalette(voc_palette().ravel().tolist())
    img.save(path)


def write_split(root: pathlib.Path, name: str, ids) -> None:
    seg = root / "ImageSets" / "Segmentation"
    seg.mkdir(parents=True, exist_ok=True)
    (seg / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))


def make_grey_tree(root: pathlib.Path, n: int, size: int = 24) -> pathlib.Path:
    """VOC tree of n uniform grey images (image k = grey 10 k + 5, label = 1 + k % 20, no XML:
    the box is the whole image, from connected components); split 'train' = all ids."""
    for sub in ("JPEGImages", "SegmentationClass"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = [f"g{k:03d}" for k in range(n)]
    for k, i in enumerate(ids):
        Image.fromarray(np.full((size, size, 3), 10 * k + 5, np.uint8)).save(
            root / "JPEGImages" / f"{i}.jpg", quality=95
        )
        save_mask(root / "SegmentationClass" / f"{i}.png", np.full((size, size), 1 + k % 20))
    write_split(root, "train", ids)
    write_split(root, "val", ids)
    return root


def grey_index(image: np.ndarray) -> int:
    """Which grey-tree example a (caffe_bgr-normalised) crop came from."""
    from deconvnet_jax.data.crops import CAFFE_BGR_MEAN

    value = float(np.mean(image[..., 0] + CAFFE_BGR_MEAN[0]))  # B channel back to 0..255
    return round((value - 5) / 10)


def write_sbd_mat(path: pathlib.Path, key: str, seg: np.ndarray) -> None:
    """An SBD .mat: struct `key` (GTcls / GTinst) with field Segmentation (as SBD has)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = {"Segmentation": seg, "Boundaries": np.zeros((1, 1), object)}
    if key == "GTcls":
        fields["CategoriesPresent"] = np.unique(seg[(seg > 0) & (seg < 255)]).astype(np.uint8)
    else:
        fields["Categories"] = np.ones(int(seg.max()), np.uint8)
    scipy.io.savemat(str(path), {key: fields})


def break_file(path: pathlib.Path, how: str) -> None:
    """Damages a file: 'truncate' (keep the first half), 'garbage' (not an image), 'empty'."""
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(b"this is not an image " * 20)
    elif how == "empty":
        path.write_bytes(b"")
    else:
        raise ValueError(how)
