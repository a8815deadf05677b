"""Datasets in their standard on-disk layouts: VOC2012, ADE20K, NYUv2, the saliency sets, and ``folder``.

Nothing is downloaded: every loader takes ``root=`` (required) and reads the layout its registry entry names.
``folder`` reads the plain layout that :func:`tasks.scenes.export_scenes` writes, so any dataset converted to
it can be probed. Each target file is read and checked by its kind (:meth:`tasks.kinds.TargetKind.read_target`,
``check_target``); the ``folder`` dataset also takes its subfolder, file types and ``dataset.yaml`` keys from
the kind, so a kind a plugin registers needs nothing here.

Error policy (all errors are :class:`ProbebenchError`, with the offending path in the message):

- at construction: a missing root or layout (names the path and the expected layout), an unknown split or
  option, a split with no images, a file listed in a split file that is missing, an image without its target
  file or a target file without its image (names the stem), and a bad ``dataset.yaml`` (unknown key → the
  closest valid key);
- when an item is loaded: an unreadable image, a target whose size differs from its image (both sizes), a
  class id outside ``[0, num_classes)`` that is not the ignore index (the bad values), and NaN or negative
  depth.

Ordering is deterministic: split-file order where the layout has split files, sorted ids otherwise.

Identity is content (:mod:`tasks.content`): :meth:`Dataset.fingerprint` (hashed into feature-cache names) holds
name, version, split and one digest of the ordered ``(id, SHA-256 of the image file)`` records;
:meth:`Dataset.target_fingerprint` the same for the target files, plus the target specs and label options. For
NYUv2's ``.mat`` form an item is the container file's digest and its index in it. So editing a file (one pixel)
gives new features, a copy holding a corrupt file is extracted (and fails on that file) rather than served
from another copy's cache, and two datasets that share a ``dataset.yaml`` ``name:`` share nothing unless their
files are equal. The root path is never part of either identity: the same data moved elsewhere reuses its cache
(after one cold pass of hashing, since the memo is keyed by path). A :class:`~tasks.base.Subset` of the first
``n`` items reads only those items' files. Digests are memoised by path, size, mtime, ctime and inode (see
:mod:`tasks.content` for where, how to override, and the limits).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import yaml
from PIL import Image

from probebench.core.errors import ProbebenchError, UnknownNameError
from tasks._registry import TASKS
from tasks.base import Dataset, TargetSpec
from tasks.content import digest_lines, file_digests
from tasks.kinds import TargetKind, get_kind, kind_names
from tasks.kinds.base import DECODE_ERRORS, open_image
from tasks.kinds.depth import check_depth
from tasks.kinds.saliency import MASK_EXTS
from tasks.kinds.segmentation import LABEL_EXTS

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# SceneParsing objectInfo150 order (as in mmsegmentation's ADE20KDataset).
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier",
    "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------- file readers


def image_hw(path: Path) -> tuple[int, int]:
    """(height, width) of the image at ``path``, from its header."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError as e:
        raise ProbebenchError(f"Missing file {path}.") from e
    except DECODE_ERRORS as e:
        raise ProbebenchError(f"Cannot read image {path}: {e}") from e
    return h, w


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 1]; grayscale, palette, CMYK and RGBA (alpha dropped) are converted."""
    im = open_image(path)
    if im.mode.startswith("I;16"):  # 16-bit grayscale
        gray = np.asarray(im, dtype=np.float32) / np.float32(65535)
        return np.repeat(gray[..., None], 3, axis=-1)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).astype(np.float32) / np.float32(255)


def check_size(path: Path | str, hw: tuple[int, ...], image: Path | str, image_hw_: tuple[int, ...]) -> None:
    if tuple(hw) != tuple(image_hw_):
        raise ProbebenchError(
            f"{path}: size {hw[0]}x{hw[1]} (HxW) does not match its image {image} ({image_hw_[0]}x{image_hw_[1]})."
        )


# ---------------------------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class Item:
    """One image and its target files (``index``: position inside a container file such as NYUv2's .mat)."""

    id: str
    image: Path
    targets: dict[str, Path] = field(default_factory=dict)
    index: int | None = None


def _few(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _need_dir(path: Path, what: str, layout: str) -> Path:
    if not path.is_dir():
        raise ProbebenchError(f"{what}: folder {path} does not exist. Expected layout: {layout}")
    return path


def files_by_stem(folder: Path, exts: tuple[str, ...]) -> dict[str, Path]:
    """``{stem: path}`` of the files in ``folder`` with one of ``exts`` (case-insensitive), sorted by stem."""
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.suffix.lower() not in exts or not p.is_file():
            continue
        if p.stem in out:
            raise ProbebenchError(
                f"Two files in {folder} share the stem {p.stem!r}: {out[p.stem].name} and {p.name}."
            )
        out[p.stem] = p
    return dict(sorted(out.items()))


def match_pairs(image_dir: Path, targets: dict[str, tuple[Path, tuple[str, ...]]]) -> list[Item]:
    """Pair the images in ``image_dir`` with one file per target kind (``{kind: (folder, exts)}``) by stem."""
    images = files_by_stem(image_dir, IMAGE_EXTS)
    per_kind: dict[str, dict[str, Path]] = {}
    for kind, (folder, exts) in targets.items():
        files = per_kind[kind] = files_by_stem(folder, exts)
        missing, orphans = sorted(images.keys() - files.keys()), sorted(files.keys() - images.keys())
        if missing:
            raise ProbebenchError(
                f"{len(missing)} image(s) in {image_dir} have no {kind} file in {folder} "
                f"(expected {folder / missing[0]}{exts[0]}): {_few(missing)}."
            )
        if orphans:
            raise ProbebenchError(
                f"{len(orphans)} {kind} file(s) in {folder} have no image in {image_dir}: "
                f"{_few([files[s].name for s in orphans])}."
            )
    return [
        Item(stem, path, {k: files[stem] for k, files in per_kind.items()}) for stem, path in images.items()
    ]


def read_split_file(path: Path) -> list[str]:
    """Ids listed one per line (first token of each non-empty line), in file order."""
    if not path.is_file():
        choices = sorted(p.stem for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
        raise ProbebenchError(
            f"Split file {path} does not exist (split files there: {', '.join(choices) or 'none'})."
        )
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def check_listed(items: list[Item], listing: Path) -> None:
    """Every file named by ``items`` (listed in the split file ``listing``) exists."""
    missing = [p for it in items for p in (it.image, *it.targets.values()) if not p.is_file()]
    if missing:
        raise ProbebenchError(
            f"{missing[0]} is listed in {listing} but does not exist ({len(missing)} missing file(s) in all)."
        )


def read_meta(path: Path, valid: tuple[str, ...]) -> dict[str, Any]:
    """A ``dataset.yaml`` mapping whose keys are all in ``valid`` (unknown key → the closest valid ones)."""
    try:
        meta = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ProbebenchError(f"Cannot read {path}: {e}") from e
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise ProbebenchError(
            f"{path}: expected a mapping of keys ({', '.join(valid)}), got {type(meta).__name__}."
        )
    for key in meta:
        if key not in valid:
            raise UnknownNameError("dataset.yaml key", str(key), valid, extra=f"(in {path})")
    return meta


# ---------------------------------------------------------------------------------------------- base class


class DiskDataset(Dataset):
    """A split listed from ``root`` at construction and decoded item by item (validated when loaded)."""

    layout: ClassVar[str] = ""  # the expected on-disk layout, quoted in errors and in the registry
    splits: ClassVar[tuple[str, ...]] = ()
    eval_options: ClassVar[dict[str, dict[str, Any]]] = {}  # per target kind, defaults for evaluation
    # images per split in the official release: what a plan (--dry-run) counts when the data is not on disk
    nominal_sizes: ClassVar[dict[str, int]] = {}

    def __init__(self, split: str, root: str | Path | None, unknown: dict[str, Any]):
        if unknown:
            valid = [
                p for p in inspect.signature(type(self).__init__).parameters if p not in ("self", "unknown")
            ]
            raise UnknownNameError(f"{self.name} option", next(iter(unknown)), valid)
        if self.splits and split not in self.splits:
            raise UnknownNameError(f"{self.name} split", split, self.splits)
        super().__init__(split)
        if root is None:
            raise ProbebenchError(
                f"{self.name} reads data from disk and needs root=<folder>. Layout: {self.layout}"
            )
        self.root = Path(root).expanduser()
        if not self.root.exists():
            raise ProbebenchError(
                f"{self.name}: root {self.root} does not exist. Expected layout: {self.layout}"
            )
        self.items: list[Item] = []
        self._targets: dict[str, TargetSpec] = {}

    def _set_items(self, items: list[Item], where: Path | str) -> None:
        if not items:
            raise ProbebenchError(f"{self.name}: split {self.split!r} is empty ({where}).")
        self.items = list(items)

    @property
    def targets(self) -> dict[str, TargetSpec]:
        return self._targets

    def __len__(self) -> int:
        return len(self.items)

    def item(self, index: int) -> Item:
        return self.items[self.check_index(index)]

    def image_id(self, index: int) -> str:
        return self.item(index).id

    def load_image(self, index: int) -> np.ndarray:
        return read_image(self.item(index).image)

    def load_target(self, index: int, kind: str) -> np.ndarray:
        """The target file read by its kind (:meth:`TargetKind.read_target`), mapped by :meth:`map_labels`,
        then checked by the kind and against its image's size."""
        spec, item = self.target_spec(kind), self.item(index)
        path, target_kind = item.targets[kind], spec.target_kind
        stored = target_kind.read_target(path, spec)
        target = self.map_labels(stored)
        target_kind.check_target(target, spec, path, stored=stored, note=self.label_note)
        check_size(path, target.shape, item.image, image_hw(item.image))
        return target

    label_note = ""  # how file values map to target values (class ids), for errors

    def map_labels(self, raw: np.ndarray) -> np.ndarray:
        """File values → target values (identity unless the layout stores class ids shifted)."""
        return raw

    def fingerprint(self) -> dict[str, Any]:
        return self.fingerprint_of_first(len(self))

    def fingerprint_of_first(self, n: int) -> dict[str, Any]:
        """Name, version, split and the content of the first ``n`` items' images (ids and order included)."""
        n = self._clip(n)
        return {**self._header(n), "images_sha256": self._content(n, ("image",))}

    def target_fingerprint_of_first(self, n: int) -> dict[str, Any]:
        """Name, version, split, the target specs, label options and the content of the first ``n`` items'
        target files (ids and order included); not the images (those are in :meth:`fingerprint`)."""
        n = self._clip(n)
        content = self._content(n, tuple(sorted(self._targets)))
        return {**self._header(n), **self._target_specs(), **self.label_options(), "targets_sha256": content}

    def label_options(self) -> dict[str, Any]:
        """Options that change how target files are read into targets (none by default)."""
        return {}

    def _content(self, n: int, parts: tuple[str, ...]) -> str:
        """One digest of the ordered records ``id, part, file digest[, index in a container]`` of the first ``n``
        items, for ``parts`` ``"image"`` or target kinds."""
        items = self.items[:n]
        files = [it.image if part == "image" else it.targets[part] for it in items for part in parts]
        what = "images" if parts == ("image",) else "targets"
        digests = iter(file_digests(files, desc=f"hash {self.name}/{self.split} {what}"))
        return digest_lines(
            f"{it.id}\t{part}\t{next(digests)}" + ("" if it.index is None else f"\t{it.index}")
            for it in items
            for part in parts
        )


def _first_with(root: Path, candidates: tuple[str, ...], marker: str) -> Path | None:
    """The first ``root / c`` that contains ``marker``."""
    return next((root / c for c in candidates if (root / c / marker).exists()), None)


# ---------------------------------------------------------------------------------------------- VOC, ADE20K

VOC_LAYOUT = (
    "ROOT/VOCdevkit/VOC2012 (or ROOT = that VOC2012 folder) with ImageSets/Segmentation/{train,val}.txt, "
    "JPEGImages/<id>.jpg and SegmentationClass/<id>.png (palette PNG of class indices, 255 = ignore)"
)


@TASKS.register(
    "voc2012",
    kind="segmentation",
    source=f"on disk: {VOC_LAYOUT}",
    notes="PASCAL VOC 2012, 21 classes incl. background, 255 = ignore (object borders)",
)
class VOC2012(DiskDataset):
    """PASCAL VOC 2012 semantic segmentation (1464 train / 1449 val)."""

    name = "voc2012"
    version = "1"
    layout = VOC_LAYOUT
    splits = ("train", "val", "trainval")
    nominal_sizes: ClassVar[dict[str, int]] = {"train": 1464, "val": 1449, "trainval": 2913}

    def __init__(self, split: str = "train", root: str | Path | None = None, **unknown: Any):
        super().__init__(split, root, unknown)
        base = _first_with(self.root, ("VOCdevkit/VOC2012", "VOC2012", "."), "ImageSets/Segmentation")
        if base is None:
            raise ProbebenchError(
                f"voc2012: no ImageSets/Segmentation under {self.root}. Expected layout: {self.layout}"
            )
        listing = base / "ImageSets" / "Segmentation" / f"{split}.txt"
        items = [
            Item(
                i, base / "JPEGImages" / f"{i}.jpg", {"segmentation": base / "SegmentationClass" / f"{i}.png"}
            )
            for i in read_split_file(listing)
        ]
        check_listed(items, listing)
        self._set_items(items, listing)
        self._targets = {"segmentation": TargetSpec("segmentation", len(VOC_CLASSES), VOC_CLASSES, 255)}


ADE_LAYOUT = (
    "ROOT/ADEChallengeData2016 (or ROOT = that folder) with images/{training,validation}/<id>.jpg and "
    "annotations/{training,validation}/<id>.png (0 = other, 1..150 = classes)"
)


@TASKS.register(
    "ade20k",
    kind="segmentation",
    source=f"on disk: {ADE_LAYOUT}",
    notes="ADE20K SceneParsing, 150 classes; reduce_zero_label: 0 -> 255 ignore, k -> k-1",
)
class ADE20K(DiskDataset):
    """ADE20K SceneParsing (20210 train / 2000 val)."""

    name = "ade20k"
    version = "1"
    layout = ADE_LAYOUT
    splits = ("train", "val")
    nominal_sizes: ClassVar[dict[str, int]] = {"train": 20210, "val": 2000}

    def __init__(
        self,
        split: str = "train",
        root: str | Path | None = None,
        reduce_zero_label: bool = True,
        **unknown: Any,
    ):
        super().__init__(split, root, unknown)
        base = _first_with(self.root, ("ADEChallengeData2016", "."), "annotations")
        if base is None:
            raise ProbebenchError(
                f"ade20k: no annotations/ folder under {self.root}. Expected layout: {self.layout}"
            )
        sub = {"train": "training", "val": "validation"}[split]
        images = _need_dir(base / "images" / sub, "ade20k", self.layout)
        labels = _need_dir(base / "annotations" / sub, "ade20k", self.layout)
        self._set_items(match_pairs(images, {"segmentation": (labels, LABEL_EXTS)}), images)
        self.reduce_zero_label = bool(reduce_zero_label)
        names = ADE20K_CLASSES if self.reduce_zero_label else ("other", *ADE20K_CLASSES)
        self._targets = {"segmentation": TargetSpec("segmentation", len(names), names, 255)}
        if self.reduce_zero_label:
            self.label_note = " (file values; with reduce_zero_label 0 -> 255 and k -> k-1)"

    def label_options(self) -> dict[str, Any]:
        return {"reduce_zero_label": self.reduce_zero_label}

    def map_labels(self, raw: np.ndarray) -> np.ndarray:
        if not self.reduce_zero_label:
            return raw
        out = raw - 1
        out[raw == 0] = 255
        return out


# ---------------------------------------------------------------------------------------------- NYUv2

NYU_MAT = "nyu_depth_v2_labeled.mat"
NYU_META_KEYS = ("name", "depth_scale", "min_depth", "max_depth", "source", "description")
NYU_LAYOUT = (
    f"(a) ROOT/{NYU_MAT} (MATLAB v7.3) + ROOT/splits.mat (trainNdxs/testNdxs, 1-based: the standard 795/654 "
    "split from the NYU Depth V2 toolbox); or (b) ROOT/{train,test}/rgb/<id>.png|jpg + "
    "ROOT/{train,test}/depth/<id>.png (16-bit, depth_scale units per metre from ROOT/dataset.yaml, default "
    "1000; 0 = invalid)"
)


def _h5py():
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - h5py is a dependency
        raise ProbebenchError("Reading NYUv2's .mat file needs h5py (pip install h5py).") from e
    return h5py


def _read_nyu_split(path: Path, key: str, n: int, mat: Path) -> list[int]:
    """The 1-based indices under ``key`` in ``path`` (HDF5 / MATLAB v7.3, or older .mat via scipy)."""
    if not path.is_file():
        raise ProbebenchError(
            f"nyuv2: the split file {path} is needed beside {mat.name}: splits.mat from the NYU Depth V2 toolbox "
            "(keys trainNdxs and testNdxs, 1-based indices of the standard 795 train / 654 test images). "
            "Place it there, or use the folder form (ROOT/{train,test}/{rgb,depth})."
        )
    h5py = _h5py()
    try:
        with h5py.File(path, "r") as f:
            keys = list(f.keys())
            arr = np.asarray(f[key]) if key in f else None
    except OSError:  # not HDF5: a MATLAB v5 file
        try:
            from scipy.io import loadmat
        except ImportError as e:
            raise ProbebenchError(f"{path} is not HDF5 (MATLAB v7.3); reading it needs scipy.") from e
        try:
            data = loadmat(path)
        except Exception as e:  # scipy raises several unrelated types on bad files
            raise ProbebenchError(f"Cannot read {path}: {e}") from e
        keys = [k for k in data if not k.startswith("__")]
        arr = data.get(key)
    if arr is None:
        raise ProbebenchError(f"{path}: no {key!r} (keys found: {', '.join(keys) or 'none'}).")
    idx = np.asarray(arr).astype(np.int64).ravel()
    if idx.size and (idx.min() < 1 or idx.max() > n or len(np.unique(idx)) != idx.size):
        raise ProbebenchError(
            f"{path}: {key} must hold distinct 1-based indices into the {n} images of {mat.name}."
        )
    return idx.tolist()


@TASKS.register(
    "nyuv2",
    kind="depth",
    source=f"on disk: {NYU_LAYOUT}",
    notes="NYU Depth V2 labelled set, 795 train / 654 test, 1e-3..10 m, eigen_crop in evaluation",
)
class NYUv2(DiskDataset):
    """NYU Depth V2 (indoor metric depth), from the official labelled .mat or a folder export."""

    name = "nyuv2"
    version = "1"
    layout = NYU_LAYOUT
    splits = ("train", "test")
    nominal_sizes: ClassVar[dict[str, int]] = {"train": 795, "test": 654}
    eval_options: ClassVar[dict[str, dict[str, Any]]] = {"depth": {"eigen_crop": True}}

    def __init__(self, split: str = "train", root: str | Path | None = None, **unknown: Any):
        super().__init__(split, root, unknown)
        mat = self.root if self.root.is_file() else self.root / NYU_MAT
        if mat.is_file():
            self.form = "mat"
            self._targets = {"depth": TargetSpec("depth", min_depth=1e-3, max_depth=10.0)}
            self._list_mat(mat)
        elif (self.root / split / "rgb").is_dir():
            self.form = "folder"
            meta_path = self.root / "dataset.yaml"
            meta = read_meta(meta_path, NYU_META_KEYS) if meta_path.is_file() else {}
            self._targets = {"depth": get_kind("depth").spec_from_meta(meta, meta_path)}
            d = self.root / split
            self._set_items(
                match_pairs(d / "rgb", {"depth": (_need_dir(d / "depth", "nyuv2", self.layout), (".png",))}),
                d,
            )
        else:
            raise ProbebenchError(
                f"nyuv2: neither {mat} nor {self.root / split / 'rgb'} exists. Expected layout: {self.layout}"
            )

    def _list_mat(self, mat: Path) -> None:
        h5py = _h5py()
        try:
            with h5py.File(mat, "r") as f:
                missing = [k for k in ("images", "depths") if k not in f]
                if missing:
                    raise ProbebenchError(
                        f"{mat}: no {' or '.join(missing)} dataset (found: {', '.join(f.keys())})."
                    )
                ishape, dshape = f["images"].shape, f["depths"].shape
        except OSError as e:
            raise ProbebenchError(f"Cannot read {mat} as a MATLAB v7.3 (HDF5) file: {e}") from e
        if len(ishape) != 4 or ishape[1] != 3 or tuple(dshape) != (ishape[0], *ishape[2:]):
            raise ProbebenchError(
                f"{mat}: expected images (N, 3, W, H) and depths (N, W, H) as MATLAB stores them, "
                f"got {tuple(ishape)} and {tuple(dshape)}."
            )
        key = {"train": "trainNdxs", "test": "testNdxs"}[self.split]
        idx = _read_nyu_split(mat.parent / "splits.mat", key, ishape[0], mat)
        self._set_items([Item(f"{k:04d}", mat, {"depth": mat}, index=k - 1) for k in idx], mat)

    def _read_mat(self, item: Item, key: str) -> np.ndarray:
        assert item.index is not None
        try:
            with _h5py().File(item.image, "r") as f:
                return np.asarray(f[key][item.index]).T  # MATLAB column-major: (C, W, H) -> (H, W, C)
        except OSError as e:
            raise ProbebenchError(f"Cannot read {key}[{item.index}] from {item.image}: {e}") from e

    def load_image(self, index: int) -> np.ndarray:
        item = self.item(index)
        if self.form != "mat":
            return super().load_image(index)
        rgb = self._read_mat(item, "images")
        if rgb.dtype != np.uint8:
            raise ProbebenchError(f"{item.image} [image {item.id}]: expected uint8 images, got {rgb.dtype}.")
        return np.ascontiguousarray(rgb).astype(np.float32) / np.float32(255)

    def load_target(self, index: int, kind: str) -> np.ndarray:
        self.target_spec(kind)
        item = self.item(index)
        if self.form != "mat":
            return super().load_target(index, kind)
        depth = np.ascontiguousarray(self._read_mat(item, "depths")).astype(np.float32)
        check_depth(depth, f"{item.image} [image {item.id}]")
        return depth

    def fingerprint_of_first(self, n: int) -> dict[str, Any]:
        return {**super().fingerprint_of_first(n), "form": self.form}

    def target_fingerprint_of_first(self, n: int) -> dict[str, Any]:
        return {**super().target_fingerprint_of_first(n), "form": self.form}


# ---------------------------------------------------------------------------------------------- saliency

SALIENCY_IMAGE_DIRS = ("images", "imgs", "image", "img", "im", "dut-omron-image")
SALIENCY_MASK_DIRS = ("masks", "mask", "gt", "gts", "ground_truth_mask", "groundtruth", "pixelwisegt-new-png")


class SaliencySet(DiskDataset):
    """Salient-object detection: an image folder and a mask folder (foreground = value > 128), paired by stem.

    ``ROOT`` is the dataset folder itself or its parent; the dataset folder is found under one of
    ``folders[split]``. Image and mask subfolders are matched case-insensitively against the names above plus
    ``<folder>-Image`` / ``<folder>-Mask`` (DUTS).
    """

    version = "1"
    splits = ("test",)
    folders: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, split: str = "test", root: str | Path | None = None, **unknown: Any):
        super().__init__(split, root, unknown)
        folders = self.folders[split]
        image_names = {*SALIENCY_IMAGE_DIRS, *(f"{f.lower()}-image" for f in folders)}
        mask_names = {*SALIENCY_MASK_DIRS, *(f"{f.lower()}-mask" for f in folders)}
        subdirs = sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []
        aliases = {f.lower() for f in folders}
        candidates = [self.root, *(p for p in subdirs if p.name.lower() in aliases)] if subdirs else []
        for d in candidates:
            images, masks = self._subdir(d, image_names), self._subdir(d, mask_names)
            if images and masks:
                self._set_items(match_pairs(images, {"saliency": (masks, MASK_EXTS)}), images)
                break
        else:
            raise ProbebenchError(
                f"{self.name}: no image + mask folders under {self.root}. Expected layout: {self.layout}"
            )
        self._targets = {"saliency": TargetSpec("saliency")}

    @staticmethod
    def _subdir(folder: Path, names: set[str]) -> Path | None:
        found = [p for p in sorted(folder.iterdir()) if p.is_dir() and p.name.lower() in names]
        if len(found) > 1:
            raise ProbebenchError(
                f"Ambiguous layout in {folder}: several candidate folders ({', '.join(p.name for p in found)}); keep one."
            )
        return found[0] if found else None


def _saliency_layout(folders: dict[str, tuple[str, ...]], images: str, masks: str) -> str:
    where = " | ".join(f"ROOT/{f[0]}" for f in folders.values())
    return (
        f"{where} (or ROOT = that folder) with {images}/<id>.jpg and {masks}/<id>.png, paired by file stem "
        f"(image folder names accepted: {', '.join(SALIENCY_IMAGE_DIRS)}; masks: {', '.join(SALIENCY_MASK_DIRS)}; "
        "any case)"
    )


def _register_saliency(
    name: str,
    folders: dict[str, tuple[str, ...]],
    images: str,
    masks: str,
    notes: str,
    sizes: dict[str, int],
) -> type:
    """Register a :class:`SaliencySet` subclass for one benchmark (they differ only in folder names)."""
    layout = _saliency_layout(folders, images, masks)
    attrs = {
        "name": name,
        "layout": layout,
        "splits": tuple(folders),
        "folders": folders,
        "nominal_sizes": sizes,
        "__doc__": notes,
    }
    cls = type(f"Saliency_{name.replace('-', '_')}", (SaliencySet,), attrs)
    cls.__module__ = __name__
    return TASKS.register(name, kind="saliency", source=f"on disk: {layout}", notes=notes)(cls)


DUTS = _register_saliency(
    "duts",
    {"train": ("DUTS-TR",), "test": ("DUTS-TE",)},
    "DUTS-{TR,TE}-Image",
    "DUTS-{TR,TE}-Mask",
    "DUTS salient objects: 10553 train (DUTS-TR) / 5019 test (DUTS-TE)",
    {"train": 10553, "test": 5019},
)
ECSSD = _register_saliency(
    "ecssd",
    {"test": ("ECSSD",)},
    "images",
    "ground_truth_mask",
    "ECSSD salient objects, 1000 test images",
    {"test": 1000},
)
DUT_OMRON = _register_saliency(
    "dut-omron",
    {"test": ("DUT-OMRON", "DUT-O", "DUTOMRON")},
    "DUT-OMRON-image",
    "pixelwiseGT-new-PNG",
    "DUT-OMRON salient objects, 5168 test images",
    {"test": 5168},
)
HKU_IS = _register_saliency(
    "hku-is",
    {"test": ("HKU-IS", "HKUIS")},
    "imgs",
    "gt",
    "HKU-IS salient objects, 4447 images (all used as test)",
    {"test": 4447},
)
PASCAL_S = _register_saliency(
    "pascal-s",
    {"test": ("PASCAL-S", "PASCALS", "PASCAL_S")},
    "Imgs",
    "GT",
    "PASCAL-S salient objects, 850 test images (masks thresholded at 128)",
    {"test": 850},
)


# ---------------------------------------------------------------------------------------------- folder

FOLDER_KEYS = ("name", "targets", "source", "description")  # besides each target kind's meta_keys
FOLDER_LAYOUT = (
    "ROOT/dataset.yaml (keys: name, classes, ignore_index, depth_scale, min_depth, max_depth, targets, source, "
    "description) and ROOT/<split>/images/<id>.png|jpg with masks/<id>.png (class ids), saliency/<id>.png (>128 "
    "= foreground), depth/<id>.png (16-bit, depth_scale units per metre, 0 = invalid) for the declared targets "
    "(what tasks.scenes.export_scenes writes)"
)


def folder_keys() -> tuple[str, ...]:
    """The keys a ``folder`` dataset's ``dataset.yaml`` may hold: its name, every registered kind's
    :attr:`~tasks.kinds.TargetKind.meta_keys` (in kind order), then targets, source and description."""
    kind_keys = dict.fromkeys(key for name in kind_names() for key in get_kind(name).meta_keys)
    return (FOLDER_KEYS[0], *kind_keys, *FOLDER_KEYS[1:])


def target_folder(kind: TargetKind) -> str:
    """The ``folder`` dataset's subfolder of ``kind``'s targets: the folder it names, else its name."""
    return kind.folder or kind.name


@TASKS.register(
    "folder",
    kind="as declared in dataset.yaml",
    source=f"on disk: {FOLDER_LAYOUT}",
    notes="any dataset in plain folder form, e.g. a scenes export",
)
class Folder(DiskDataset):
    """A dataset in plain folder form, described by ``ROOT/dataset.yaml``.

    Each target kind is read by its kind object: from its subfolder (``TargetKind.folder``, else the kind's
    name: masks/, saliency/, depth/ for the built-in kinds), files of its ``extensions``, and a
    :class:`~tasks.base.TargetSpec` from its ``dataset.yaml`` keys (``spec_from_meta``), so a kind a plugin
    registers is read here too. Without a ``targets`` key the kinds are those whose folder exists in the split.
    The ``name`` key is a label: identity is the files' content (two folders with one name share nothing else).
    """

    name = "folder"
    version = "1"
    layout = FOLDER_LAYOUT

    def __init__(self, split: str = "train", root: str | Path | None = None, **unknown: Any):
        super().__init__(split, root, unknown)
        meta_path = self.root / "dataset.yaml"
        if not meta_path.is_file():
            raise ProbebenchError(f"folder: {meta_path} does not exist. Expected layout: {self.layout}")
        self.meta = meta = read_meta(meta_path, folder_keys())
        split_dir = self.root / split
        if not (split_dir / "images").is_dir():
            found = sorted(p.name for p in self.root.iterdir() if (p / "images").is_dir())
            raise UnknownNameError(
                "folder split", split, found, extra=f"({split_dir / 'images'} does not exist)"
            )
        names = kind_names()
        kinds = meta.get("targets", [k for k in names if (split_dir / target_folder(get_kind(k))).is_dir()])
        if isinstance(kinds, str):
            kinds = [kinds]
        if not isinstance(kinds, list) or not kinds:
            raise ProbebenchError(
                f"{meta_path}: targets must be a non-empty list of {', '.join(names)}, got {kinds!r}."
            )
        for k in kinds:
            if k not in names:
                raise UnknownNameError("target kind", str(k), names, extra=f"(in {meta_path})")
        self._targets = {k: get_kind(k).spec_from_meta(meta, meta_path) for k in names if k in kinds}
        folders = {
            k: (
                _need_dir(split_dir / target_folder(spec.target_kind), "folder", self.layout),
                spec.target_kind.extensions,
            )
            for k, spec in self._targets.items()
        }
        self._set_items(match_pairs(split_dir / "images", folders), split_dir / "images")
