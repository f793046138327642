"""eval.py and deconvnet_jax/evaluation.py: the split loop, variants, configs, bad input.

A tiny VOC-layout folder and a tiny random-weight DeconvNet saved as a real run directory
(orbax checkpoint + config.json); every confusion matrix is checked against a NumPy pipeline
built from the per-proposal reference of tests/test_segment.py.
"""

import json
import logging
import pathlib
import subprocess
import sys

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from test_segment import random_variables, reference_segment

from configs import default as default_config
from configs import infer as infer_config
from deconvnet_jax import evaluation, inference
from deconvnet_jax.data.crops import normalize
from deconvnet_jax.data.voc import DataError, read_image, voc_palette
from deconvnet_jax.models import build_model
from deconvnet_jax.proposals import segment

REPO = pathlib.Path(__file__).resolve().parents[1]
CANVAS = 224


def write_voc(root: pathlib.Path, examples: dict, split: str = "val") -> pathlib.Path:
    """A VOCdevkit/VOC2012-layout folder from {id: (uint8 image, uint8 label)}."""
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in examples.items():
        Image.fromarray(image).save(root / "JPEGImages" / f"{i}.jpg", quality=95)
        mask = Image.fromarray(label, mode="P")
        mask.putpalette(voc_palette().ravel().tolist())
        mask.save(root / "SegmentationClass" / f"{i}.png")
    (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(examples) + "\n")
    return root


def random_example(h, w, rng):
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = rng.integers(0, 21, (h, w), dtype=np.uint8)
    label[rng.random((h, w)) < 0.1] = 255
    return image, label


def train_config(voc_root, width=1 / 32, name="deconvnet"):
    config = default_config.get_config()
    config.model.name = name
    config.model.width_multiplier = width
    config.data.voc_root = str(voc_root)
    config.optim.accum_steps = 1
    return config


def make_run(run_dir: pathlib.Path, config, variables) -> pathlib.Path:
    """A training run directory as the trainer leaves it: checkpoints/0 and config.json."""
    from deconvnet_jax import checkpoint, optim, train_lib

    params = variables["params"]
    tx = optim.make_optimizer(config.optim)
    state = train_lib.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables["batch_stats"],
        opt_state=tx.init(params),
    )
    ckpt = checkpoint.Checkpointer(run_dir / "checkpoints", async_save=False)
    ckpt.save(0, state, {}, {})
    ckpt.close()
    (run_dir / "config.json").write_text(config.to_json_best_effort(indent=2))
    return run_dir


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_confusion(pred, label, c=21):
    conf = np.zeros((c, c), np.int64)
    keep = label != 255
    np.add.at(conf, (label[keep].astype(int), pred[keep].astype(int)), 1)
    return conf


