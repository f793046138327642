"""Segment image files: palette PNG masks and image | prediction overlays (predict.py's library).

Any image size works (images larger than the largest canvas are shrunk for the network and the
mask is resized back); grayscale, RGBA, CMYK and palette inputs are converted to RGB
(``data.voc.read_image``: 16-bit and float images scaled, images over
``data.voc.MAX_IMAGE_PIXELS`` refused). Every per-file failure (unreadable or refused image, an
output that cannot be written, e.g. a folder named ``<stem>.png``) is reported by name and the
batch goes on.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

import numpy as np
from etils import epath
from PIL import Image
from tqdm import tqdm

from deconvnet_jax import inference, paths, viz
from deconvnet_jax.data.voc import DataError, read_image
from deconvnet_jax.errors import UserError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def list_images(path) -> list[epath.Path]:
    """One image file, or the image files of a folder (sorted, by suffix; local or a URL)."""
    path = paths.as_path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    raise FileNotFoundError(f"{path}: no such image file or folder")


def final_variant(variants: Iterable[str]) -> str:
    """The most complete variant available (the last of the paper's order)."""
    return [v for v in inference.VARIANTS if v in tuple(variants)][-1]


def predict_image(
    predictor: inference.Predictor,
    image: np.ndarray,
    image_id: str,
    variant: str = "DeconvNet",
    combine: Callable | None = None,
    dense_crf: Callable | None = None,
    crf_params: dict | None = None,
    rule: str = "product",
) -> np.ndarray:
    """Label map int32 [H, W] of one uint8 RGB image [H, W, 3] for one variant."""
    prep = predictor.prepare(image, image_id)
    maps = inference.variant_maps(predictor.scores([prep]), (variant,), rule, combine)
    out = np.asarray(maps[variant])[0]
    if variant.endswith("+CRF"):
        out = inference.crf_labels(prep, out, dense_crf, crf_params or {})
    return inference.to_original(prep, out)


def predict_files(
    predictor: inference.Predictor,
    images: list[epath.Path],
    out_dir,
    variant: str = "DeconvNet",
    **kwargs,
) -> dict:
    """Writes <out>/<stem>.png (VOC palette) and <out>/<stem>_overlay.jpg for every image.

    Args:
      kwargs: ``predict_image``'s combine, dense_crf, crf_params, rule.

    Returns:
      dict(written=[stems], failed=[(path, reason)]).
    """
    out_dir = paths.as_path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out_dir}: cannot create the output folder ({e})") from None
    written, failed = [], []
    for path in tqdm(images, desc="predict", unit="img"):
        try:
            image = read_image(path)
            labels = predict_image(predictor, image, path.stem, variant, **kwargs)
            _write(out_dir, path.stem, image, labels)
        except (DataError, OSError) as e:
            reason = str(e) if isinstance(e, DataError) else f"cannot write output ({e})"
            log.error("skipping %s: %s", path, reason)
            failed.append((str(path), reason))
            continue
        written.append(path.stem)
    return dict(written=written, failed=failed)


def _write(out_dir: epath.Path, stem: str, image: np.ndarray, labels: np.ndarray) -> None:
    paths.write_image(viz.palette_image(labels), out_dir / f"{stem}.png")
    overlay = Image.fromarray(viz.side_by_side(image, None, labels))
    paths.write_image(overlay, out_dir / f"{stem}_overlay.jpg")
