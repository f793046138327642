"""Training / eval loaders (deconvnet_jax/data/loader.py): determinism, resume from a saved
state in a new loader, worker processes, per-process sharding, lenient skipping, eval batches."""

import json

import numpy as np
import pytest

from configs.default import get_config
from deconvnet_jax.data import crops, loader
from deconvnet_jax.data.voc import DataError, VOCDataset
from tests.test_data_trees import break_file, grey_index, make_grey_tree, make_voc_tree


def data_config(root, **overrides):
    cfg = get_config().data
    cfg.voc_root = str(root)
    cfg.train_split = "train"
    cfg.resize, cfg.crop_size = 40, 32  # small crops: fast tests
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_voc_tree(
        tmp_path_factory.mktemp("voc") / "VOC2012", num_train=8, num_val=3, size=64
    )


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys() == {"image", "label"}
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])


def test_batches_shapes_and_values(tree):
    it = loader.make_train_loader(data_config(tree), 4, seed=0, process_index=0, process_count=1)
    b = next(it)
    assert b["image"].shape == (4, 32, 32, 3) and b["image"].dtype == np.float32
    assert b["label"].shape == (4, 32, 32) and b["label"].dtype == np.int32
    assert set(np.unique(b["label"])) <= set(range(6)) | {255}  # generated classes 0..5 + void
    # caffe_bgr input: BGR pixel minus the mean, so +mean gives back uint8-range values
    raw = b["image"] + crops.CAFFE_BGR_MEAN
    assert raw.min() >= -0.01 and raw.max() <= 255.01
    it.close()


def test_same_seed_same_batches_other_seed_other_batches(tree):
    cfg = data_config(tree)
    a = take(loader.make_train_loader(cfg, 3, 7, 0, 1), 4)
    b = take(loader.make_train_loader(cfg, 3, 7, 0, 1), 4)
    c = take(loader.make_train_loader(cfg, 3, 8, 0, 1), 4)
    assert_same_batches(a, b)
    assert not np.array_equal(a[0]["image"], c[0]["image"])


@pytest.mark.parametrize("k", [1, 3])
def test_resume_in_a_new_loader_gives_the_next_batches(tree, k):
    cfg = data_config(tree)
    first = loader.make_train_loader(cfg, 3, 0, 0, 1)
    take(first, k)
    state = json.loads(json.dumps(first.get_state()))  # as a checkpoint stores it
    expected = take(first, 4)  # 8 ids, batch 3: crosses epochs (reshuffled) after k = 3
    resumed = loader.make_train_loader(cfg, 3, 0, 0, 1)
    resumed.set_state(state)
    assert_same_batches(take(resumed, 4), expected)
    fresh = take(loader.make_train_loader(cfg, 3, 0, 0, 1), k + 1)
    assert not np.array_equal(fresh[0]["image"], expected[0]["image"])


