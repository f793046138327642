"""Workdir, data and outputs on an object store: train.py -> SIGTERM -> resume -> eval.py ->
predict.py with every path a ``gs://`` URL, the bucket mocked onto a local folder.

The mock (``mock_gcs``) maps ``gs://<bucket>/<key>`` to ``<root>/<bucket>/<key>`` for epath
(``etils.epath.testing.mock_epath``) and for orbax's TensorStore arrays (the kvstore spec orbax
builds for gs:// becomes a local ``file`` driver). Nothing else is mocked, so any code that
handles a gs:// path as a local one (pathlib's ``absolute()``, ``open()``, PIL's ``save(path)``)
either fails or makes a local folder named ``gs:``, which the test looks for.

Mocks do not cross processes, so the scripts run one after the other inside one process
(``_run_script``): a child of one CPU device (``python tests/test_cloud_paths.py <tmp>``), which
compiles and checkpoints faster than the suite's 8 fake devices.
"""

import contextlib
import io
import json
import os
import pathlib
import runpy
import signal
import subprocess
import sys
import tempfile
from unittest import mock

import pytest

from deconvnet_jax import paths
from tests.subproc import xla_flags

REPO = pathlib.Path(__file__).resolve().parents[1]
BUCKET = "gs://bucket"


@contextlib.contextmanager
def mock_gcs(root: pathlib.Path):
    """``gs://...`` served from ``root`` for epath and for orbax's TensorStore arrays."""
    from etils.epath import testing as epath_testing
    from orbax.checkpoint._src.path import gcs_utils

    root = os.fspath(root)

    def local(p) -> str:
        s = os.fspath(p)
        return os.path.join(root, s.removeprefix("gs://")) if s.startswith("gs://") else s

    def remote(p) -> str:
        s = os.fspath(p)
        return "gs://" + os.path.relpath(s, root) if s.startswith(root + os.sep) else s

    def one(fn, p, *args, **kwargs):
        return fn(local(p), *args, **kwargs)

    def two(fn, p, dst, *args, **kwargs):
        return fn(local(p), local(dst), *args, **kwargs)

    def glob(fn, pattern):
        return [remote(p) for p in fn(local(pattern))]

    def walk(fn, top, **kwargs):
        for folder, dirs, files in fn(local(top), **kwargs):
            yield remote(folder), dirs, files

    fns = dict.fromkeys(
        ("open", "exists", "isdir", "listdir", "makedirs", "mkdir", "remove", "rmtree", "stat"),
        one,
    )
    fns.update(dict.fromkeys(("rename", "replace", "copy"), two), glob=glob, walk=walk)
    with (
        epath_testing.mock_epath(**fns),
        mock.patch.object(
            gcs_utils, "get_kvstore_for_gcs", lambda p: {"driver": "file", "path": local(p)}
        ),
        mock.patch.object(gcs_utils, "is_hierarchical_namespace_enabled", lambda p: False),
    ):
        yield


def _run_script(script: str, *args: str) -> tuple[int, str]:
    """Runs ``python <script> <args>`` in this process (its flags removed afterwards).

    Returns:
      (exit code, stdout).
    """
    from absl import app, flags

    app.define_help_flags()  # absl's own flags: defined once, before the snapshot, and kept
    before = set(flags.FLAGS)
    out = io.StringIO()
    try:
        with mock.patch.object(sys, "argv", [str(REPO / script), *args]):
            with contextlib.redirect_stdout(out):
                runpy.run_path(str(REPO / script), run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        for name in set(flags.FLAGS) - before:
            delattr(flags.FLAGS, name)
    return code, out.getvalue()


def _train_args(workdir, cache, num_steps=4):
    overrides = {
        "model.width_multiplier": 1 / 32,
        "data.cache_dir": cache,
        "data.synthetic.num_train": 8,
        "data.synthetic.num_val": 2,
        "data.synthetic.image_size": 224,
        "data.eval_size": 224,
        "train.batch_size": 2,
        "train.num_steps": num_steps,
        "train.eval_every": 0,
        "train.log_every": 1,
        "train.checkpoint_every": 2,
        "train.eval_batch_size": 2,
    }
    return [f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in overrides.items())]


INFER = [
    "--config.infer.mode=whole",
    "--config.infer.canvas_sizes=(224,)",
    "--config.infer.crf=False",
]


