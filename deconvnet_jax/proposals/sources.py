"""Object-proposal sources behind one interface, and the release's proposal selection.

Every source is a callable ``source(image, image_id=None, gt_boxes=None) -> Proposals`` where
``image`` is uint8 RGB [H, W, 3] and ``Proposals.boxes`` is float32 [N, 4] as (x0, y0, x1, y1) in
pixels with exclusive max (pixel columns x0 .. x1-1), ``Proposals.scores`` float32 [N]
(higher = better). Sources:

  selective_search  OpenCV-contrib ``cv2.ximgproc.segmentation`` (fast or quality mode); no scores
                    in OpenCV, so the score is the rank (1 for the first region, falling to 0).
                    OpenCV ranks regions with C ``rand()``; it is seeded through libc first, so
                    the output is a function of the image.
  edge_boxes        Edge Boxes (``cv2.ximgproc.createEdgeBoxes``) on structured edges, which need
                    the user's model file (``model.yml.gz`` of opencv_extra's ximgproc testdata).
  precomputed       a file of boxes per image id (format below).
  ground_truth      the image's object boxes (an oracle, for analysis), optionally enlarged.
  grid              square windows of several sizes on a regular grid, plus the whole image.

Precomputed file format (one of):
  .npz   one array per image id: key = image id, value float [N, 4] (x0, y0, x1, y1) or [N, 5]
         (x0, y0, x1, y1, score).
  .json  ``{"<image id>": [[x0, y0, x1, y1], ...] or [[x0, y0, x1, y1, score], ...], ...}``.
  Without a score column the file's order is the ranking (first = best). Coordinates are pixels,
  exclusive max, like everywhere in this package. An image id missing from the file gives no
  proposals (inference then falls back to the whole image, with a warning).

Selection (``select_proposals``, the release): clip to the image, drop non-finite and zero-area
boxes, drop boxes whose short side is under ``min_size`` (112), keep the ``top_k`` (50) best.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import json
import logging
import threading
from typing import NamedTuple, Protocol, Sequence

import cv2
import numpy as np

from deconvnet_jax import paths
from deconvnet_jax.data.voc import DataError

log = logging.getLogger(__name__)

SOURCES = ("selective_search", "edge_boxes", "precomputed", "ground_truth", "grid")


class Proposals(NamedTuple):
    """Boxes float32 [N, 4] (x0, y0, x1, y1; exclusive max) and scores float32 [N]."""

    boxes: np.ndarray
    scores: np.ndarray


class ProposalSource(Protocol):
    name: str

    def __call__(
        self, image: np.ndarray, image_id: str | None = None, gt_boxes: np.ndarray | None = None
    ) -> Proposals: ...


def _empty() -> Proposals:
    return Proposals(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))


def _rank_scores(n: int) -> np.ndarray:
    """1 for the first of n, falling linearly towards 0 (ranking without scores)."""
    return (1.0 - np.arange(n, dtype=np.float32) / max(n, 1)).astype(np.float32)


def _xywh_to_xyxy(rects: np.ndarray) -> np.ndarray:
    rects = np.asarray(rects, np.float32).reshape(-1, 4)
    return np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)


# --- selective search ----------------------------------------------------------------------------
_C_RAND_LOCK = threading.Lock()


def _seed_c_rand(seed: int) -> None:
    """Seeds C rand(), which OpenCV's selective search uses to rank its regions."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c")).srand(ctypes.c_uint(seed))
    except (OSError, AttributeError, TypeError):  # no libc found: the ranking stays random
        log.debug("could not seed C rand(); selective search ranking is not reproducible")


class SelectiveSearch:
    """OpenCV selective search. ``mode``: "fast" or "quality"; ``max_boxes`` caps the output.

    OpenCV's ranking is random (level x C ``rand()``, as in the paper); libc's ``srand(seed)``
    is called before every run so the result is a function of the image (where libc is found);
    runs are serialised by a lock because rand() is process-wide state.
    """

    name = "selective_search"

    def __init__(self, mode: str = "fast", max_boxes: int = 2000, seed: int = 0):
        if mode not in ("fast", "quality"):
            raise ValueError(f"selective search mode must be 'fast' or 'quality', got {mode!r}")
        self.mode, self.max_boxes, self.seed = mode, max_boxes, seed

    def __call__(self, image, image_id=None, gt_boxes=None) -> Proposals:
        ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
        ss.setBaseImage(np.ascontiguousarray(image[..., ::-1]))  # OpenCV expects BGR
        if self.mode == "fast":
            ss.switchToSelectiveSearchFast()
        else:
            ss.switchToSelectiveSearchQuality()
        with _C_RAND_LOCK:
            _seed_c_rand(self.seed)
            rects = ss.process()[: self.max_boxes]  # [N, 4] (x, y, w, h), best first
        boxes = _xywh_to_xyxy(rects)
        return Proposals(boxes, _rank_scores(len(boxes)))


