"""VOC / SBD readers (deconvnet_jax/data/voc.py) on the real samples and on generated trees:
split sizes, masks against PIL, boxes (XML, instances, components), train_aug, bad input."""

import re

import numpy as np
import pytest
from PIL import Image

from deconvnet_jax.data import voc
from deconvnet_jax.data.voc import DataError, VOCDataset
from tests.test_data_trees import break_file, make_voc_tree, save_mask, write_sbd_mat, write_split

# --- real samples ------------------------------------------------------------------------


def test_split_sizes(voc_samples):
    train, val = VOCDataset(voc_samples, "train"), VOCDataset(voc_samples, "val")
    trainval = VOCDataset(voc_samples, "trainval")
    assert (len(train), len(val), len(trainval)) == (83, 20, 103)
    assert not set(train.ids) & set(val.ids)
    listed = (voc_samples / "ImageSets/Segmentation/trainval.txt").read_text().split()
    assert sorted(train.ids + val.ids) == sorted(listed) == sorted(trainval.ids)


def test_mask_histogram_and_palette_match_pil(voc_samples):
    ids = VOCDataset(voc_samples, "trainval").ids
    seen = np.zeros(256, np.int64)
    for i in ids[::5]:
        path = voc_samples / "SegmentationClass" / f"{i}.png"
        label = voc.read_mask(path)
        with Image.open(path) as img:
            assert img.mode == "P"
            hist = np.asarray(img.histogram())  # PIL counts the palette indices itself
            rgb = np.asarray(img.convert("RGB"))
        np.testing.assert_array_equal(np.bincount(label.ravel(), minlength=256), hist)
        np.testing.assert_array_equal(voc.voc_palette()[label], rgb)  # the devkit colormap
        seen += hist
    assert set(np.flatnonzero(seen)) <= set(range(21)) | {255}
    assert seen[0] > 0 and seen[255] > 0


def test_every_class_occurs_in_the_samples(voc_samples):
    ds = VOCDataset(voc_samples, "trainval")
    present = set()
    for i in ds.ids:
        present |= set(np.unique(voc.read_mask(voc_samples / "SegmentationClass" / f"{i}.png")))
    assert present == set(range(21)) | {255}


def test_boxes_inside_images_and_on_their_class(voc_samples):
    ds = VOCDataset(voc_samples, "trainval")
    n_boxes = 0
    for ex in ds:
        h, w = ex["label"].shape
        assert ex["image"].shape == (h, w, 3) and ex["image"].dtype == np.uint8
        boxes, labels = ex["boxes"], ex["box_labels"]
        assert boxes.dtype == np.float32 and labels.dtype == np.int32 and len(boxes) == len(labels)
        assert len(boxes) >= 1
        assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= w) and np.all(boxes[:, 3] <= h)
        assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
        assert np.all((labels >= 1) & (labels <= 20))
        for (x0, y0, x1, y1), c in zip(boxes.astype(int), labels):
            assert (ex["label"][y0:y1, x0:x1] == c).any()  # the object's class is in its box
        n_boxes += len(boxes)
    assert n_boxes > len(ds)


def _xml_reference(text: str):
    """Regex reading of a VOC XML (independent of ElementTree): [(name, x0, y0, x1, y1)]."""
    out = []
    for obj in re.findall(r"<object>(.*?)</object>", text, re.DOTALL):
        name = re.search(r"<name>\s*(\w+)\s*</name>", obj).group(1)
        bb = re.search(r"<bndbox>(.*?)</bndbox>", obj, re.DOTALL).group(1)
        v = {
            k: float(re.search(rf"<{k}>\s*([\d.]+)\s*</{k}>", bb).group(1))
            for k in ("xmin", "ymin", "xmax", "ymax")
        }
        out.append((name, v["xmin"] - 1, v["ymin"] - 1, v["xmax"], v["ymax"]))
    return out


def test_xml_boxes_match_the_file(voc_samples):
    xmls = sorted((voc_samples / "Annotations").glob("*.xml"))
    assert len(xmls) == 20
    total = 0
    for path in xmls:
        boxes, labels = voc.parse_boxes_xml(path)
        ref = _xml_reference(path.read_text())
        assert [voc.CLASS_NAMES[c] for c in labels] == [r[0] for r in ref]
        np.testing.assert_array_equal(boxes, np.asarray([r[1:] for r in ref], np.float32))
        total += len(ref)
    assert total >= 20
    # the dataset uses the XML where there is one
    ds = VOCDataset(voc_samples, "trainval")
    path = xmls[0]
    ex = ds.load(path.stem)
    np.testing.assert_array_equal(ex["boxes"], voc.parse_boxes_xml(path)[0])


# --- boxes from masks --------------------------------------------------------------------


