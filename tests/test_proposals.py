"""Proposal sources and the release's selection (deconvnet_jax/proposals/sources.py)."""

import ctypes
import ctypes.util
import json
import logging

import cv2
import numpy as np
import pytest

from deconvnet_jax.data.crops import box_iou
from deconvnet_jax.data.voc import DataError, VOCDataset
from deconvnet_jax.proposals import sources
from deconvnet_jax.proposals.sources import Proposals


# --- selection -----------------------------------------------------------------------------------
def reference_select(boxes, scores, h, w, min_size, top_k):
    """Box-by-box loop: clip, drop bad / small ones, then sort by score (ties keep file order)."""
    kept = []
    for k, (b, s) in enumerate(zip(boxes, scores)):
        if not (np.all(np.isfinite(b)) and np.isfinite(s)):
            continue
        x0, y0, x1, y1 = (
            min(max(b[0], 0), w),
            min(max(b[1], 0), h),
            min(max(b[2], 0), w),
            min(max(b[3], 0), h),
        )
        if x1 - x0 <= 0 or y1 - y0 <= 0 or min(x1 - x0, y1 - y0) < min_size:
            continue
        kept.append((-s, k, [x0, y0, x1, y1]))
    kept.sort(key=lambda t: (t[0], t[1]))
    return np.array([t[2] for t in kept[:top_k]], np.float32).reshape(-1, 4), np.array(
        [-t[0] for t in kept[:top_k]], np.float32
    )


def test_select_by_hand():
    boxes = np.array(
        [
            [10, 20, 150, 170],
            [-20, -30, 90, 60],
            [30, 30, 60, 200],
            [0, 0, 0, 50],
            [100, 50, 260, 400],
            [50, 60, 190, 140],
            [5, 5, np.inf, 50],
            [40, 40, 30, 90],
        ]
    )
    scores = np.array([0.9, 0.95, 0.99, 1.0, 0.5, 0.2, 3.0, 2.0])
    got = sources.select_proposals(Proposals(boxes, scores), (180, 200), min_size=40, top_k=3)
    np.testing.assert_array_equal(
        got.boxes, [[0, 0, 90, 60], [10, 20, 150, 170], [100, 50, 200, 180]]
    )
    np.testing.assert_allclose(got.scores, [0.95, 0.9, 0.5])
    # min_size is configurable; top_k larger than what survives keeps everything
    got = sources.select_proposals(Proposals(boxes, scores), (180, 200), min_size=10, top_k=50)
    assert len(got.boxes) == 5 and got.boxes[0].tolist() == [30, 30, 60, 180]
    none = sources.select_proposals(Proposals(boxes, scores), (180, 200), min_size=500, top_k=50)
    assert none.boxes.shape == (0, 4) and none.scores.shape == (0,)
    with pytest.raises(ValueError, match="3 boxes but 2 scores"):
        sources.select_proposals(Proposals(boxes[:3], scores[:2]), (10, 10), source="img7")


def test_select_matches_loop_on_random_boxes():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(0, 200))
        boxes = rng.uniform(-100, 600, (n, 4)).astype(np.float32)
        boxes[:, 2:] = boxes[:, :2] + rng.uniform(-50, 400, (n, 2))  # some inverted
        scores = np.round(rng.random(n), 1).astype(np.float32)  # many ties
        h, w = int(rng.integers(50, 500)), int(rng.integers(50, 500))
        got = sources.select_proposals(Proposals(boxes, scores), (h, w), 112, 50)
        want_b, want_s = reference_select(boxes, scores, h, w, 112, 50)
        np.testing.assert_array_equal(got.boxes, want_b)
        np.testing.assert_array_equal(got.scores, want_s)


# --- selective search ----------------------------------------------------------------------------
def object_image():
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(90, 130, (200, 260, 3)).astype(np.uint8), (7, 7), 2)
    image[50:160, 70:200] = (220, 40, 30)  # one red object, x 70..199, y 50..159
    return image, np.array([70, 50, 200, 160], np.float32)


def test_selective_search_boxes_and_ranking():
    image, obj = object_image()
    got = sources.SelectiveSearch("fast", max_boxes=300)(image)
    # the same regions as OpenCV's (x, y, w, h) output, converted to exclusive-max corners
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(np.ascontiguousarray(image[..., ::-1]))
    ss.switchToSelectiveSearchFast()
    ctypes.CDLL(ctypes.util.find_library("c")).srand(0)
    rects = ss.process()[:300]
    np.testing.assert_array_equal(got.boxes[:, :2], rects[:, :2])
    np.testing.assert_array_equal(got.boxes[:, 2:], rects[:, :2] + rects[:, 2:])
    assert (
        np.all(got.boxes[:, 2] <= 260) and np.all(got.boxes[:, 3] <= 200) and np.all(got.boxes >= 0)
    )
    assert np.all(np.diff(got.scores) < 0) and got.scores[0] == 1.0
    assert box_iou(got.boxes, obj).max() > 0.9  # the object is found
    again = sources.SelectiveSearch("fast", max_boxes=300)(image)
    np.testing.assert_array_equal(again.boxes, got.boxes)  # seeded: a function of the image
    with pytest.raises(ValueError, match="'fast' or 'quality'"):
        sources.SelectiveSearch("slow")