# --- Edge Boxes ----------------------------------------------------------------------------------
class EdgeBoxes:
    """Edge Boxes on structured-forest edges (the release's proposals; the paper ranks 2000).

    Args:
      model_path: the structured edge detection model (``model.yml.gz`` from opencv_extra,
        testdata/cv/ximgproc/model.yml.gz). Nothing is downloaded: a missing file is an error.
      max_boxes: proposals returned (best first); alpha, beta: Edge Boxes' step and NMS settings.
    """

    name = "edge_boxes"

    def __init__(
        self,
        model_path: str,
        max_boxes: int = 2000,
        alpha: float = 0.65,
        beta: float = 0.75,
        min_score: float = 0.01,
    ):
        path = paths.as_path(model_path) if model_path else None
        if path is None or not path.is_file():
            raise FileNotFoundError(
                f"Edge Boxes needs a structured edge model file; {model_path or '(empty path)'!s} "
                "not found. Set config.infer.edge_model to opencv_extra's "
                "testdata/cv/ximgproc/model.yml.gz (or use another proposal source)"
            )
        with paths.local_copy(path) as local:  # OpenCV reads a local file name
            self.detector = cv2.ximgproc.createStructuredEdgeDetection(str(local))
        self.max_boxes, self.alpha, self.beta, self.min_score = max_boxes, alpha, beta, min_score

    def edges(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Thinned structured edges and their orientation, float32 [H, W] each."""
        edges = self.detector.detectEdges(image.astype(np.float32) / 255.0)  # RGB in [0, 1]
        orientation = self.detector.computeOrientation(edges)
        return self.detector.edgesNms(edges, orientation), orientation

    def __call__(self, image, image_id=None, gt_boxes=None) -> Proposals:
        edges, orientation = self.edges(image)
        return boxes_from_edges(
            edges, orientation, self.max_boxes, self.alpha, self.beta, self.min_score
        )


def boxes_from_edges(
    edges: np.ndarray,
    orientation: np.ndarray,
    max_boxes: int = 2000,
    alpha: float = 0.65,
    beta: float = 0.75,
    min_score: float = 0.01,
) -> Proposals:
    """Edge Boxes' box search on a given edge map (float32 [H, W]) and orientation map.

    Returns:
      Proposals sorted by Edge Boxes' score, best first.
    """
    eb = cv2.ximgproc.createEdgeBoxes(
        alpha=alpha, beta=beta, minScore=min_score, maxBoxes=max_boxes
    )
    rects, scores = eb.getBoundingBoxes(
        np.asarray(edges, np.float32), np.asarray(orientation, np.float32)
    )
    if rects is None or len(rects) == 0:
        return _empty()
    boxes = _xywh_to_xyxy(rects)
    scores = np.asarray(scores, np.float32).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    return Proposals(boxes[order], scores[order])


# --- precomputed ---------------------------------------------------------------------------------
def load_proposal_file(path) -> dict[str, Proposals]:
    """Reads a precomputed proposals file (.npz or .json, format in the module docstring).

    Raises:
      FileNotFoundError: the file does not exist. DataError: bad format (names file and id).
    """
    path = paths.as_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"proposals file {path} not found")
    if path.suffix == ".npz":
        with np.load(io.BytesIO(path.read_bytes()) if paths.is_remote(path) else path) as z:
            raw = {k: np.asarray(z[k]) for k in z.files}
    elif path.suffix == ".json":
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise DataError(
                f"{path}: expected an object {{image id: [[x0, y0, x1, y1(, score)], ...]}}"
            )
    else:
        raise DataError(f"{path}: proposals file must be .npz or .json, got {path.suffix!r}")
    out = {}
    for key, rows in raw.items():
        try:
            a = np.asarray(rows, np.float32)
        except (TypeError, ValueError):
            raise DataError(f"{path}: image id {key!r}: rows are not numbers") from None
        if a.size == 0:
            out[key] = _empty()
            continue
        if a.ndim != 2 or a.shape[1] not in (4, 5):
            raise DataError(
                f"{path}: image id {key!r}: expected rows of 4 (x0, y0, x1, y1) or 5 "
                f"(+ score) numbers, got shape {list(a.shape)}"
            )
        scores = a[:, 4].copy() if a.shape[1] == 5 else _rank_scores(len(a))
        out[key] = Proposals(np.ascontiguousarray(a[:, :4]), scores)
    return out


class Precomputed:
    """Proposals read from a file (see ``load_proposal_file``), looked up by image id."""

    name = "precomputed"

    def __init__(self, path):
        self.path = path
        self.table = load_proposal_file(path)

    def __call__(self, image, image_id=None, gt_boxes=None) -> Proposals:
        if image_id is None:
            raise ValueError("precomputed proposals need the image id")
        got = self.table.get(image_id)
        if got is None:
            log.warning("%s: no proposals for image id %r", self.path, image_id)
            return _empty()
        return got


# --- ground truth (oracle) -----------------------------------------------------------------------
class GroundTruth:
    """The image's object boxes, enlarged by ``enlarge`` about their centres (an oracle)."""

    name = "ground_truth"

    def __init__(self, enlarge: float = 1.2):
        self.enlarge = enlarge

    def __call__(self, image, image_id=None, gt_boxes=None) -> Proposals:
        if gt_boxes is None:
            raise ValueError("ground-truth proposals need the image's object boxes")
        b = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
        centre, half = (b[:, :2] + b[:, 2:]) / 2, (b[:, 2:] - b[:, :2]) * self.enlarge / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        return Proposals(boxes.astype(np.float32), np.ones(len(boxes), np.float32))


# --- sliding grid --------------------------------------------------------------------------------
def _starts(length: int, size: int, stride: int) -> list[int]:
    if size >= length:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)  # the last window touches the far edge
    return starts


