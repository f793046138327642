"""predict.py and deconvnet_jax/prediction.py: any size and colour mode in, palette masks out."""

import logging
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from test_eval import make_run, train_config
from test_segment import random_variables, reference_segment

from configs import infer as infer_config
from deconvnet_jax import errors, inference, prediction
from deconvnet_jax.data.crops import normalize
from deconvnet_jax.data.voc import voc_palette
from deconvnet_jax.models import build_model
from deconvnet_jax.proposals import segment

REPO = pathlib.Path(__file__).resolve().parents[1]
CANVAS = 224


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    config = train_config(tmp)
    model = build_model(config.model)
    variables = random_variables(model, seed=4)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    return dict(
        tmp=tmp,
        config=config,
        model=model,
        variables=variables,
        net=lambda x: np.asarray(apply(variables, jnp.asarray(x))),
    )


def image_folder(root: pathlib.Path) -> dict:
    """Images in several modes and sizes (+ a corrupt file): {stem: RGB as PIL converts it}."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    rgb = rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "rgb.jpg", quality=95)
    Image.fromarray(rgb[..., 0]).save(root / "gray.png")  # L
    Image.fromarray(np.dstack([rgb[:120, :130], np.full((120, 130), 200, np.uint8)])).save(
        root / "rgba.png"
    )
    Image.fromarray(rgb[:100, :210]).convert("CMYK").save(root / "cmyk.jpg", quality=95)
    pal = Image.fromarray(rng.integers(0, 21, (90, 140), dtype=np.uint8), mode="P")
    pal.putpalette(voc_palette().ravel().tolist())
    pal.save(root / "palette.png")
    Image.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)).save(root / "big.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (root / "notes.txt").write_text("not an image")
    return {
        p.stem: np.asarray(Image.open(p).convert("RGB"))
        for p in sorted(root.iterdir())
        if p.suffix != ".txt" and p.stem != "broken"
    }


def whole_predictor(tiny, **kw):
    infer = infer_config.infer_config()
    infer.update(dict(mode="whole", canvas_sizes=(CANVAS,), crf=False))
    infer.update(kw)
    net = inference.Net(lambda v, x: tiny["model"].apply(v, x, train=False), tiny["variables"])
    return inference.Predictor(net, infer)


def test_predict_files_modes_sizes_and_bad_file(tiny, caplog):
    folder = tiny["tmp"] / "images"
    want_rgb = image_folder(folder)
    paths = prediction.list_images(folder)
    assert [p.name for p in paths] == [
        "big.png",
        "broken.jpg",
        "cmyk.jpg",
        "gray.png",
        "palette.png",
        "rgb.jpg",
        "rgba.png",
    ]
    caplog.set_level(logging.WARNING)
    out = tiny["tmp"] / "out"
    got = prediction.predict_files(whole_predictor(tiny), paths, out)
    assert sorted(got["written"]) == sorted(want_rgb)
    assert len(got["failed"]) == 1 and got["failed"][0][0].endswith("broken.jpg")
    assert "broken.jpg" in caplog.text
    assert "big" in caplog.text and "resized down" in caplog.text
    for stem, rgb in want_rgb.items():
        mask = Image.open(out / f"{stem}.png")
        assert mask.mode == "P" and mask.size == (rgb.shape[1], rgb.shape[0])
        assert Image.open(out / f"{stem}_overlay.jpg").size == (2 * rgb.shape[1], rgb.shape[0])
        if stem == "big":
            continue
        h, w = rgb.shape[:2]
        want = tiny["net"](segment.pad_image(normalize(rgb), CANVAS)[None])[0].argmax(-1)[:h, :w]
        np.testing.assert_array_equal(np.asarray(mask), want)
    assert len(np.unique(np.asarray(Image.open(out / "rgb.png")))) > 1


def test_predict_image_proposals_mode_matches_reference(tiny):
    predictor = whole_predictor(
        tiny,
        mode="proposals",
        proposals="grid",
        grid_sizes=(128,),
        grid_overlap=0.0,
        min_size=100,
        top_k=4,
        chunk_size=2,
    )
    rgb = np.random.default_rng(5).integers(0, 256, (200, 220, 3), dtype=np.uint8)
    labels = prediction.predict_image(predictor, rgb, "x")
    # grid: the whole image, then 128-windows at x in (0, 92), y in (0, 72); the best 4 are kept
    boxes = np.array(
        [[0, 0, 220, 200], [0, 0, 128, 128], [92, 0, 220, 128], [0, 72, 128, 200]], np.float32
    )
    scores, count = reference_segment(tiny["net"], normalize(rgb), boxes, np.ones(4, bool), CANVAS)
    want = np.where(count > 0, scores.argmax(-1), 0)[:200, :220]
    assert labels.shape == (200, 220)
    assert (labels == want).mean() > 0.999


def test_list_images_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        prediction.list_images(tmp_path / "nothing_here")
    assert prediction.final_variant(("DeconvNet", "EDeconvNet")) == "EDeconvNet"
    assert prediction.final_variant(inference.VARIANTS) == "EDeconvNet+CRF"


def test_predict_cli(tiny):
    run = make_run(tiny["tmp"] / "run", tiny["config"], tiny["variables"])
    folder = tiny["tmp"] / "cli_images"
    want_rgb = image_folder(folder)
    out = tiny["tmp"] / "cli_out"
    cmd = [
        sys.executable,
        str(REPO / "predict.py"),
        f"--workdir={run}",
        f"--input={folder}",
        f"--out={out}",
        "--config.infer.mode=whole",
        f"--config.infer.canvas_sizes=({CANVAS},)",
        "--config.infer.crf=False",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == errors.EXIT_SOME_FILES_FAILED, proc.stderr[-3000:]  # unreadable
    assert "FAILED" in proc.stdout and "broken.jpg" in proc.stdout
    assert f"DeconvNet: wrote {len(want_rgb)} masks" in proc.stdout
    rgb = want_rgb["rgb"]
    want = tiny["net"](segment.pad_image(normalize(rgb), CANVAS)[None])[0].argmax(-1)[:150, :200]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "rgb.png")), want)
    single = subprocess.run(
        cmd[:3] + [f"--input={folder / 'gray.png'}", f"--out={out}_one"] + cmd[5:],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    assert Image.open(pathlib.Path(f"{out}_one") / "gray.png").size == (200, 150)


def _bomb_jpeg(path: pathlib.Path, width: int = 15000, height: int = 13000) -> None:
    """A small JPEG whose header (SOF0) claims width x height pixels."""
    import io

    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    path.write_bytes(bytes(data))


def test_bad_files_each_one_line_and_the_batch_goes_on(tiny, tmp_path):
    """Issue 14.4 + 14.5: a bomb-sized JPEG, an empty file and an output folder squatting on
    <stem>.png are each one failure and the rest is written; a 16-bit PNG is scaled by its bit
    depth (round(v * 255 / 65535)), not clipped at 255; a float image outside [0, 1] is refused."""
    from deconvnet_jax.data import voc

    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(1)
    _bomb_jpeg(folder / "bomb.jpg")
    (folder / "empty.png").write_bytes(b"")
    v16 = rng.integers(0, 65536, (60, 70), dtype=np.uint16)
    Image.fromarray(v16).save(folder / "deep.png")  # 16-bit grayscale PNG
    Image.fromarray(rng.integers(0, 256, (50, 40, 3), dtype=np.uint8)).save(folder / "good.png")
    Image.fromarray(rng.integers(0, 256, (50, 40, 3), dtype=np.uint8)).save(folder / "blocked.png")
    Image.fromarray(np.full((20, 20), 3.5, np.float32)).save(folder / "float.tif")
    out = tmp_path / "out"
    (out / "blocked.png").mkdir(parents=True)  # a folder where the mask should go

    want = np.rint(v16.astype(np.float64) * 255 / 65535).astype(np.uint8)
    got16 = voc.read_image(folder / "deep.png")
    np.testing.assert_array_equal(got16, np.repeat(want[..., None], 3, -1))
    paths = prediction.list_images(folder)
    got = prediction.predict_files(whole_predictor(tiny), paths, out)
    assert sorted(got["written"]) == ["deep", "good"]
    reasons = dict((pathlib.Path(p).name, r) for p, r in got["failed"])
    assert sorted(reasons) == ["blocked.png", "bomb.jpg", "empty.png", "float.tif"]
    assert all("\n" not in r for r in reasons.values())
    assert "195000000" in reasons["bomb.jpg"] and "MAX_IMAGE_PIXELS" in reasons["bomb.jpg"]
    _bomb_jpeg(tmp_path / "big.jpg", 9000, 8000)  # under PIL's limit, over ours
    with pytest.raises(voc.DataError, match="9000x8000 pixels is over the limit"):
        voc.read_image(tmp_path / "big.jpg")
    assert "cannot write" in reasons["blocked.png"] and "outside [0, 1]" in reasons["float.tif"]
    assert (out / "good.png").is_file() and (out / "deep.png").is_file()
    with pytest.raises(errors.UserError, match="--out"):
        prediction.predict_files(whole_predictor(tiny), paths, folder / "good.png" / "x")
