"""Image data: folders (class subfolders, or flat with labels.tsv), unlabelled folders, and the
embedded photos that let the demo run offline.

Labels are optional everywhere: distillation and agreement need none. Transforms follow the
teacher's timm data config (input size, interpolation, crop, mean/std).
"""

from __future__ import annotations

import csv
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm"}
SKIP_SHOWN = 3                # unreadable files named on stderr
MAX_UNREADABLE = 0.25         # a larger fraction of unreadable files is refused: the wrong folder, or a bad copy
# skimage.data colour photos that ship inside the package (no download)
EMBEDDED_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                   "immunohistochemistry", "retina", "colorwheel")


@dataclass(frozen=True)
class Item:
    path: str
    label: int = -1          # -1: unlabelled


def _interp(name: str):
    from torchvision.transforms import InterpolationMode

    return {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
            "nearest": InterpolationMode.NEAREST}.get(name, InterpolationMode.BICUBIC)


def eval_transform(data_config: dict, resolution: int | None = None):
    """Resize to res/crop_pct, centre crop, normalise (timm's eval transform)."""
    from torchvision import transforms as T

    res = resolution or int(data_config["input_size"][-1])
    crop_pct = float(data_config.get("crop_pct", 0.875))
    return T.Compose([
        T.Resize(int(round(res / crop_pct)), interpolation=_interp(data_config.get("interpolation", "bicubic"))),
        T.CenterCrop(res),
        T.ToTensor(),
        T.Normalize(data_config["mean"], data_config["std"]),
    ])


def train_transform(data_config: dict, resolution: int | None = None, scale=(0.25, 1.0)):
    """Random resized crop + horizontal flip (labels are not needed, so no mixing rules)."""
    from torchvision import transforms as T

    res = resolution or int(data_config["input_size"][-1])
    return T.Compose([
        T.RandomResizedCrop(res, scale=scale, interpolation=_interp(data_config.get("interpolation", "bicubic"))),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(data_config["mean"], data_config["std"]),
    ])


_NOTED: set[str] = set()
_DECODED: dict[tuple, bool] = {}    # (path, size, mtime) → decodes: stages scan the same folder again


def _readable(path: Path) -> bool:
    """Whether the image decodes to the end: `verify()` and a draft (reduced-scale) decode both pass
    a truncated JPEG, which would then fail mid-training."""
    try:
        st = path.stat()
    except OSError:
        return False
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _DECODED:
        try:
            with Image.open(path) as im:
                im.load()
            _DECODED[key] = True
        except Exception:  # PIL raises OSError, SyntaxError, ValueError... for a bad file
            _DECODED[key] = False
    return _DECODED[key]


def _label(row: dict, tsv: Path, line: int, num_classes: int | None) -> int:
    text = (row.get("class_index") or "").strip()
    if not text:
        return -1
    try:
        label = int(text)
    except ValueError:
        raise UserError(f"{tsv}:{line}: class_index {text!r} is not an integer") from None
    if label < 0 or (num_classes and label >= num_classes):
        allowed = f"0..{num_classes - 1}" if num_classes else ">= 0"
        raise UserError(f"{tsv}:{line}: class_index {label} is out of range ({allowed}; leave it empty for unlabelled)")
    return label