# The precomputed proposals and, by hand, what the release's selection keeps of them
# (min_size 40, top_k 3): clip to the image, drop short sides < 40 and zero areas, best 3 by score.
PROPOSALS = {
    "a": [
        [10, 20, 150, 170, 0.9],
        [-20, -30, 90, 60, 0.95],
        [30, 30, 60, 200, 0.99],
        [0, 0, 0, 50, 1.0],
        [100, 50, 260, 400, 0.5],
        [50, 60, 190, 140, 0.2],
    ],
    "b": [[0, 0, 300, 300, 0.1], [40, 30, 80, 70, 0.3], [5, 5, 20, 200, 0.8]],
}
SELECTED = {  # image a is 180 x 200 (h x w), image b is 150 x 210
    "a": [[0, 0, 90, 60], [10, 20, 150, 170], [100, 50, 200, 180]],
    "b": [[40, 30, 80, 70], [0, 0, 210, 150]],
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(0)
    root = write_voc(
        tmp / "voc", {"a": random_example(180, 200, rng), "b": random_example(150, 210, rng)}
    )
    config = train_config(root)
    model = build_model(config.model)
    variables = random_variables(model, seed=2)
    run = make_run(tmp / "run", config, variables)
    (tmp / "props.json").write_text(json.dumps(PROPOSALS))
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    net = lambda x: np.asarray(apply(variables, jnp.asarray(x)))  # noqa: E731
    return dict(
        tmp=tmp,
        root=root,
        run=run,
        config=config,
        net=net,
        model=model,
        variables=variables,
        props=tmp / "props.json",
    )


def infer_settings(setup, **kw):
    config = evaluation.resolve_config(
        infer_config.get_config(), {}, evaluation.load_run_config(setup["run"])
    )
    config.infer.update(
        dict(
            proposals="precomputed",
            proposals_file=str(setup["props"]),
            top_k=3,
            min_size=40,
            canvas_sizes=(CANVAS,),
            chunk_size=2,
            crf=False,
            num_workers=2,
        )
    )
    config.infer.update(kw)
    return config


def reference_scores(setup, image_id, boxes):
    image = normalize(read_image(setup["root"] / "JPEGImages" / f"{image_id}.jpg"))
    k = len(boxes)
    return reference_segment(
        setup["net"], image, np.asarray(boxes, np.float32), np.ones(k, bool), CANVAS
    )


def test_eval_proposals_matches_numpy_pipeline(setup):
    config = infer_settings(setup)
    net = evaluation.load_net(config, str(setup["run"]))
    predictor = inference.Predictor(net, config.infer)
    out = setup["tmp"] / "out_props"
    summary = evaluation.Evaluator(config, predictor, ("DeconvNet",)).run(
        out, save_predictions=True
    )

    conf = np.zeros((21, 21), np.int64)
    for i in ("a", "b"):
        scores, count = reference_scores(setup, i, SELECTED[i])
        label = np.asarray(Image.open(setup["root"] / "SegmentationClass" / f"{i}.png"))
        h, w = label.shape
        pred = np.where(count > 0, scores.argmax(-1), 0)[:h, :w]
        conf += np_confusion(pred, label)
        saved = np.asarray(Image.open(out / "predictions" / "deconvnet" / f"{i}.png"))
        assert Image.open(out / "predictions" / "deconvnet" / f"{i}.png").mode == "P"
        assert (saved == pred).mean() > 0.999
        assert Image.open(out / "overlays" / "deconvnet" / f"{i}.jpg").size == (
            3 * w,
            h,
        )  # image | truth | prediction
    got = np.array(summary["confusion"]["DeconvNet"])
    assert (
        got.sum()
        == conf.sum()
        == np.sum(
            [
                np.sum(
                    np.asarray(Image.open(setup["root"] / "SegmentationClass" / f"{i}.png")) != 255
                )
                for i in "ab"
            ]
        )
    )
    assert np.abs(got - conf).sum() <= 2e-3 * conf.sum()  # float ties only
    tp, gt, pr = np.diag(conf), conf.sum(1), conf.sum(0)
    iou = tp / np.maximum(gt + pr - tp, 1)
    present = gt + pr > 0
    assert summary["variants"]["DeconvNet"]["miou"] == pytest.approx(iou[present].mean(), abs=2e-3)
    saved = json.loads((out / "results.json").read_text())
    assert (
        saved["images"] == 2
        and saved["variants"]["DeconvNet"]["miou"] == summary["variants"]["DeconvNet"]["miou"]
    )
    table = (out / "results.md").read_text()
    assert table.splitlines()[0].startswith("| variant | mIoU") and "| DeconvNet |" in table


def test_eval_variants_ensemble_and_crf(setup):
    from deconvnet_jax.postprocess import crf, ensemble

    if not crf.crf_available():
        pytest.skip("pydensecrf2 not installed")
    config = infer_settings(setup, mode="whole", ensemble_rule="product")
    net = inference.Net(lambda v, x: setup["model"].apply(v, x, train=False), setup["variables"])
    fcn_vars = random_variables(setup["model"], seed=5)  # a stand-in FCN: another random network
    fcn = inference.Net(lambda v, x: setup["model"].apply(v, x, train=False), fcn_vars)
    predictor = inference.Predictor(net, config.infer, fcn=fcn)
    variants = evaluation.variants_for(ensemble=True, crf=True)
    assert variants == inference.VARIANTS
    evaluator = evaluation.Evaluator(config, predictor, variants, ensemble.combine, crf.dense_crf)
    summary = evaluator.run(setup["tmp"] / "out_var")
    want = {v: np.zeros((21, 21), np.int64) for v in variants}
    whole = jax.jit(lambda v, x: setup["model"].apply(v, x, train=False))
    for i in ("a", "b"):
        image = np.array(read_image(setup["root"] / "JPEGImages" / f"{i}.jpg"))  # writable
        label = np.asarray(Image.open(setup["root"] / "SegmentationClass" / f"{i}.png"))
        h, w = label.shape
        x = segment.pad_image(normalize(image), CANVAS)[None]
        d = np.asarray(whole(setup["variables"], x))[0, :h, :w].astype(np.float64)
        f = np.asarray(whole(fcn_vars, x))[0, :h, :w].astype(np.float64)
        p_d, p_e = softmax(d), softmax(np.maximum(f, 0) * d)
        want["DeconvNet"] += np_confusion(d.argmax(-1), label)
        want["EDeconvNet"] += np_confusion(p_e.argmax(-1), label)
        want["DeconvNet+CRF"] += np_confusion(
            crf.dense_crf(image, p_d.astype(np.float32)).argmax(-1), label
        )
        want["EDeconvNet+CRF"] += np_confusion(
            crf.dense_crf(image, p_e.astype(np.float32)).argmax(-1), label
        )
    for v in variants:
        got = np.array(summary["confusion"][v])
        assert np.abs(got - want[v]).sum() <= 5e-3 * want[v].sum(), v
    # the CRF changes the maps (it is not a no-op on these inputs)
    assert not np.array_equal(want["DeconvNet+CRF"], want["DeconvNet"])


def test_load_extras_real_fcn_run_and_missing_parts(setup, monkeypatch, caplog):
    from deconvnet_jax.models import fcn as fcn_module  # noqa: F401  (the other helper's FCN8s)
    from deconvnet_jax.postprocess import crf, ensemble

    fcn_config = train_config(setup["root"], name="fcn8s")
    fcn_model = build_model(fcn_config.model)
    fcn_run = make_run(setup["tmp"] / "fcn_run", fcn_config, random_variables(fcn_model, seed=7))
    config = infer_settings(setup, ensemble=str(fcn_run), crf=True)
    extras = evaluation.load_extras(config)
    assert extras["fcn"] is not None and extras["combine"] is ensemble.combine
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, CANVAS, CANVAS, 3)), jnp.float32)
    assert extras["fcn"].apply(extras["fcn"].variables, x).shape == (1, CANVAS, CANVAS, 21)
    assert extras["variants"][:1] == ("DeconvNet",) and "EDeconvNet" in extras["variants"]

    monkeypatch.setattr(crf, "crf_available", lambda: False)
    caplog.set_level(logging.WARNING)
    bad = infer_settings(setup, ensemble=str(setup["run"]), crf=True)  # a DeconvNet run, not fcn8s
    extras = evaluation.load_extras(bad)
    assert extras["variants"] == ("DeconvNet",)
    assert "EDeconvNet variants skipped" in caplog.text and "not fcn8s" in caplog.text
    assert "+CRF variants skipped" in caplog.text and "pip install" in caplog.text


