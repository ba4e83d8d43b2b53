"""Training windows streamed from disk: a split of any Cityscapes-format tree (a studio export included) whose
images are decoded when a window needs them, never all at once.

- `split_index`: the small per-image object index the crop sampler needs (image size, each object's centroid and
  class index; ~100 bytes per object). It is cached next to the data in `<root>/.instseg_index/` as JSON,
  written atomically, and reused per image while the image's and instanceIds file's size and modification time
  are unchanged (a changed file is indexed again, a removed one dropped, a new one added). A tree that cannot be
  written gets its index in `fallback_dir` (the run folder) instead. Bad samples (a PNG that does not decode, an
  instanceIds image of another size than its image) stop indexing with a SampleError naming the file, or with
  `skip_bad` are listed (`skipped`) and left out; they are remembered in the index until their files change.
- `StreamedSamples`: the split as a `Sequence[InstanceSample]` that decodes image i (and builds its targets,
  instseg_core.data.instance_training.instance_sample) when indexed, so `CropSampler` draws exactly the windows
  it draws from the in-memory split (load_split) for the same generator, and memory does not grow with the
  number of images.
- `WindowDataset`: a `torch.utils.data.Dataset` whose keys are (epoch, step, position in the global batch); each
  window is drawn with its own generator seeded from (seed, epoch, step, position), so a run's windows do not
  depend on the number of processes (DDP ranks) or DataLoader workers that draw them (the windows of rank r are
  positions [r B / N, (r + 1) B / N) of the global batch B; `GlobalBatchSampler`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch.utils.data

from instseg_core.base.atomic_files import write_text_atomically
from instseg_core.data.cityscapes import CityscapesDataset, CityscapesSample, SampleError
from instseg_core.data.instance_training import CropSampler, InstanceSample, instance_sample, object_classes

INDEX_VERSION = 1
INDEX_DIR = ".instseg_index"


def _stat(path: Path) -> list[int]:
    status = path.stat()
    return [status.st_size, status.st_mtime_ns]


@dataclass
class SplitIndex:
    """One split's object index: per usable image its Cityscapes sample (paths), size (H, W) after scaling,
    centroids (K, 2) float32 (x, y pixels) and class indices (K,) int64; `skipped` lists bad samples ({"sample",
    "reason"}); `path` is the cache file; `reused` counts images whose entries came from the cache."""

    samples: list[CityscapesSample]
    sizes: list[tuple[int, int]]
    centers: list[np.ndarray]
    classes: list[np.ndarray]
    skipped: list[dict]
    path: Path | None
    reused: int

    def summary(self) -> dict:
        """Images, objects per class index and the index file: for run.json."""
        counts = np.bincount(np.concatenate([c for c in self.classes] or [np.zeros(0, np.int64)]))
        return {"images": len(self.samples), "objects": int(sum(len(c) for c in self.classes)),
                "objects_per_class_index": counts.tolist(), "skipped": len(self.skipped),
                "index_file": str(self.path) if self.path else None, "index_entries_reused": self.reused}


def index_file(root: Path, split: str, classes: Sequence[str], scale: float) -> Path:
    """<root>/.instseg_index/<split>-<hash of classes and scale>.json."""
    key = hashlib.sha1(json.dumps([INDEX_VERSION, list(classes), scale]).encode()).hexdigest()[:12]
    return root / INDEX_DIR / f"{split}-{key}.json"


def _uncached(sample: CityscapesSample) -> CityscapesSample:
    """A copy of `sample` without its decoded arrays (CityscapesSample caches them: the index keeps the samples)."""
    return CityscapesSample(sample.root, sample.split, sample.city, sample.stem, sample.paths)


def _entry(sample: CityscapesSample, classes: Sequence[str], scale: float) -> dict:
    """Decode one sample and describe it; SampleError naming the file when it is bad."""
    target = instance_sample(_uncached(sample), classes, scale)
    height, width = target.instances.shape
    return {"size": [height, width], "centers": np.round(target.centers, 3).tolist(),
            "classes": object_classes(target).tolist()}


def split_index(root: str | os.PathLike | None, split: str, classes: Sequence[str], *, scale: float = 1.0,
                limit: int | None = None, skip_bad: bool = False, fallback_dir: str | os.PathLike | None = None,
                log: Callable[[str], None] | None = None) -> SplitIndex:
    """The object index of `split` (module docstring), from the cache where its files are unchanged; the first
    `limit` annotated images. SampleError naming the file for a bad sample unless `skip_bad`; FileNotFoundError
    when no usable image is left."""
    dataset = CityscapesDataset(root, split)
    if dataset.unannotated:
        print(f"warning: {len(dataset.unannotated)} image(s) of split {split!r} in {dataset.root} have no gtFine "
              f"instanceIds file and are left out (the first: {dataset.unannotated[0]})", file=sys.stderr, flush=True)
    samples = list(dataset)[:limit]
    path = index_file(dataset.root, split, classes, scale)
    cached: dict = {}
    for candidate in (path, Path(fallback_dir) / path.name if fallback_dir else None):
        if candidate is not None and candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
                if data.get("version") == INDEX_VERSION:
                    cached = data["images"]
                    break
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache is rebuilt
    entries: dict[str, dict] = {}
    reused = 0
    result = SplitIndex([], [], [], [], [], None, 0)
    for sample in samples:
        name = f"{sample.city}/{sample.stem}"
        stats = {"image": _stat(sample.paths["image"]), "instance_ids": _stat(sample.paths["instance_ids"])}
        entry = cached.get(name)
        if entry is not None and entry.get("stats") == stats:
            reused += 1
        else:
            try:
                entry = {"stats": stats, **_entry(sample, classes, scale)}
            except SampleError as exc:
                entry = {"stats": stats, "bad": str(exc)}
        entries[name] = entry
        if "bad" in entry:
            if not skip_bad:
                raise SampleError(f"{entry['bad']} (--skip-bad leaves such samples out)")
            result.skipped.append({"sample": name, "reason": entry["bad"]})
            print(f"skipped a bad sample: {entry['bad']}", file=sys.stderr, flush=True)
            continue
        result.samples.append(sample)
        result.sizes.append((int(entry["size"][0]), int(entry["size"][1])))
        result.centers.append(np.asarray(entry["centers"], np.float32).reshape(-1, 2))
        result.classes.append(np.asarray(entry["classes"], np.int64))
    result.reused = reused
    # a full pass drops the entries of files that are gone; a --limit pass keeps the others
    if reused < len(samples) or (limit is None and set(cached) != set(entries)):
        text = json.dumps({"version": INDEX_VERSION, "classes": list(classes), "scale": scale,
                           "images": entries if limit is None else {**cached, **entries}})
        for candidate in (path, Path(fallback_dir) / path.name if fallback_dir else None):
            if candidate is None:
                continue
            try:
                candidate.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomically(candidate, text)
                result.path = candidate
                break
            except OSError as exc:
                print(f"warning: cannot write the object index {candidate}: {exc}", file=sys.stderr, flush=True)
    else:
        result.path = path if path.is_file() else Path(fallback_dir) / path.name if fallback_dir else None
    if log is not None:
        log(f"object index {result.path}: {len(result.samples)} images, {reused} of {len(samples)} entries reused")
    if not result.samples:
        bad = result.skipped
        raise FileNotFoundError(f"no {'usable ' if bad else ''}annotated images in split {split!r} of {dataset.root}"
                                + (f" ({len(bad)} bad ones skipped)" if bad else ""))
    return result


class StreamedSamples(Sequence[InstanceSample]):
    """The images of a SplitIndex as InstanceSamples decoded on access (nothing is kept)."""

    def __init__(self, index: SplitIndex, classes: Sequence[str], scale: float = 1.0) -> None:
        self.split_index = index
        self.classes = tuple(classes)
        self.scale = scale

    def __len__(self) -> int:
        return len(self.split_index.samples)

    def __getitem__(self, i: int) -> InstanceSample:  # type: ignore[override]
        stored = self.split_index.samples[int(i)]
        target = instance_sample(_uncached(stored), self.classes, self.scale, centers=self.split_index.centers[int(i)])
        if target.instances.shape != self.split_index.sizes[int(i)]:
            raise SampleError(f"{stored.paths['image']} changed while training: it is now "
                              f"{target.instances.shape[1]}x{target.instances.shape[0]}, indexed as "
                              f"{self.split_index.sizes[int(i)][1]}x{self.split_index.sizes[int(i)][0]}")
        return target

    def __iter__(self) -> Iterator[InstanceSample]:
        return (self[i] for i in range(len(self)))


def streamed_sampler(index: SplitIndex, classes: Sequence[str], mode: str = "objects",
                     anywhere_fraction: float = 0.0, scale: float = 1.0) -> CropSampler:
    """A CropSampler over the split on disk: the same windows as over the split in memory for a generator."""
    return CropSampler(StreamedSamples(index, classes, scale), mode, anywhere_fraction, classes_per_image=index.classes)


Window = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
WindowKey = tuple[int, int, int]


def window_rng(seed: int, key: WindowKey) -> np.random.Generator:
    """The generator of window (epoch, step, position in the global batch) of a run with `seed`."""
    return np.random.default_rng([seed, *key])


@dataclass
class BadWindow:
    """In place of a window whose image turned out bad while drawing (SampleError `reason`, naming the file):
    what a DataLoader worker hands back instead of raising (a worker's exception reaches the training process as
    its whole traceback in one message)."""

    reason: str


@dataclass
class RedrawnWindow:
    """A window drawn again after bad images (`skipped`: their reasons), with skip_bad."""

    window: Window
    skipped: list[str]


REDRAWS = 20  # with skip_bad, draws of one window before its bad images stop the run


class WindowDataset(torch.utils.data.Dataset):
    """Windows keyed by (epoch, step, position): `draw(sampler, height, width, rng)` with the window's own
    generator (window_rng). `draw` must be picklable where DataLoader workers are spawned (a module-level function
    or a functools.partial of one). An image that turns out bad while drawing (changed or damaged since it was
    indexed) gives a BadWindow naming it, or with `skip_bad` the window is drawn again (RedrawnWindow); see
    `draw_window` and `unpack_windows`."""

    def __init__(self, sampler: CropSampler, crop: tuple[int, int], seed: int,
                 draw: Callable[[CropSampler, int, int, np.random.Generator], Window] | None = None,
                 skip_bad: bool = False) -> None:
        self.sampler = sampler
        self.crop = crop
        self.seed = seed
        self.draw = draw
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.sampler.samples)

    def __getitem__(self, key: WindowKey) -> Window | BadWindow | RedrawnWindow:
        return self.draw_window(window_rng(self.seed, key))

    def draw_window(self, rng: np.random.Generator) -> Window | BadWindow | RedrawnWindow:
        """One window from `rng`: the window, a BadWindow, or with skip_bad a RedrawnWindow (REDRAWS tries)."""
        skipped: list[str] = []
        for _ in range(REDRAWS if self.skip_bad else 1):
            try:
                window = self.sampler.crop(*self.crop, rng) if self.draw is None else \
                    self.draw(self.sampler, *self.crop, rng)
            except SampleError as exc:
                skipped.append(str(exc))
                continue
            return RedrawnWindow(window, skipped) if skipped else window
        return BadWindow(skipped[-1] + (" (--skip-bad: every redraw hit a bad image)" if self.skip_bad else
                                        " (--skip-bad leaves such samples out)"))


def unpack_windows(items: Sequence[Window | BadWindow | RedrawnWindow]) -> tuple[list[Window], list[str]]:
    """The windows of a batch drawn by WindowDataset and the reasons of the bad images skipped on the way;
    SampleError (one line, naming the file) for a BadWindow."""
    windows, skipped = [], []
    for item in items:
        if isinstance(item, BadWindow):
            raise SampleError(item.reason)
        if isinstance(item, RedrawnWindow):
            skipped += item.skipped
            item = item.window
        windows.append(item)
    return windows, skipped


def collate_checked(collate: Callable[[list[Window]], object], items: list) -> tuple[object | None, list, str | None]:
    """A DataLoader collate over WindowDataset items that never raises for a bad image: (collate(windows), skipped
    reasons, None), or (None, [], the BadWindow's reason)."""
    try:
        windows, skipped = unpack_windows(items)
    except SampleError as exc:
        return None, [], str(exc)
    return collate(windows), skipped, None


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Per step, this rank's keys of the global batch: positions [rank B / N, (rank + 1) B / N) of `batch` (B,
    divisible by the world size N). `set_epoch` before each epoch; `start_step` skips steps already done."""

    def __init__(self, batch: int, steps: int, rank: int = 0, world_size: int = 1) -> None:
        if batch % world_size:
            raise ValueError(f"global batch {batch} is not divisible by the world size {world_size}")
        self.batch, self.steps, self.rank, self.world_size = batch, steps, rank, world_size
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[WindowKey]]:
        local = self.batch // self.world_size
        for step in range(self.steps):
            yield [(self.epoch, step, self.rank * local + j) for j in range(local)]
