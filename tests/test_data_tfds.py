"""TFDS builder voc2012_segmentation (deconvnet_jax/data/tfds_voc.py): prepared through
manual_dir (extracted folders and archives) without TensorFlow, read back with
as_data_source equal to the folder reader; strict / lenient preparation."""

import hashlib
import sys
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from deconvnet_jax.data import tfds_voc
from deconvnet_jax.data.voc import DataError, VOCDataset
from tests.test_data_trees import break_file, make_voc_tree, write_sbd_mat


def assert_equal_to_folder(data_dir, config, split, reference: VOCDataset):
    """Every record of the prepared split equals the folder reader's example."""
    builder = tfds.builder(f"voc2012_segmentation/{config}", data_dir=str(data_dir))
    source = builder.as_data_source(split)
    assert len(source) == len(reference)
    seen = []
    for k in range(len(source)):
        ex = tfds_voc.record_to_example(source[k])
        ref = reference.load(ex["id"])
        for key in ("image", "label", "boxes", "box_labels"):
            assert ex[key].dtype == ref[key].dtype, key
            np.testing.assert_array_equal(ex[key], ref[key], err_msg=f"{ex['id']} {key}")
        seen.append(ex["id"])
    assert sorted(seen) == sorted(reference.ids)


def test_prepare_real_samples_from_extracted_folder(voc_samples, tmp_path):
    manual = tmp_path / "manual" / "VOCdevkit"
    manual.mkdir(parents=True)
    (manual / "VOC2012").symlink_to(voc_samples, target_is_directory=True)
    builder = tfds_voc.prepare(tmp_path / "tfds", manual_dir=tmp_path / "manual")
    assert "tensorflow" not in sys.modules  # prepared and read without TensorFlow
    assert builder.info.file_format.value == "array_record"
    assert builder.info.splits["train"].num_examples == 83
    assert builder.info.splits["val"].num_examples == 20
    assert list(builder.data_path.glob("*.array_record*"))
    for split in ("train", "val"):
        assert_equal_to_folder(tmp_path / "tfds", "plain", split, VOCDataset(voc_samples, split))
    rec = builder.as_data_source("val")[0]
    assert rec["label"].shape[-1] == 1 and rec["image"].shape[-1] == 3
    assert builder.info.features["objects"]["label"].names[15] == "person"
    # the VOCDataset-like view
    view = tfds_voc.TFDSVOCDataset(tmp_path / "tfds", "val")
    assert sorted(view.ids) == sorted(VOCDataset(voc_samples, "val").ids) and not view.skipped
    assert "tensorflow" not in sys.modules


def _sbd_tree(sbd, ids, size=64):
    """SBD dataset folder for `ids` (some of them VOC ids, some its own)."""
    for k, i in enumerate(ids):
        seg = np.zeros((size, size), np.uint8)
        seg[10:30, 12:40] = 1 + k % 5
        seg[9, 12:40] = 255
        write_sbd_mat(sbd / "cls" / f"{i}.mat", "GTcls", seg)
        write_sbd_mat(sbd / "inst" / f"{i}.mat", "GTinst", (seg == 1 + k % 5).astype(np.uint8))
        (sbd / "img").mkdir(parents=True, exist_ok=True)
        rgb = np.random.default_rng(k).integers(0, 256, (size, size, 3)).astype(np.uint8)
        Image.fromarray(rgb).save(sbd / "img" / f"{i}.jpg", quality=90)


def test_prepare_aug_from_archives(tmp_path):
    root = make_voc_tree(tmp_path / "src" / "VOC2012", num_train=4, num_val=2, size=64)
    voc_train = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    voc_val = (root / "ImageSets/Segmentation/val.txt").read_text().split()
    # a grey JPEG: stored as a lossless PNG of the RGB conversion, read back as [H, W, 3]
    grey = root / "JPEGImages" / f"{voc_train[1]}.jpg"
    Image.open(grey).convert("L").save(grey, quality=90)
    sbd = tmp_path / "src" / "dataset"
    _sbd_tree(sbd, ["2008_000001", "2008_000002", voc_val[0]])
    (sbd / "train.txt").write_text(f"2008_000001\n{voc_val[0]}\n")
    (sbd / "val.txt").write_text("2008_000002\n")
    manual = tmp_path / "manual"
    manual.mkdir()
    with tarfile.open(manual / "VOCtrainval_11-May-2012.tar", "w") as tar:
        tar.add(root, arcname="VOCdevkit/VOC2012")
    with tarfile.open(manual / "benchmark.tgz", "w:gz") as tar:
        tar.add(sbd, arcname="benchmark_RELEASE/dataset")
    builder = tfds_voc.prepare(tmp_path / "tfds", manual_dir=manual, config="aug")
    assert sorted(builder.info.splits) == ["train_aug", "val"]
    reference = VOCDataset(root, "train_aug", sbd_root=sbd)
    assert sorted(reference.ids) == sorted(voc_train + ["2008_000001", "2008_000002"])
    assert_equal_to_folder(tmp_path / "tfds", "aug", "train_aug", reference)
    assert_equal_to_folder(tmp_path / "tfds", "aug", "val", VOCDataset(root, "val"))
    assert "tensorflow" not in sys.modules