class SlidingGrid:
    """Square windows of each side in ``sizes`` every ``overlap``-overlapping stride, plus the
    whole image. Windows larger than the image are shrunk to it. Score: larger first.
    """

    name = "grid"

    def __init__(self, sizes: Sequence[int] = (224, 336, 448), overlap: float = 0.5):
        if not sizes or min(sizes) <= 0:
            raise ValueError(f"grid sizes must be positive, got {list(sizes)}")
        if not 0 <= overlap < 1:
            raise ValueError(f"grid overlap must be in [0, 1), got {overlap}")
        self.sizes, self.overlap = sorted({int(s) for s in sizes}, reverse=True), overlap

    def __call__(self, image, image_id=None, gt_boxes=None) -> Proposals:
        h, w = image.shape[:2]
        boxes, scores = [[0, 0, w, h]], [2.0]
        for size in self.sizes:
            sw, sh = min(size, w), min(size, h)
            stride = max(1, int(round(size * (1 - self.overlap))))
            for y in _starts(h, sh, stride):
                for x in _starts(w, sw, stride):
                    boxes.append([x, y, x + sw, y + sh])
                    scores.append(size / self.sizes[0])
        boxes = np.asarray(boxes, np.float32)
        _, keep = np.unique(boxes, axis=0, return_index=True)  # duplicates on small images
        keep = np.sort(keep)
        return Proposals(boxes[keep], np.asarray(scores, np.float32)[keep])


# --- factory and selection -----------------------------------------------------------------------
def make_source(infer_config) -> ProposalSource:
    """The proposal source named by ``config.infer.proposals``."""
    name = infer_config.proposals
    if name == "selective_search":
        return SelectiveSearch(infer_config.ss_mode, infer_config.max_proposals)
    if name == "edge_boxes":
        return EdgeBoxes(infer_config.edge_model, infer_config.max_proposals)
    if name == "precomputed":
        if not infer_config.proposals_file:
            raise ValueError(
                "config.infer.proposals='precomputed' needs config.infer.proposals_file"
            )
        return Precomputed(infer_config.proposals_file)
    if name == "ground_truth":
        return GroundTruth(infer_config.gt_enlarge)
    if name == "grid":
        return SlidingGrid(tuple(infer_config.grid_sizes), infer_config.grid_overlap)
    raise ValueError(f"unknown config.infer.proposals {name!r} (expected one of {SOURCES})")


def select_proposals(
    proposals: Proposals,
    image_hw: tuple[int, int],
    min_size: float = 112,
    top_k: int = 50,
    source: str = "",
) -> Proposals:
    """The release's selection: clip to the image, drop non-finite and zero-area boxes and boxes
    whose short side is under ``min_size``, then keep the ``top_k`` best by score (stable).

    Args:
      proposals: boxes [N, 4], scores [N].
      image_hw: (H, W) of the image the boxes refer to.
      source: a name for log messages (e.g. the image id).

    Returns:
      Proposals [k, 4], [k] with k <= top_k, best first.
    """
    boxes = np.asarray(proposals.boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(proposals.scores, np.float32).reshape(-1)
    if len(scores) != len(boxes):
        raise ValueError(f"{source}: {len(boxes)} boxes but {len(scores)} scores")
    h, w = image_hw
    finite = np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
    boxes, scores = boxes[finite], scores[finite]
    clipped = np.clip(boxes, 0, np.array([w, h, w, h], np.float32))
    n_clipped = int(np.any(clipped != boxes, axis=1).sum())
    side_w, side_h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    nonempty = (side_w > 0) & (side_h > 0)
    big = nonempty & (np.minimum(side_w, side_h) >= min_size)
    if (~finite).any() or n_clipped or (~nonempty).any():
        log.debug(
            "%s: %d non-finite, %d clipped to the %dx%d image, %d zero-area proposals dropped",
            source,
            int((~finite).sum()),
            n_clipped,
            w,
            h,
            int((~nonempty).sum()),
        )
    clipped, scores = clipped[big], scores[big]
    order = np.argsort(-scores, kind="stable")[:top_k]
    return Proposals(clipped[order], scores[order])