def test_epochs_are_permutations_reshuffled(tmp_path):
    root = make_grey_tree(tmp_path / "VOC2012", 6)
    cfg = data_config(root, mode="whole", resize=32, crop_size=24)
    it = loader.make_train_loader(cfg, 1, 0, 0, 1)
    order = [grey_index(next(it)["image"][0]) for _ in range(18)]
    epochs = [order[e * 6 : (e + 1) * 6] for e in range(3)]
    assert all(sorted(e) == list(range(6)) for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1


@pytest.mark.slow
def test_worker_processes_give_the_same_batches_and_resume(tree):
    cfg = data_config(tree)
    ref = loader.make_train_loader(cfg, 2, 0, 0, 1)
    expected = take(ref, 5)
    workers = loader.make_train_loader(data_config(tree, num_workers=2), 2, 0, 0, 1)
    try:
        got = take(workers, 2)
        state = json.loads(json.dumps(workers.get_state()))
    finally:
        workers.close()
    assert_same_batches(got, expected[:2])
    resumed = loader.make_train_loader(data_config(tree, num_workers=2), 2, 0, 0, 1)
    try:
        resumed.set_state(state)
        assert_same_batches(take(resumed, 3), expected[2:])
    finally:
        resumed.close()


@pytest.mark.parametrize("count", [2, 3])
def test_process_shards_are_disjoint_and_complete(tmp_path, count):
    n = 10
    root = make_grey_tree(tmp_path / "VOC2012", n)
    cfg = data_config(root, mode="whole", resize=32, crop_size=24)
    seen = []
    for index in range(count):
        shard = list(range(n))[index::count]
        it = loader.make_train_loader(cfg, 2 * count, 0, process_index=index, process_count=count)
        epoch = []
        while len(epoch) < len(shard):
            epoch += [grey_index(img) for img in next(it)["image"]]
        assert sorted(epoch[: len(shard)]) == shard  # one epoch = exactly this process's shard
        seen.append(set(shard))
    assert set().union(*seen) == set(range(n))
    assert sum(len(s) for s in seen) == n
    with pytest.raises(ValueError, match="global batch 5 does not divide over 2 processes"):
        loader.make_train_loader(cfg, 5, 0, 0, 2)


def test_lenient_loader_skips_counts_reports_and_keeps_count_on_resume(tree, tmp_path):
    root = make_voc_tree(tmp_path / "VOC2012", num_train=8, num_val=1, size=64)
    ids = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    break_file(root / "JPEGImages" / f"{ids[1]}.jpg", "truncate")
    break_file(root / "SegmentationClass" / f"{ids[4]}.png", "garbage")
    (root / "JPEGImages" / f"{ids[6]}.jpg").unlink()  # listed id without its file
    with pytest.raises(DataError, match=rf"{ids[6]}\.jpg does not exist"):
        loader.make_train_loader(data_config(root), 2, 0, 0, 1)
    cfg = data_config(root, strict=False)
    it = loader.make_train_loader(cfg, 2, 0, 0, 1)
    assert len(it.skipped) == 1  # the missing file, found when the split is opened
    batches = take(it, 6)  # 12 crops from 5 good examples: every example met at least twice
    assert all(b["image"].shape == (2, 32, 32, 3) for b in batches)
    assert sorted(s.split(":")[0] for s in it.skipped) == sorted([ids[1], ids[4], ids[6]])
    assert it.report() == "3 bad training examples skipped"
    reasons = " ".join(it.skipped)
    assert f"{ids[1]}.jpg: corrupt" in reasons and f"{ids[4]}.png: corrupt" in reasons
    state = json.loads(json.dumps(it.get_state()))
    resumed = loader.make_train_loader(cfg, 2, 0, 0, 1)
    resumed.set_state(state)
    assert resumed.report() == "3 bad training examples skipped"


def test_strict_loader_raises_naming_the_file(tmp_path):
    root = make_voc_tree(tmp_path / "VOC2012", num_train=4, num_val=1, size=64)
    ids = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    for i in ids:
        break_file(root / "SegmentationClass" / f"{i}.png", "truncate")
    it = loader.make_train_loader(data_config(root), 2, 0, 0, 1)
    with pytest.raises(DataError, match=r"SegmentationClass/synth_0000\d\.png: corrupt"):
        next(it)
    lenient = loader.make_train_loader(data_config(root, strict=False), 2, 0, 0, 1)
    with pytest.raises(DataError, match="every example of this process's shard"):
        next(lenient)  # all bad: an error, not an endless loop


def test_stage2_loader_reads_proposals(tree, tmp_path):
    ds = VOCDataset(tree, "train")
    props = {i: ds.load(i)["boxes"].tolist() for i in ds.ids}  # GT boxes overlap themselves
    (tmp_path / "p.json").write_text(json.dumps(props))
    cfg = data_config(tree, mode="stage2", proposals=str(tmp_path / "p.json"))
    b = next(loader.make_train_loader(cfg, 2, 0, 0, 1))
    assert b["image"].shape == (2, 32, 32, 3)
    with pytest.raises(ValueError, match="needs config.data.proposals"):
        loader.make_train_loader(data_config(tree, mode="stage2"), 2, 0, 0, 1)


def test_eval_loader_pads_and_shards(tree):
    cfg = data_config(tree, eval_size=80)
    ds = VOCDataset(tree, "val")
    per_process = []
    for index in range(2):
        batches = list(loader.make_eval_loader(cfg, "val", 1, process_index=index, process_count=2))
        per_process.append(batches)
        for b in batches:
            assert b["image"].shape == (1, 80, 80, 3) and b["label"].shape == (1, 80, 80)
            if b["id"][0]:
                ex = ds.load(b["id"][0])
                np.testing.assert_allclose(b["image"][0, :64, :64], crops.normalize(ex["image"]))
                np.testing.assert_array_equal(b["label"][0, :64, :64], ex["label"])
                assert np.all(b["label"][0, 64:] == 255) and np.all(b["label"][0, :, 64:] == 255)
                assert np.all(b["image"][0, 64:] == 0)
            else:  # padding example
                assert np.all(b["label"] == 255)
    assert len(per_process[0]) == len(per_process[1]) == 2  # 3 ids over 2 processes
    ids = [i for batches in per_process for b in batches for i in b["id"] if i]
    assert sorted(ids) == sorted(ds.ids)
    with pytest.raises(DataError, match="larger than config.data.eval_size=48"):
        list(loader.make_eval_loader(data_config(tree, eval_size=48), "val", 2, 0, 1))
    small = list(
        loader.make_eval_loader(data_config(tree, eval_size=48, strict=False), "val", 3, 0, 1)
    )
    assert small[0]["label"].shape == (3, 48, 48) and small[0]["id"] == ds.ids