def test_unreadable_image_reported_by_name(setup, tmp_path, caplog):
    rng = np.random.default_rng(1)
    root = write_voc(
        tmp_path / "voc",
        {"good": random_example(120, 130, rng), "bad": random_example(100, 100, rng)},
    )
    (root / "JPEGImages" / "bad.jpg").write_bytes(b"not a jpeg")
    config = infer_settings(setup, mode="whole")
    config.data.voc_root = str(root)
    net = evaluation.load_net(config, str(setup["run"]))
    predictor = inference.Predictor(net, config.infer)
    with pytest.raises(DataError, match="bad.jpg"):
        evaluation.Evaluator(config, predictor).run(tmp_path / "strict")
    config.data.strict = False
    caplog.set_level(logging.WARNING)
    summary = evaluation.Evaluator(config, predictor).run(tmp_path / "lenient")
    assert summary["images"] == 1 and summary["skipped"][0][0] == "bad"
    assert "bad.jpg" in summary["skipped"][0][1] and "bad.jpg" in caplog.text
    assert np.array(summary["confusion"]["DeconvNet"]).sum() == np.sum(
        np.asarray(Image.open(root / "SegmentationClass" / "good.png")) != 255
    )


def test_no_surviving_proposals_falls_back_to_whole_image(setup, caplog):
    config = infer_settings(setup, min_size=500)  # nothing survives
    net = inference.Net(lambda v, x: setup["model"].apply(v, x, train=False), setup["variables"])
    predictor = inference.Predictor(net, config.infer)
    image = read_image(setup["root"] / "JPEGImages" / "a.jpg")
    caplog.set_level(logging.WARNING)
    prep = predictor.prepare(image, "a")
    assert prep.whole and not prep.valid.any() and "whole-image mode" in caplog.text
    out = predictor.scores([prep])
    want = np.asarray(
        jax.jit(lambda v, x: setup["model"].apply(v, x, train=False))(
            setup["variables"], segment.pad_image(normalize(image), CANVAS)[None]
        )
    )
    np.testing.assert_allclose(
        np.asarray(out["deconv"])[0, :180, :200], want[0, :180, :200], rtol=1e-5, atol=1e-5
    )
    assert (
        np.all(np.asarray(out["count"])[0, :180, :200] == 1)
        and np.asarray(out["count"])[0, 180:].sum() == 0
    )