# --- Edge Boxes ----------------------------------------------------------------------------------
def test_edge_boxes_missing_model_file_names_it(tmp_path):
    missing = tmp_path / "model.yml.gz"
    with pytest.raises(FileNotFoundError, match="model.yml.gz") as e:
        sources.EdgeBoxes(str(missing))
    assert str(missing) in str(e.value) and "config.infer.edge_model" in str(e.value)
    with pytest.raises(FileNotFoundError, match="empty path"):
        sources.make_source(_infer(proposals="edge_boxes"))


def test_boxes_from_edges_finds_a_rectangle():
    edges = np.zeros((200, 300), np.float32)
    edges[50, 60:200] = edges[150, 60:200] = 1
    edges[50:151, 60] = edges[50:151, 199] = 1
    orient = np.zeros_like(edges)
    orient[50:151, 60] = orient[50:151, 199] = np.pi / 2
    got = sources.boxes_from_edges(edges, orient, max_boxes=20)
    assert np.all(np.diff(got.scores) <= 0)
    assert box_iou(got.boxes[:1], np.array([60, 50, 200, 151])).item() > 0.9
    empty = sources.boxes_from_edges(np.zeros((50, 50), np.float32), np.zeros((50, 50), np.float32))
    assert empty.boxes.shape == (0, 4)


def write_toy_edge_model(path):
    """A one-tree structured edge forest in OpenCV's model format: patches whose centre has a
    gradient (feature 904 = channel 3 at the patch centre) emit an edge line; others emit none."""
    bins = ", ".join(str(v) for v in range(128, 144))
    opts = dict(
        stride=2,
        shrinkNumber=2,
        patchSize=32,
        patchInnerSize=16,
        numberOfGradientOrientations=4,
        gradientSmoothingRadius=0,
        regFeatureSmoothingRadius=2,
        ssFeatureSmoothingRadius=8,
        gradientNormalizationRadius=4,
        selfsimilarityGridSize=5,
        numberOfTrees=1,
        numberOfTreesToEvaluate=1,
    )
    text = "%YAML:1.0\noptions:\n" + "".join(f"   {k}: {v}\n" for k, v in opts.items())
    text += (
        "childs:\n   - [ 2, 0, 0 ]\nfeatureIds:\n   - [ 904, 0, 0 ]\nthresholds:\n"
        "   - [ 0.02, 0., 0. ]\nedgeBoundaries:\n   - [ 0, 0, 0, 16 ]\nedgeBins:\n"
        f"   - [ {bins} ]\n"
    )
    path.write_text(text)
    return path


def test_edge_boxes_end_to_end_with_a_model_file(tmp_path):
    model = write_toy_edge_model(tmp_path / "toy_sed.yml")
    source = sources.make_source(
        _infer(proposals="edge_boxes", edge_model=str(model), max_proposals=30)
    )
    image = np.zeros((120, 160, 3), np.uint8)
    image[30:90, 40:120] = 255
    edges, orient = source.edges(image)
    assert edges.shape == (120, 160) and edges.max() > 0
    ring = np.zeros((120, 160), bool)
    ring[12:108, 28:132] = True
    ring[45:75, 55:105] = False  # edges only around the rectangle's outline
    assert edges[~ring].max() == 0 and edges[ring].max() > 0
    got = source(image)
    want = sources.boxes_from_edges(edges, orient, 30)
    np.testing.assert_array_equal(got.boxes, want.boxes)
    assert 0 < len(got.boxes) <= 30 and np.all(np.diff(got.scores) <= 0)
    assert np.all(got.boxes[:, 2] > got.boxes[:, 0]) and np.all(got.boxes[:, 3] > got.boxes[:, 1])
    assert np.all((got.boxes >= 0) & (got.boxes <= [160, 120, 160, 120]))


