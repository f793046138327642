"""Image -> class scores and label maps: proposal or whole-image mode, EDeconvNet, CRF.

``Predictor`` owns the host side of inference: it reads proposals for an image, selects them
(config.infer.min_size / top_k), resizes images larger than the largest canvas down (with a
warning), normalises and pads the image to its canvas, and falls back to whole-image mode (with a
warning) when no proposal survives. Batches of prepared images go through the jitted functions of
``proposals.segment``; ``variants`` turns the scores into the paper's variants:

  DeconvNet        argmax of the aggregated DeconvNet scores (uncovered pixels: background)
  DeconvNet+CRF    dense CRF over softmax(DeconvNet scores)
  EDeconvNet       ``postprocess.ensemble.combine(DeconvNet, FCN-8s, rule)``
  EDeconvNet+CRF   dense CRF over the EDeconvNet probabilities
FCN-8s always runs on the whole image (as in the release).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from deconvnet_jax.data.crops import normalize
from deconvnet_jax.proposals import segment, sources

log = logging.getLogger(__name__)

VARIANTS = ("DeconvNet", "DeconvNet+CRF", "EDeconvNet", "EDeconvNet+CRF")


@dataclasses.dataclass
class Prepared:
    """One image ready for the jitted functions.

    Attributes:
      image_id: name used in messages and output files.
      image: uint8 RGB [h, w, 3] at the processing resolution.
      orig_hw: (H, W) of the image as read (differs from image.shape when it was shrunk).
      canvas: side of the square canvas.
      boxes: float32 [K, 4] proposals at the processing resolution, valid: bool [K].
      whole: True for whole-image mode (by config, or the fallback).
    """

    image_id: str
    image: np.ndarray
    orig_hw: tuple[int, int]
    canvas: int
    boxes: np.ndarray
    valid: np.ndarray
    whole: bool


@dataclasses.dataclass
class Net:
    """A network and its variables: ``apply(variables, x [B, H, W, 3]) -> logits [B, H, W, C]``."""

    apply: Callable[..., jax.Array]
    variables: Any
    normalization: str = "caffe_bgr"


def fit_to_canvas(image: np.ndarray, max_side: int, image_id: str = "") -> tuple[np.ndarray, float]:
    """Shrinks an image whose longer side exceeds max_side (bilinear, with a warning).

    Returns:
      (image uint8 [h, w, 3], scale = new / old side; 1.0 when unchanged).
    """
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image, 1.0
    scale = max_side / max(h, w)
    nh, nw = max(1, min(max_side, round(h * scale))), max(1, min(max_side, round(w * scale)))
    log.warning(
        "%s: %dx%d image is larger than the largest canvas (%d); resized down to %dx%d",
        image_id,
        w,
        h,
        max_side,
        nw,
        nh,
    )
    return cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR), nw / w


class Predictor:
    """Proposal (or whole-image) inference of DeconvNet, optionally ensembled with FCN-8s.

    Args:
      net: the DeconvNet (``Net``).
      infer_config: config.infer (configs/infer.py).
      source: a proposal source (default: ``sources.make_source(infer_config)`` in proposals mode).
      fcn: the FCN-8s (``Net``) for the EDeconvNet variants, or None.
    """

    def __init__(
        self,
        net: Net,
        infer_config,
        source: sources.ProposalSource | None = None,
        fcn: Net | None = None,
    ):
        self.net, self.fcn, self.cfg = net, fcn, infer_config
        if infer_config.mode not in ("proposals", "whole"):
            raise ValueError(
                f"config.infer.mode must be 'proposals' or 'whole', got {infer_config.mode!r}"
            )
        self.canvases = segment.validate_canvas_sizes(infer_config.canvas_sizes)
        self.top_k = int(infer_config.top_k)
        if self.top_k < 1:
            raise ValueError(f"config.infer.top_k must be >= 1, got {self.top_k}")
        if infer_config.mode == "proposals" and source is None:
            source = sources.make_source(infer_config)
        self.source = source
        self._segment = segment.make_segment_fn(
            net.apply,
            int(infer_config.chunk_size),
            infer_config.aggregate,
            infer_config.resize_impl,
        )
        self._whole = segment.make_whole_image_fn(net.apply)
        self._fcn_whole = segment.make_whole_image_fn(fcn.apply) if fcn else None

    # -- host side ------------------------------------------------------------------------------
    def prepare(
        self, image: np.ndarray, image_id: str = "", gt_boxes: np.ndarray | None = None
    ) -> Prepared:
        """Proposals, selection, shrinking and padding of one uint8 RGB image [H, W, 3]."""
        orig_hw = image.shape[:2]
        small, scale = fit_to_canvas(image, max(self.canvases), image_id)
        canvas = segment.canvas_for(*small.shape[:2], self.canvases)
        boxes = np.zeros((0, 4), np.float32)
        if self.cfg.mode == "proposals":
            props = self.source(image, image_id=image_id, gt_boxes=gt_boxes)
            props = sources.select_proposals(
                props, orig_hw, self.cfg.min_size, self.top_k, image_id
            )
            boxes = props.boxes * scale
            if len(boxes) == 0:
                log.warning(
                    "%s: no proposal with a side >= %s survives selection; using "
                    "whole-image mode for this image",
                    image_id,
                    self.cfg.min_size,
                )
        padded, valid = segment.pad_boxes(boxes, self.top_k)
        return Prepared(image_id, small, orig_hw, canvas, padded, valid, whole=len(boxes) == 0)

    def _canvas_batch(self, batch: list[Prepared], normalization: str) -> np.ndarray:
        canvas = batch[0].canvas
        return np.stack(
            [segment.pad_image(normalize(p.image, normalization), canvas) for p in batch]
        )

    # -- device side --------------------------------------------------------------------------
    def scores(self, batch: list[Prepared]) -> dict[str, jax.Array]:
        """The batch's class scores on its canvas (every item must share one canvas).

        Returns:
          dict(deconv=float32 [B, P, P, C], count=int32 [B, P, P] (proposals covering each pixel;
          1 inside the image in whole-image mode), fcn=float32 [B, P, P, C] when an FCN is set).
        """
        if len({p.canvas for p in batch}) != 1:
            raise ValueError("a batch must share one canvas size")
        images = jnp.asarray(self._canvas_batch(batch, self.net.normalization))
        hw = np.array([p.image.shape[:2] for p in batch], np.int32)
        whole = np.array([p.whole for p in batch])
        canvas = batch[0].canvas
        rows = np.arange(canvas)[None, :, None] < hw[:, 0, None, None]  # [B, P, 1]
        cols = np.arange(canvas)[None, None, :] < hw[:, 1, None, None]  # [B, 1, P]
        inside = jnp.asarray(rows & cols)  # [B, P, P]
        out = {}
        if whole.all():
            out["deconv"], out["count"] = (
                self._whole(self.net.variables, images),
                inside.astype(jnp.int32),
            )
        else:
            boxes = np.stack([p.boxes for p in batch])
            valid = np.stack([p.valid for p in batch])
            out["deconv"], out["count"] = self._segment(
                self.net.variables, images, hw, boxes, valid
            )
            if whole.any():
                w = jnp.asarray(whole)[:, None, None]
                out["deconv"] = jnp.where(
                    w[..., None], self._whole(self.net.variables, images), out["deconv"]
                )
                out["count"] = jnp.where(w, inside.astype(jnp.int32), out["count"])
        if self.fcn is not None:
            fcn_in = (
                images
                if self.fcn.normalization == self.net.normalization
                else jnp.asarray(self._canvas_batch(batch, self.fcn.normalization))
            )
            out["fcn"] = self._fcn_whole(self.fcn.variables, fcn_in)
        return out


@jax.jit
def _labels(scores, count):
    return segment.labels_from_scores(scores, count)


def variant_maps(
    out: dict[str, jax.Array],
    names: tuple[str, ...],
    rule: str = "product",
    combine: Callable | None = None,
) -> dict[str, jax.Array]:
    """Device-side maps of each variant: int32 labels [B, P, P] for DeconvNet / EDeconvNet,
    float32 probabilities [B, P, P, C] for the +CRF variants (the CRF runs on the host).

    Args:
      out: ``Predictor.scores`` output.
      names: variants wanted (a subset of VARIANTS); the E* ones need out["fcn"].
      combine: ``postprocess.ensemble.combine`` (passed in so a caller can substitute it).
    """
    maps = {}
    if "DeconvNet" in names:
        maps["DeconvNet"] = _labels(out["deconv"], out["count"])
    if "DeconvNet+CRF" in names:
        maps["DeconvNet+CRF"] = jax.nn.softmax(out["deconv"], axis=-1)
    if any(n.startswith("EDeconvNet") for n in names):
        probs = combine(out["deconv"], out["fcn"], rule)
        if "EDeconvNet" in names:
            maps["EDeconvNet"] = jnp.argmax(probs, -1).astype(jnp.int32)
        if "EDeconvNet+CRF" in names:
            maps["EDeconvNet+CRF"] = probs
    return maps


def crf_labels(
    prepared: Prepared, probs: np.ndarray, dense_crf: Callable, crf_params: dict
) -> np.ndarray:
    """Dense CRF of one image: probs [P, P, C] on its canvas -> labels int32 [h, w]."""
    h, w = prepared.image.shape[:2]
    image = np.require(prepared.image, np.uint8, ["C", "W"])  # pydensecrf rejects read-only buffers
    q = dense_crf(image, np.ascontiguousarray(probs[:h, :w]), **crf_params)
    return np.argmax(q, -1).astype(np.int32)


def to_original(prepared: Prepared, labels: np.ndarray) -> np.ndarray:
    """Labels at the processing resolution (canvas or [h, w]) -> [H, W] of the image as read."""
    h, w = prepared.image.shape[:2]
    labels = np.asarray(labels)[:h, :w]
    if (h, w) == tuple(prepared.orig_hw):
        return labels
    oh, ow = prepared.orig_hw
    return cv2.resize(labels.astype(np.uint8), (ow, oh), interpolation=cv2.INTER_NEAREST).astype(
        np.int32
    )