def test_large_image_resized_down_with_warning(setup, caplog):
    config = infer_settings(setup, mode="proposals", proposals="grid", grid_sizes=(224,))
    net = inference.Net(lambda v, x: setup["model"].apply(v, x, train=False), setup["variables"])
    predictor = inference.Predictor(net, config.infer)
    image = np.random.default_rng(3).integers(0, 256, (300, 448, 3), dtype=np.uint8)
    caplog.set_level(logging.WARNING)
    prep = predictor.prepare(image, "big")
    assert "larger than the largest canvas" in caplog.text and "big" in caplog.text
    assert prep.image.shape == (150, 224, 3) and prep.orig_hw == (300, 448)
    # grid on the original image: the whole image, then 224-windows; scaled by 0.5 with the image
    kept = prep.boxes[prep.valid]
    np.testing.assert_allclose(kept[0], [0, 0, 224, 150])
    assert np.all(kept[:, 2] <= 224) and np.all(kept[:, 3] <= 150)
    labels = np.asarray(
        inference.variant_maps(predictor.scores([prep]), ("DeconvNet",))["DeconvNet"]
    )[0]
    full = inference.to_original(prep, labels)
    assert full.shape == (300, 448)
    np.testing.assert_array_equal(full[::2, ::2], labels[:150, :224])  # nearest, exact 2x


def test_eval_cli_whole_image_mode(setup):
    out = setup["tmp"] / "cli"
    cmd = [
        sys.executable,
        str(REPO / "eval.py"),
        f"--workdir={setup['run']}",
        f"--out={out}",
        "--config.infer.mode=whole",
        f"--config.infer.canvas_sizes=({CANVAS},)",
        "--config.infer.crf=False",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "results.json").read_text())
    assert summary["infer"]["mode"] == "whole" and summary["images"] == 2
    conf = np.zeros((21, 21), np.int64)
    for i in ("a", "b"):
        image = read_image(setup["root"] / "JPEGImages" / f"{i}.jpg")
        label = np.asarray(Image.open(setup["root"] / "SegmentationClass" / f"{i}.png"))
        x = segment.pad_image(normalize(image), CANVAS)[None]
        pred = setup["net"](x)[0].argmax(-1)[: label.shape[0], : label.shape[1]]
        conf += np_confusion(pred, label)
    assert np.abs(np.array(summary["confusion"]["DeconvNet"]) - conf).sum() <= 2e-3 * conf.sum()
    assert "| DeconvNet |" in proc.stdout