def test_boxes_from_instances():
    inst = np.zeros((20, 30), np.uint8)
    cls = np.zeros((20, 30), np.uint8)
    inst[2:6, 3:9], cls[2:6, 3:9] = 1, 7
    inst[10:19, 20:29], cls[10:19, 20:29] = 2, 12
    cls[10, 20] = 255  # a void pixel inside instance 2 does not change its class
    cls[11, 21] = 7  # a minority class inside instance 2 neither
    inst[0, 0] = 255  # void instance id: no box
    boxes, labels = voc.boxes_from_instances(inst, cls)
    np.testing.assert_array_equal(boxes, [[3, 2, 9, 6], [20, 10, 29, 19]])
    np.testing.assert_array_equal(labels, [7, 12])


def test_boxes_from_class_mask_connected_components():
    cls = np.zeros((30, 40), np.uint8)
    cls[1:5, 1:6] = 3  # component A of class 3
    cls[5:9, 6:10] = 3  # touches A only at a corner: 8-connected, so the same component
    cls[20:28, 30:38] = 3  # component B of class 3
    cls[15:20, 2:12] = 9  # class 9
    cls[25:28, 2:5] = 9  # 9 pixels: below min_pixels=16, dropped
    cls[0, 39] = 255
    boxes, labels = voc.boxes_from_class_mask(cls)
    order = np.lexsort((boxes[:, 0], labels))
    np.testing.assert_array_equal(boxes[order], [[1, 1, 10, 9], [30, 20, 38, 28], [2, 15, 12, 20]])
    np.testing.assert_array_equal(labels[order], [3, 3, 9])


# --- train_aug -----------------------------------------------------------------------------


def _sbd_example(sbd, i, value, size=(20, 24)):
    seg = np.zeros(size, np.uint8)
    seg[4:12, 5:15] = value
    seg[3, 5:15] = 255
    inst = (seg == value).astype(np.uint8)
    write_sbd_mat(sbd / "cls" / f"{i}.mat", "GTcls", seg)
    write_sbd_mat(sbd / "inst" / f"{i}.mat", "GTinst", inst)
    (sbd / "img").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size + (3,), value * 10, np.uint8)).save(sbd / "img" / f"{i}.jpg")
    return seg


def test_train_aug_is_voc_train_plus_sbd_minus_voc_val(tmp_path):
    root = make_voc_tree(tmp_path / "VOC2012", num_train=3, num_val=2)
    voc_train = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    voc_val = (root / "ImageSets/Segmentation/val.txt").read_text().split()
    sbd = tmp_path / "sbd" / "dataset"
    segs = {i: _sbd_example(sbd, i, v) for i, v in [("s_a", 4), ("s_b", 5), ("s_c", 6)]}
    # SBD holds a VOC train id (VOC's PNG wins), a VOC val id (excluded) and its own ids
    _sbd_example(sbd, voc_train[0], 2, size=(96, 96))
    _sbd_example(sbd, voc_val[0], 2, size=(96, 96))
    (sbd / "train.txt").write_text(f"s_a\n{voc_train[0]}\n{voc_val[0]}\n")
    (sbd / "val.txt").write_text("s_b\ns_c\ns_a\n")
    ds = VOCDataset(root, "train_aug", sbd_root=sbd)
    assert ds.ids == voc_train + ["s_a", "s_b", "s_c"]
    assert not set(ds.ids) & set(voc_val)
    ex = ds.load("s_b")
    np.testing.assert_array_equal(ex["label"], segs["s_b"])
    np.testing.assert_array_equal(ex["boxes"], [[5, 4, 15, 12]])  # from GTinst
    np.testing.assert_array_equal(ex["box_labels"], [5])
    first = ds.load(voc_train[0])
    png = np.asarray(Image.open(root / "SegmentationClass" / f"{voc_train[0]}.png"))
    np.testing.assert_array_equal(first["label"], png)
    with pytest.raises(DataError, match="needs sbd_root"):
        VOCDataset(root, "train_aug")


def test_sbd_mat_values_are_checked_before_the_uint8_cast(tmp_path):
    seg = np.zeros((8, 8), np.uint16)
    seg[2, 2] = 256  # would wrap to 0 (background): a silent wrong label
    write_sbd_mat(tmp_path / "x.mat", "GTcls", seg)
    with pytest.raises(DataError, match=r"x\.mat.*outside the integers 0\.\.255"):
        voc.read_sbd_mat(tmp_path / "x.mat", "GTcls")
    write_sbd_mat(tmp_path / "y.mat", "GTinst", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match=r"y\.mat: unreadable SBD"):
        voc.read_sbd_mat(tmp_path / "y.mat", "GTcls")  # wrong struct name


# --- bad input: strict raises naming file and problem, lenient skips and counts -------------