def _read_tsv(tsv: Path, root: Path, num_classes: int | None) -> list[Item]:
    try:
        with open(tsv, newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t")
            if not reader.fieldnames or "file" not in reader.fieldnames:
                raise UserError(f"{tsv} needs a header with a 'file' column (and 'class_index')")
            items = []
            for row in reader:
                if None in row or None in row.values() or not (row.get("file") or "").strip():
                    raise UserError(f"{tsv}:{reader.line_num}: expected {len(reader.fieldnames)} tab-separated "
                                    f"columns ({', '.join(reader.fieldnames)}) with a file name")
                items.append(Item(str(root / row["file"].strip()), _label(row, tsv, reader.line_num, num_classes)))
            return items
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{tsv} is unreadable ({exc})") from None


def scan_folder(root: str | Path, num_classes: int | None = None) -> tuple[list[Item], int, list[str]]:
    """(items, skipped_unreadable, class_names) of an image folder.

    Layouts: a flat folder with `labels.tsv` (file, class_index, ...), class subfolders (labels by
    sorted folder name), or a flat folder of images (unlabelled). num_classes: the teacher's, to
    refuse labels it cannot predict. Unreadable files are skipped and named on stderr; more than
    MAX_UNREADABLE of them is refused.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist")
    candidates: list[Item] = []
    classes: list[str] = []
    tsv = root / "labels.tsv"
    if tsv.is_file():
        candidates = _read_tsv(tsv, root, num_classes)
    else:
        subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if subdirs:
            classes = [d.name for d in subdirs]
            if num_classes and len(classes) > num_classes:
                raise UserError(f"data folder {root} has {len(classes)} class folders, the teacher predicts "
                                f"{num_classes} classes")
            for idx, d in enumerate(subdirs):
                for f in sorted(d.rglob("*")):
                    if f.suffix.lower() in IMAGE_SUFFIXES:
                        candidates.append(Item(str(f), idx))
        for f in sorted(root.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                candidates.append(Item(str(f), -1))
    items, bad = [], []
    for it in candidates:
        (items if _readable(Path(it.path)) else bad).append(it)
    if not items:
        raise UserError(f"data folder {root} has no readable image"
                        + (f" ({len(bad)} unreadable files skipped)" if bad else ""))
    if bad:
        names = ", ".join(Path(it.path).name for it in bad[:SKIP_SHOWN]) + (", ..." if len(bad) > SKIP_SHOWN else "")
        if len(bad) > MAX_UNREADABLE * len(candidates):
            raise UserError(f"data folder {root}: {len(bad)} of {len(candidates)} images are unreadable or "
                            f"missing (first: {names})")
        note = f"hant-trt: skipped {len(bad)} unreadable image(s) in {root}: {names}"
        if note not in _NOTED:          # stages scan the same folder several times: say it once
            _NOTED.add(note)
            print(note, file=sys.stderr)
    return items, len(bad), classes


class FolderDataset(Dataset):
    """Images of a folder with a transform; yields (image tensor, label) with label -1 if unknown."""

    def __init__(self, items: list[Item], transform):
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        it = self.items[i]
        try:
            with Image.open(it.path) as im:
                img = im.convert("RGB")
        except OSError as exc:      # changed or removed since the folder was scanned
            raise UserError(f"image {it.path} is unreadable ({exc})") from None
        return self.transform(img), it.label

    @property
    def labelled(self) -> bool:
        return all(it.label >= 0 for it in self.items)


def embedded_photos() -> list[Image.Image]:
    """The colour photos bundled with scikit-image (no network needed)."""
    import skimage.data

    photos = []
    for name in EMBEDDED_PHOTOS:
        try:
            arr = getattr(skimage.data, name)()
        except Exception:  # a photo that would need a download: skip it
            continue
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        photos.append(Image.fromarray(arr[..., :3]))
    if not photos:
        raise UserError("no embedded photos could be loaded from scikit-image")
    return photos


class EmbeddedDataset(Dataset):
    """`length` random crops of the embedded photos. Deterministic per index (seeded), so an
    `eval` split is a fixed set of views; `train` views differ from eval views by seed offset."""

    def __init__(self, data_config: dict, length: int = 256, split: str = "train",
                 resolution: int | None = None, seed: int = 0):
        from torchvision import transforms as T

        self.photos = embedded_photos()
        self.length = length
        self.seed = seed + (0 if split == "train" else 1_000_003)
        res = resolution or int(data_config["input_size"][-1])
        self.crop = T.RandomResizedCrop(res, scale=(0.2, 1.0),
                                        interpolation=_interp(data_config.get("interpolation", "bicubic")))
        self.post = T.Compose([T.RandomHorizontalFlip(), T.ToTensor(),
                               T.Normalize(data_config["mean"], data_config["std"])])

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(self.seed * 7919 + i)
        state = torch.get_rng_state()
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        try:
            photo = self.photos[i % len(self.photos)]
            img = self.post(self.crop(photo))
        finally:
            torch.set_rng_state(state)
        return img, -1

    labelled = False


def fingerprint_items(items: list[Item]) -> str:
    h = hashlib.sha256()
    for it in items:
        h.update(f"{it.path}\t{it.label}\n".encode())
    return h.hexdigest()[:16]


def split_items(items: list[Item], eval_fraction: float, seed: int = 0) -> tuple[list[Item], list[Item]]:
    """Deterministic train/eval split of one folder (the eval part is never trained on)."""
    if not 0 < eval_fraction < 1:
        raise UserError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(items))
    n_eval = max(1, int(round(len(items) * eval_fraction)))
    ev = sorted(order[:n_eval].tolist())
    tr = sorted(order[n_eval:].tolist())
    return [items[i] for i in tr], [items[i] for i in ev]


@dataclass
class DataSplits:
    train: Dataset
    eval: Dataset
    description: str
    fingerprint: str


def make_splits(train: str, eval: str | None, data_config: dict, *, resolution: int | None = None,
                train_resolution: int | None = None, eval_fraction: float = 0.2,
                max_images: int | None = None, seed: int = 0, train_augment: bool = True,
                embedded_length: int = 256, train_on_eval: bool = False) -> DataSplits:
    """Train and eval datasets from the config's data section.

    `train`: "embedded" or a folder; `eval`: a folder, or None for a held-out part of `train`.
    `train_resolution` lets distillation run at a reduced resolution. `train_on_eval`: the train
    set holds the eval images too (`build.finetune_images = "all"`); the eval set is unchanged.
    """
    if train == "embedded":
        tr = EmbeddedDataset(data_config, embedded_length, "train", train_resolution or resolution, seed)
        ev = EmbeddedDataset(data_config, max(32, embedded_length // 4), "eval", resolution, seed)
        return DataSplits(tr, ev, f"embedded photos ({len(tr.photos)} images, random crops)",
                          f"embedded-{embedded_length}-{seed}")
    num_classes = data_config.get("num_classes")
    items, skipped, _ = scan_folder(train, num_classes)
    if max_images:
        items = items[:max_images]
    if eval is None:
        tr_items, ev_items = split_items(items, eval_fraction, seed)
    else:
        tr_items = items
        ev_items, _, _ = scan_folder(eval, num_classes)
        if max_images:
            ev_items = ev_items[:max_images]
    ttf = (train_transform(data_config, train_resolution or resolution) if train_augment
           else eval_transform(data_config, train_resolution or resolution))
    desc = f"{train}: {len(tr_items)} train / {len(ev_items)} eval images"
    fp = fingerprint_items(tr_items) + fingerprint_items(ev_items)
    if train_on_eval:
        tr_items = tr_items + ev_items
        desc += ", trained on both"
    if skipped:
        desc += f" ({skipped} unreadable skipped)"
    return DataSplits(FolderDataset(tr_items, ttf), FolderDataset(ev_items, eval_transform(data_config, resolution)),
                      desc, fp)


def data_splits(cfg, data_config: dict, train_resolution=None, train_augment=True,
                resolution=None, train_on_eval: bool = False):
    """The run's splits as its configuration (`cfg.data`, `cfg.distill.seed`) defines them: every
    stage that reads images gets the same ones."""
    return make_splits(cfg.data.train, cfg.data.eval, data_config, resolution=resolution,
                       train_resolution=train_resolution, eval_fraction=cfg.data.eval_fraction,
                       max_images=cfg.data.max_images, seed=cfg.distill.seed, train_augment=train_augment,
                       train_on_eval=train_on_eval)
