import pytest
import torch
from PIL import Image

from hant_trt.data import EmbeddedDataset, FolderDataset, make_splits, scan_folder, split_items
from hant_trt.errors import UserError

CFG = {"input_size": [3, 64, 64], "interpolation": "bicubic", "mean": [0.485, 0.456, 0.406],
       "std": [0.229, 0.224, 0.225], "crop_pct": 0.875}


def _img(path, color=(200, 10, 10)):
    Image.new("RGB", (80, 60), color).save(path)


def test_class_subfolders_and_unreadable_counted(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            _img(tmp_path / cls / f"{i}.jpg")
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"garbage")
    items, skipped, classes = scan_folder(tmp_path)
    assert classes == ["cat", "dog"] and len(items) == 6 and skipped == 1
    assert sorted({it.label for it in items}) == [0, 1]


def test_labels_tsv_layout(tmp_path):
    _img(tmp_path / "a.jpg")
    _img(tmp_path / "b.jpg")
    (tmp_path / "labels.tsv").write_text("file\tclass_index\twnid\tname\na.jpg\t3\tn1\tx\nb.jpg\t7\tn2\ty\n")
    items, _, _ = scan_folder(tmp_path)
    assert [it.label for it in items] == [3, 7]
    x, y = FolderDataset(items, __import__("hant_trt.data", fromlist=["eval_transform"]).eval_transform(CFG))[0]
    assert x.shape == (3, 64, 64) and y == 3


def test_flat_unlabelled(tmp_path):
    _img(tmp_path / "a.png")
    items, _, _ = scan_folder(tmp_path)
    assert items[0].label == -1


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        scan_folder(tmp_path / "nope")
    (tmp_path / "junk.jpg").write_bytes(b"x")
    with pytest.raises(UserError, match="no readable image"):
        scan_folder(tmp_path)


def test_split_is_disjoint_and_deterministic(tmp_path):
    for i in range(20):
        _img(tmp_path / f"{i}.jpg")
    items, _, _ = scan_folder(tmp_path)
    a = split_items(items, 0.25, seed=1)
    b = split_items(items, 0.25, seed=1)
    assert a == b and len(a[1]) == 5
    assert not {i.path for i in a[0]} & {i.path for i in a[1]}


def test_embedded_views_are_deterministic_and_distinct():
    tr = EmbeddedDataset(CFG, length=8, split="train")
    ev = EmbeddedDataset(CFG, length=8, split="eval")
    x0, y0 = tr[0]
    assert x0.shape == (3, 64, 64) and y0 == -1
    assert torch.equal(tr[3][0], tr[3][0])
    assert not torch.equal(tr[0][0], ev[0][0])
    assert len(tr.photos) >= 6


def test_make_splits_reduced_train_resolution(tmp_path):
    for i in range(10):
        _img(tmp_path / f"{i}.jpg")
    s = make_splits(str(tmp_path), None, CFG, resolution=64, train_resolution=32, eval_fraction=0.2)
    assert s.train[0][0].shape == (3, 32, 32) and s.eval[0][0].shape == (3, 64, 64)


def test_train_on_eval_adds_the_eval_images_to_train_only(tmp_path):
    """build.finetune_images = "all": the fine-tune's set is train + eval, augmented at the train
    resolution; the eval set (what the build measures on) is the same images as before."""
    for i in range(10):
        _img(tmp_path / f"{i}.jpg")
    held = make_splits(str(tmp_path), None, CFG, resolution=64, train_resolution=32, eval_fraction=0.2)
    both = make_splits(str(tmp_path), None, CFG, resolution=64, train_resolution=32, eval_fraction=0.2,
                       train_on_eval=True)
    paths = lambda ds: sorted(it.path for it in ds.items)  # noqa: E731
    assert paths(both.eval) == paths(held.eval) and len(held.eval) == 2
    assert paths(both.train) == sorted(paths(held.train) + paths(held.eval))
    assert both.train[9][0].shape == (3, 32, 32) and "trained on both" in both.description
    assert both.fingerprint == held.fingerprint   # the same images: phase 1's fingerprints do not move


def _truncated_jpeg(path):
    import numpy as np

    arr = (np.random.default_rng(0).random((120, 160, 3)) * 255).astype("uint8")
    Image.fromarray(arr).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_jpeg_is_skipped_and_named(tmp_path, capsys):
    for i in range(5):
        _img(tmp_path / f"{i}.jpg")
    _truncated_jpeg(tmp_path / "cut.jpg")
    items, skipped, _ = scan_folder(tmp_path)
    assert skipped == 1 and "cut.jpg" not in {p.path.rsplit("/", 1)[-1] for p in items}
    err = capsys.readouterr().err
    assert "skipped 1 unreadable image(s)" in err and "cut.jpg" in err


def test_mostly_unreadable_folder_is_refused_naming_files(tmp_path):
    _img(tmp_path / "ok.jpg")
    for i in range(3):
        _truncated_jpeg(tmp_path / f"cut{i}.jpg")
    with pytest.raises(UserError, match=r"3 of 4 images are unreadable.*cut0.jpg"):
        scan_folder(tmp_path)


@pytest.mark.parametrize("rows,match", [
    ("a.jpg\tcat\n", r"labels.tsv:2: class_index 'cat' is not an integer"),
    ("a.jpg\t1\nb.jpg\t-3\n", r"labels.tsv:3: class_index -3 is out of range"),
    ("a.jpg\n", r"labels.tsv:2: expected 2 tab-separated columns"),
    ("a.jpg\t1\textra\n", r"labels.tsv:2: expected 2"),
    ("\t4\n", r"labels.tsv:2: .*with a file name"),
])
def test_bad_labels_rows_name_the_line(tmp_path, rows, match):
    _img(tmp_path / "a.jpg")
    _img(tmp_path / "b.jpg")
    (tmp_path / "labels.tsv").write_text("file\tclass_index\n" + rows)
    with pytest.raises(UserError, match=match):
        scan_folder(tmp_path)


def test_labels_beyond_the_teachers_classes(tmp_path):
    _img(tmp_path / "a.jpg")
    (tmp_path / "labels.tsv").write_text("file\tclass_index\na.jpg\t1000\n")
    with pytest.raises(UserError, match=r"class_index 1000 is out of range \(0..999"):
        make_splits(str(tmp_path), None, {**CFG, "num_classes": 1000})
    assert scan_folder(tmp_path)[0][0].label == 1000        # no teacher known: only >= 0 is checked


def test_image_that_breaks_after_the_scan_is_a_user_error(tmp_path):
    from hant_trt.data import eval_transform

    _img(tmp_path / "a.jpg")
    items, _, _ = scan_folder(tmp_path)
    _truncated_jpeg(tmp_path / "a.jpg")
    with pytest.raises(UserError, match="a.jpg is unreadable"):
        FolderDataset(items, eval_transform(CFG))[0]