def _break(root, ids, case):
    """Damages example ids[0] of a generated tree; returns (file named, problem regex)."""
    i = ids[0]
    jpg = root / "JPEGImages" / f"{i}.jpg"
    png = root / "SegmentationClass" / f"{i}.png"
    xml = root / "Annotations" / f"{i}.xml"
    if case == "truncated_jpeg":
        break_file(jpg, "truncate")
        return jpg, "corrupt or unreadable image"
    if case == "corrupt_jpeg":
        break_file(jpg, "garbage")
        return jpg, "corrupt or unreadable image"
    if case == "truncated_png":
        break_file(png, "truncate")
        return png, "corrupt or unreadable image"
    if case == "corrupt_png":
        break_file(png, "garbage")
        return png, "corrupt or unreadable image"
    if case == "mask_size":
        save_mask(png, np.zeros((50, 60), np.uint8))
        return png, "mask size 60x50 differs from image"
    if case == "label_21":
        label = np.asarray(Image.open(png)).copy()
        label[5:7, 5:7] = 21
        label[0, 0] = 254
        save_mask(png, label)
        return png, r"label values \[21, 254\] outside 0\.\.20 and 255"
    if case == "rgb_mask":
        Image.open(png).convert("RGB").save(png)
        return png, "must be a palette"
    if case == "missing_file":
        jpg.unlink()
        return jpg, f"split 'train' lists id '{i}' but"
    if case == "empty_xml":
        xml.write_text("")
        return xml, "empty or unparsable XML"
    if case == "bad_xml":
        xml.write_text("<annotation><object><name>dog</name>")
        return xml, "empty or unparsable XML"
    if case == "unknown_class":
        xml.write_text("<annotation><object><name>unicorn</name></object></annotation>")
        return xml, "unknown object class 'unicorn'"
    if case == "inverted_box":
        xml.write_text(
            "<annotation><object><name>dog</name><bndbox><xmin>50</xmin><ymin>5"
            "</ymin><xmax>10</xmax><ymax>20</ymax></bndbox></object></annotation>"
        )
        return xml, "inverted bndbox"
    raise ValueError(case)


BAD_CASES = [
    "truncated_jpeg",
    "corrupt_jpeg",
    "truncated_png",
    "corrupt_png",
    "mask_size",
    "label_21",
    "rgb_mask",
    "missing_file",
    "empty_xml",
    "bad_xml",
    "unknown_class",
    "inverted_box",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_strict_and_lenient(tmp_path, case):
    root = make_voc_tree(tmp_path / "VOC2012", num_train=4, num_val=1, size=64)
    ids = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    path, problem = _break(root, ids, case)
    with pytest.raises(
        DataError,
        match=rf"{re.escape(str(path))}.*{problem}|"
        rf"{problem}.*{re.escape(str(path))}",
    ):
        list(VOCDataset(root, "train"))
    lenient = VOCDataset(root, "train", strict=False)
    good = list(lenient)
    assert [ex["id"] for ex in good] == ids[1:]
    assert len(lenient.skipped) == 1 and lenient.skipped[0][0] == ids[0]
    assert str(path) in lenient.skipped[0][1]
    list(lenient)  # a second pass counts the same bad example once
    assert len(lenient.skipped) == 1


def test_missing_split_file_and_root(tmp_path):
    root = make_voc_tree(tmp_path / "VOC2012", num_train=2, num_val=1, size=64)
    with pytest.raises(DataError, match=r"nosuch\.txt: split file not found"):
        VOCDataset(root, "nosuch")
    with pytest.raises(DataError, match="VOC root folder not found"):
        VOCDataset(tmp_path / "nothing", "train")


def test_xml_box_outside_the_image_is_an_error(tmp_path):
    root = make_voc_tree(tmp_path / "VOC2012", num_train=2, num_val=1, size=64)
    ids = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    xml = root / "Annotations" / f"{ids[0]}.xml"
    xml.write_text(
        "<annotation><object><name>dog</name><bndbox><xmin>100</xmin><ymin>5</ymin>"
        "<xmax>120</xmax><ymax>20</ymax></bndbox></object></annotation>"
    )
    with pytest.raises(DataError, match="lies outside the 64x64 image"):
        VOCDataset(root, "train").load(ids[0])


def test_grey_and_cmyk_jpegs_read_as_rgb(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(
        voc.read_image(tmp_path / "grey.png"), np.repeat(rgb[..., :1], 3, axis=2)
    )
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    out = voc.read_image(tmp_path / "cmyk.jpg")
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8


def test_split_lists_ids_with_extra_columns(tmp_path):
    root = make_voc_tree(tmp_path / "VOC2012", num_train=2, num_val=1, size=64)
    ids = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    write_split(root, "withcols", [f"{i}  1" for i in ids])  # ImageSets/Main style
    assert VOCDataset(root, "withcols").ids == ids