def _losses(path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in paths.as_path(path).read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def _gs_folders(*roots) -> list[str]:
    """Local folders named ``gs:`` (what a URL handled as a local path creates) under roots."""
    found = []
    for r in roots:
        found += [os.path.join(d, "gs:") for d, dirs, _ in os.walk(r) if "gs:" in dirs]
    return found


def test_train_sigterm_resume_eval_predict_on_gs(tmp_path):
    # LLVM -O0: the tiny network's programs compile ~25% faster; the convolutions are library
    # calls either way, and every run of the scenario uses the same flags
    flags_ = f"{xla_flags(1)} --xla_backend_optimization_level=0"
    env = dict(os.environ, XLA_FLAGS=flags_, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, __file__, str(tmp_path)],
        cwd=tmp_path,  # a relative "gs:/..." would land here
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "cloud scenario passed" in proc.stdout
    assert not _gs_folders(tmp_path, REPO), _gs_folders(tmp_path, REPO)
    assert not os.path.exists(os.path.join(tempfile.gettempdir(), "gs:"))


def _scenario(tmp_path: pathlib.Path) -> None:
    """What the test checks, in this process (the child's)."""
    import jax
    import numpy as np

    from deconvnet_jax import errors, trainer, weights

    # rbg: the tiny network's threefry init compiles in ~30 s on 2 CPU cores, rbg's in ~5 s;
    # paths and resume do not depend on the generator
    jax.config.update("jax_default_prng_impl", "rbg")
    bucket_root = tmp_path / "bucket_root"
    bucket_root.mkdir()
    workdir, cache = f"{BUCKET}/runs/demo", f"{BUCKET}/cache"

    # Reference: the same run, uninterrupted, all local.
    local_run = tmp_path / "local_run"
    code, out = _run_script("train.py", *_train_args(local_run, tmp_path / "cache"))
    assert code == 0, out
    reference = jax.device_get(weights.load_run_variables(local_run))

    with mock_gcs(bucket_root):
        # train.py, SIGTERM (the real handler) after step 2: checkpoint saved, exit 75
        write = trainer.MetricWriter.write

        def write_then_sigterm(self, step, scalars):
            write(self, step, scalars)
            if step == 2:
                os.kill(os.getpid(), signal.SIGTERM)

        with mock.patch.object(trainer.MetricWriter, "write", write_then_sigterm):
            code, out = _run_script("train.py", *_train_args(workdir, cache))
        assert code == errors.EXIT_PREEMPTED, out
        assert "preempted at step 2" in out
        # the same command resumes and finishes
        code, out = _run_script("train.py", *_train_args(workdir, cache))
        assert code == 0, out
        run = paths.as_path(workdir)
        got = jax.device_get(weights.load_run_variables(workdir))
        jax.tree.map(np.testing.assert_array_equal, got, reference)
        # the preempted run's rows kept (no append on object stores), the resumed ones added
        assert _losses(run / "metrics.jsonl") == _losses(local_run / "metrics.jsonl")
        assert [s for s, _ in _losses(run / "metrics.jsonl")] == [1, 2, 3, 4]
        for name in ("config.json", "final_metrics.json", "curves.png", "predictions.png"):
            assert (run / name).is_file(), name
        assert list((run / "tensorboard").iterdir())
        final = (run / "final_metrics.json").read_text()

        # eval.py on the run: same mIoU as the trainer's final validation
        code, out = _run_script("eval.py", f"--workdir={workdir}", *INFER)
        assert code == 0, out
        summary = json.loads((run / "eval_val" / "results.json").read_text())
        assert summary["images"] == 2
        miou = summary["variants"]["DeconvNet"]["miou"]
        assert abs(miou - json.loads(final)["miou"]) < 1e-6, (miou, final)

        # predict.py: images from the bucket, masks to the bucket
        photos = paths.as_path(f"{BUCKET}/photos")
        photos.mkdir(parents=True)
        data_root = next(paths.as_path(cache).glob("synthetic-*"))
        for jpg in sorted((data_root / "JPEGImages").iterdir())[:2]:
            jpg.copy(photos / jpg.name)
        preds_dir = f"{BUCKET}/preds"
        code, out = _run_script(
            "predict.py", f"--workdir={workdir}", f"--input={photos}", f"--out={preds_dir}", *INFER
        )
        assert code == 0, out
        preds = sorted(p.name for p in paths.as_path(preds_dir).iterdir())
        stems = sorted(p.stem for p in photos.iterdir())
        assert preds == sorted([f"{s}.png" for s in stems] + [f"{s}_overlay.jpg" for s in stems])

    # everything went to the bucket, nothing to a local "gs:" folder
    assert (bucket_root / "bucket" / "runs" / "demo" / "checkpoints" / "4").is_dir()
    assert (bucket_root / "bucket" / "preds").is_dir()
    assert not _gs_folders(tmp_path, REPO), _gs_folders(tmp_path, REPO)
    print("cloud scenario passed")


def test_as_path_and_absolute():
    assert os.fspath(paths.absolute("gs://b/x")) == "gs://b/x"
    assert os.fspath(paths.absolute("rel")) == os.path.join(os.getcwd(), "rel")
    assert paths.is_remote("gs://b/x") and not paths.is_remote("/tmp/x")
    with pytest.raises(paths.PathError, match="memory"):
        paths.as_path("memory://x")


if __name__ == "__main__":
    _scenario(pathlib.Path(sys.argv[1]))