def test_resolve_config_precedence(setup):
    run = evaluation.load_run_config(setup["run"])
    flag_config = infer_config.get_config()
    flag_config.infer.top_k = 7
    merged = evaluation.resolve_config(
        flag_config, {"infer.aggregate": "mean", "data.strict": False}, run
    )
    assert merged.model.width_multiplier == pytest.approx(1 / 32)  # the run's architecture
    assert merged.data.voc_root == str(setup["root"])  # the run's data
    assert merged.infer.top_k == 7 and merged.infer.aggregate == "mean" and not merged.data.strict
    assert evaluation.load_run_config(setup["tmp"] / "nowhere") is None
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        evaluation.load_net(merged, str(setup["tmp"] / "nowhere"))


def test_eval_shrinks_large_image_and_scores_at_original_size(setup, tmp_path):
    rng = np.random.default_rng(7)
    root = write_voc(tmp_path / "voc", {"big": random_example(260, 300, rng)})
    config = infer_settings(setup, mode="whole")
    config.data.voc_root = str(root)
    net = inference.Net(lambda v, x: setup["model"].apply(v, x, train=False), setup["variables"])
    summary = evaluation.Evaluator(config, inference.Predictor(net, config.infer)).run(
        tmp_path / "o"
    )
    image = read_image(root / "JPEGImages" / "big.jpg")
    label = np.asarray(Image.open(root / "SegmentationClass" / "big.png"))
    small = cv2.resize(image, (224, 194), interpolation=cv2.INTER_LINEAR)  # 300 -> 224: x 0.7467
    pred = setup["net"](segment.pad_image(normalize(small), CANVAS)[None])[0].argmax(-1)[:194, :224]
    full = cv2.resize(pred.astype(np.uint8), (300, 260), interpolation=cv2.INTER_NEAREST)
    want = np_confusion(full, label)
    got = np.array(summary["confusion"]["DeconvNet"])
    assert got.sum() == want.sum() == np.sum(label != 255)
    assert np.abs(got - want).sum() <= 2e-3 * want.sum()


def test_mixed_batch_proposals_and_fallback(setup):
    """A batch mixing a proposal image and a whole-image fallback equals each image alone.

    Structural equality, so in float64 (a float64 copy of the network): in float32 the batch
    composition changes the rounding, which flips near-tied pooling switches (issue 12).
    """
    with jax.enable_x64(True):
        model = setup["model"].clone(dtype=jnp.float64, param_dtype=jnp.float64)
        variables = jax.tree.map(lambda a: np.asarray(a, np.float64), setup["variables"])
        net = inference.Net(lambda v, x: model.apply(v, x, train=False), variables)
        with_props = inference.Predictor(net, infer_settings(setup).infer)
        none_survive = inference.Predictor(net, infer_settings(setup, min_size=500).infer)
        a = read_image(setup["root"] / "JPEGImages" / "a.jpg")
        b = read_image(setup["root"] / "JPEGImages" / "b.jpg")
        pa, pb = with_props.prepare(a, "a"), none_survive.prepare(b, "b")
        assert not pa.whole and pb.whole and pa.valid.sum() == 3
        both = with_props.scores([pa, pb])
        assert both["deconv"].dtype == jnp.float64
        for k, p in enumerate((pa, pb)):
            one = with_props.scores([p])
            want = np.asarray(one["deconv"][0])
            np.testing.assert_allclose(
                np.asarray(both["deconv"][k]), want, rtol=0, atol=1e-9 * np.abs(want).max()
            )
            np.testing.assert_array_equal(np.asarray(both["count"][k]), np.asarray(one["count"][0]))
    scores, count = reference_scores(setup, "a", SELECTED["a"])
    np.testing.assert_array_equal(np.asarray(both["count"][0]), count)