# --- precomputed, ground truth, grid ------------------------------------------------------------
def test_precomputed_npz_and_json(tmp_path, caplog):
    npz = tmp_path / "p.npz"
    np.savez(
        npz,
        img1=np.array([[1, 2, 30, 40], [5, 6, 70, 80]], np.float32),
        img2=np.array([[0, 0, 10, 10, 0.3], [1, 1, 9, 9, 0.7]], np.float32),
    )
    src = sources.Precomputed(npz)
    a = src(None, image_id="img1")
    np.testing.assert_array_equal(a.boxes, [[1, 2, 30, 40], [5, 6, 70, 80]])
    np.testing.assert_allclose(a.scores, [1.0, 0.5])  # file order is the ranking
    np.testing.assert_allclose(src(None, image_id="img2").scores, [0.3, 0.7])
    caplog.set_level(logging.WARNING)
    assert len(src(None, image_id="nope").boxes) == 0 and "nope" in caplog.text
    js = tmp_path / "p.json"
    js.write_text(json.dumps({"x": [[1, 2, 3, 4, 0.5]], "y": []}))
    table = sources.load_proposal_file(js)
    np.testing.assert_array_equal(table["x"].boxes, [[1, 2, 3, 4]])
    assert table["x"].scores.tolist() == [0.5] and len(table["y"].boxes) == 0


@pytest.mark.parametrize(
    "content,match",
    [
        ('{"im": [[1, 2, 3]]}', "image id 'im'.*rows of 4"),
        ('{"im": [["a", "b", "c", "d"]]}', "image id 'im'"),
        ("[1, 2]", "expected an object"),
        ("{not json", "not valid JSON"),
    ],
)
def test_precomputed_bad_files_named(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataError, match=match) as e:
        sources.load_proposal_file(path)
    assert "bad.json" in str(e.value)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        sources.load_proposal_file(tmp_path / "missing.npz")
    (tmp_path / "p.txt").write_text("")
    with pytest.raises(DataError, match="npz or .json"):
        sources.load_proposal_file(tmp_path / "p.txt")


def test_ground_truth_enlarged_about_centre():
    got = sources.GroundTruth(1.2)(None, gt_boxes=np.array([[10, 20, 110, 70]]))
    np.testing.assert_allclose(got.boxes, [[0, 15, 120, 75]], atol=1e-5)
    with pytest.raises(ValueError, match="object boxes"):
        sources.GroundTruth()(np.zeros((4, 4, 3), np.uint8))


def test_grid_exact_windows():
    got = sources.SlidingGrid((224,), 0.5)(np.zeros((300, 448, 3), np.uint8))
    want = [[0, 0, 448, 300]] + [[x, y, x + 224, y + 224] for y in (0, 76) for x in (0, 112, 224)]
    np.testing.assert_array_equal(got.boxes, want)
    np.testing.assert_array_equal(got.scores, [2.0] + [1.0] * 6)
    small = sources.SlidingGrid((224, 336))(np.zeros((100, 80, 3), np.uint8))
    np.testing.assert_array_equal(small.boxes, [[0, 0, 80, 100]])  # windows shrink to the image
    with pytest.raises(ValueError, match="overlap"):
        sources.SlidingGrid((224,), 1.0)


def _infer(**kw):
    from configs import infer

    c = infer.infer_config()
    c.update(kw)
    return c


def test_make_source_dispatch():
    assert isinstance(sources.make_source(_infer()), sources.SelectiveSearch)
    assert isinstance(sources.make_source(_infer(proposals="grid")), sources.SlidingGrid)
    assert isinstance(sources.make_source(_infer(proposals="ground_truth")), sources.GroundTruth)
    with pytest.raises(ValueError, match="proposals_file"):
        sources.make_source(_infer(proposals="precomputed"))
    with pytest.raises(ValueError, match="unknown config.infer.proposals 'magic'"):
        sources.make_source(_infer(proposals="magic"))


def test_selective_search_on_real_voc_image_finds_objects(voc_samples):
    dataset = VOCDataset(voc_samples, "val")
    ex = dataset.load(dataset.ids[0])
    got = sources.SelectiveSearch("fast")(ex["image"])
    kept = sources.select_proposals(got, ex["image"].shape[:2], 112, 50)
    h, w = ex["image"].shape[:2]
    assert 0 < len(kept.boxes) <= 50
    assert np.all(
        np.minimum(kept.boxes[:, 2] - kept.boxes[:, 0], kept.boxes[:, 3] - kept.boxes[:, 1]) >= 112
    )
    assert np.all(kept.boxes[:, 2] <= w) and np.all(kept.boxes[:, 3] <= h)
    big = ex["boxes"][np.minimum(*(ex["boxes"][:, 2:] - ex["boxes"][:, :2]).T) >= 112]
    if len(big):  # objects large enough to be kept are covered by some proposal
        assert box_iou(big, got.boxes).max(axis=1).min() > 0.5