def test_strict_and_lenient_preparation(tmp_path):
    root = make_voc_tree(tmp_path / "manual" / "VOC2012", num_train=5, num_val=2, size=64)
    ids = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    bad = root / "JPEGImages" / f"{ids[2]}.jpg"
    break_file(bad, "truncate")
    with pytest.raises(DataError, match=rf"{bad}: corrupt or unreadable image"):
        tfds_voc.prepare(tmp_path / "strict", manual_dir=tmp_path / "manual")
    builder = tfds_voc.prepare(tmp_path / "lenient", manual_dir=tmp_path / "manual", strict=False)
    assert builder.info.splits["train"].num_examples == 4
    assert builder.info.splits["val"].num_examples == 2
    assert [i for i, _ in builder.skipped] == [ids[2]]
    view = tfds_voc.TFDSVOCDataset(tmp_path / "lenient", "train")  # skipped list persisted
    assert [i for i, _ in view.skipped] == [ids[2]] and str(bad) in view.skipped[0][1]
    assert sorted(view.ids) == sorted(set(ids) - {ids[2]})
    lenient_ref = VOCDataset(root, "train", strict=False)
    np.testing.assert_array_equal(view.load(ids[0])["label"], lenient_ref.load(ids[0])["label"])


def test_command_line(tmp_path, capsys):
    root = make_voc_tree(tmp_path / "manual" / "VOC2012", num_train=3, num_val=1, size=64)
    ids = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    break_file(root / "SegmentationClass" / f"{ids[0]}.png", "garbage")
    tfds_voc.main(
        [
            "--data_dir",
            str(tmp_path / "tfds"),
            "--manual_dir",
            str(tmp_path / "manual"),
            "--lenient",
        ]
    )
    out = capsys.readouterr().out
    assert "train: 2 examples" in out and "val: 1 examples" in out
    assert f"1 bad examples skipped, e.g. {root}/SegmentationClass/{ids[0]}.png: corrupt" in out


def test_missing_sources_are_named(tmp_path):
    (tmp_path / "manual").mkdir()
    (tmp_path / "manual" / "readme.txt").write_text("nothing here")
    with pytest.raises(DataError, match="no VOC 2012 folder"):
        tfds_voc.prepare(tmp_path / "tfds", manual_dir=tmp_path / "manual")
    make_voc_tree(tmp_path / "manual" / "VOC2012", num_train=2, num_val=1, size=64)
    with pytest.raises(DataError, match="config 'aug' needs SBD"):
        tfds_voc.prepare(tmp_path / "tfds", manual_dir=tmp_path / "manual", config="aug")
    (tmp_path / "manual" / "benchmark.tgz").write_bytes(b"not a tar archive")
    with pytest.raises(DataError, match=r"benchmark\.tgz: corrupt or unreadable archive"):
        tfds_voc.prepare(tmp_path / "tfds", manual_dir=tmp_path / "manual", config="aug")
    with pytest.raises(DataError, match="is not prepared"):
        tfds_voc.TFDSVOCDataset(tmp_path / "nothing", "train")


class _OfflineDownloads:
    """Stands in for tfds' DownloadManager without a manual_dir: `download` hands back local
    archives (no network), as the real one hands back the downloaded files."""

    def __init__(self, archives, download_dir):
        self.archives, self.download_dir, self.asked = archives, download_dir, None

    @property
    def manual_dir(self):
        raise AssertionError("Manual directory ... does not exist or is empty")

    def download(self, urls):
        self.asked = dict(urls)
        return {k: self.archives[k] for k in urls}


def test_online_path_checks_md5_and_extracts(tmp_path, monkeypatch):
    root = make_voc_tree(tmp_path / "src" / "VOC2012", num_train=2, num_val=1, size=64)
    archive = tmp_path / "dl" / "VOCtrainval_11-May-2012.tar"
    archive.parent.mkdir()
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname="VOCdevkit/VOC2012")
    dl = _OfflineDownloads({"voc": archive}, tmp_path / "dl")
    builder = tfds_voc.Voc2012Segmentation(config="plain", data_dir=str(tmp_path / "tfds"))
    with pytest.raises(DataError, match="md5 .* is not the official 6cd6e144"):
        builder._split_generators(dl)  # our archive is not the official one
    assert dl.asked == {"voc": tfds_voc.VOC_URL}
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(tfds_voc._MD5, "voc", md5)
    gens = builder._split_generators(dl)
    assert sorted(gens) == ["train", "val"]
    records = dict(gens["train"])
    reference = VOCDataset(root, "train")
    assert sorted(records) == sorted(reference.ids)
    i = reference.ids[0]
    assert records[i]["image"] == (root / "JPEGImages" / f"{i}.jpg").read_bytes()
    np.testing.assert_array_equal(np.asarray(records[i]["label"]), reference.load(i)["label"])


def test_train_loader_reads_the_same_crops_from_tfds(tmp_path):
    from configs.default import get_config
    from deconvnet_jax.data import loader

    make_voc_tree(tmp_path / "manual" / "VOC2012", num_train=5, num_val=1, size=64)
    tfds_voc.prepare(tmp_path / "tfds", manual_dir=tmp_path / "manual")
    cfg = get_config().data
    cfg.voc_root, cfg.train_split, cfg.resize, cfg.crop_size = (
        str(tmp_path / "manual" / "VOC2012"),
        "train",
        40,
        32,
    )
    from_folder = loader.make_train_loader(cfg, 4, 0, 0, 1)
    folder = [next(from_folder) for _ in range(3)]
    cfg.tfds_dir = str(tmp_path / "tfds")  # config.data.tfds_dir selects the prepared TFDS
    it = loader.make_train_loader(cfg, 4, 0, 0, 1)
    assert isinstance(it.dataset, tfds_voc.TFDSVOCDataset)
    for a in folder:
        b = next(it)
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
