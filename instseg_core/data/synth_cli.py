"""`instseg-synth`: write a synthetic street-scene data set in the Cityscapes layout, or a camera sequence.

    instseg-synth OUT --splits train=200,val=50 [--seed 0] [--width 1024 --height 512] [--jobs 2]
    instseg-synth OUT --sequence 150 --split val [--fps 15] [--ego-speed 6] [--bag OUT/cam.mcap]
                      [--bag-storage mcap|sqlite3] [--encoding rgb8|bgr8] [--compressed] [--sequence-gt]

Images of split s, index i come from SeedSequence([seed, s, i]); sequence k of a split from
SeedSequence([seed, s, 10**6 + k]), so splits never share a scene and the output does not depend on
--jobs. Still images are named {city}_{i:06d}_000019 (Cityscapes annotates the 20th frame of a
snippet); sequence frames {city}_{k:06d}_{frame:06d} under leftImg8bit_sequence/ (annotations, with
--sequence-gt, under gtFine_sequence/). Exit status 0 when everything was written; 2 with one line for a file that
cannot be written (errno, file); 1 with one line for an internal error, its traceback in a log file (or on stderr
with --debug; instseg_core.base.command_exit).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from instseg_core.base.command_exit import add_debug_argument, debug_requested, run_command
from instseg_core.data.bags import STORAGES, write_image_bag
from instseg_core.data.cityscapes import SPLITS, write_sample
from instseg_core.data.synthetic import Frame, make_scene, render

CITIES = {"train": ("synthburg", "renderstadt", "pixelheim"), "val": ("valdorf",), "test": ("testhausen",)}
SEQUENCE_OFFSET = 10**6


def image_seed(seed: int, split: str, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, SPLITS.index(split), index])


def sample_name(split: str, index: int) -> tuple[str, str]:
    """(city, stem) of still image `index` of a split."""
    cities = CITIES[split]
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_000019"


def _write_image(job: tuple[str, str, int, int, int, int]) -> str:
    out, split, seed, index, width, height = job
    city, stem = sample_name(split, index)
    frame = render(make_scene(image_seed(seed, split, index), width, height))
    write_sample(out, split, city, stem, frame.rgb, frame.objects)
    return stem


def generate_images(out: Path, split: str, count: int, *, seed: int = 0, width: int = 1024, height: int = 512,
                    jobs: int = 1, progress: bool = True) -> float:
    """Write `count` annotated images of `split` under `out`; returns images per second."""
    work = [(str(out), split, seed, index, width, height) for index in range(count)]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=jobs) if jobs > 1 else _Inline() as pool:
        for done, _ in enumerate(pool.map(_write_image, work, chunksize=max(1, count // (8 * jobs) or 1)), 1):
            if progress and (done % 10 == 0 or done == count):
                rate = done / (time.perf_counter() - start)
                print(f"[{split}] {done}/{count} images, {rate:.2f} images/s", file=sys.stderr, flush=True)
    return count / max(time.perf_counter() - start, 1e-9)


class _Inline:
    """Stands in for a process pool when --jobs is 1 (keeps tracebacks simple)."""

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, fn, items, chunksize: int = 1) -> Iterator:
        return map(fn, items)


def sequence_frames(seed: int, split: str, index: int, frames: int, *, width: int, height: int, fps: float,
                    ego_speed: float) -> Iterator[tuple[int, Frame]]:
    """Yield (frame number, Frame) of a temporally coherent sequence (objects and camera moving)."""
    scene = make_scene(image_seed(seed, split, SEQUENCE_OFFSET + index), width, height, ego_speed=ego_speed)
    for number in range(frames):
        yield number, render(scene, number / fps, number)


def generate_sequence(out: Path, split: str, frames: int, *, seed: int = 0, index: int = 0, width: int = 1024,
                      height: int = 512, fps: float = 15.0, ego_speed: float = 6.0, write_gt: bool = False,
                      bag: Path | None = None, bag_storage: str = "mcap", encoding: str = "rgb8",
                      compressed: bool = False, progress: bool = True) -> dict:
    """Write a sequence's frames (and optionally per-frame annotations and a camera bag)."""
    city = CITIES[split][0]
    rgb_frames: list[np.ndarray] = []
    for number, frame in sequence_frames(seed, split, index, frames, width=width, height=height, fps=fps,
                                         ego_speed=ego_speed):
        stem = f"{city}_{index:06d}_{number:06d}"
        if write_gt:
            write_sample(out, split, city, stem, frame.rgb, frame.objects, image_dir="leftImg8bit_sequence",
                         gt_dir="gtFine_sequence")
        else:
            from instseg_core.data.cityscapes import write_image

            write_image(out, split, city, stem, frame.rgb, "leftImg8bit_sequence")
        rgb_frames.append(frame.rgb)
        if progress and ((number + 1) % 10 == 0 or number + 1 == frames):
            print(f"[sequence] {number + 1}/{frames} frames", file=sys.stderr, flush=True)
    summary = {"frames": frames, "city": city}
    if bag is not None:
        written = write_image_bag(bag, rgb_frames, rate_hz=fps, encoding=encoding, storage=bag_storage,
                                  compressed_topic="/camera/image_raw/compressed" if compressed else None,
                                  overwrite=True)
        summary["bag"] = {"path": str(written.path), "storage": written.storage, "counts": written.counts}
    return summary


def _parse_splits(text: str) -> dict[str, int]:
    result = {}
    for part in filter(None, text.split(",")):
        name, _, count = part.partition("=")
        if name not in SPLITS or not count.isdigit():
            raise argparse.ArgumentTypeError(f"bad split spec {part!r}: use e.g. train=200,val=50")
        result[name] = int(count)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="instseg-synth", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("out", type=Path, help="output root (gets leftImg8bit/, gtFine/, ...)")
    parser.add_argument("--splits", type=_parse_splits, default={"train": 20, "val": 5})
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--sequence", type=int, default=0, metavar="FRAMES", help="render a sequence instead")
    parser.add_argument("--sequence-index", type=int, default=0)
    parser.add_argument("--split", choices=SPLITS, default="val", help="split of the sequence")
    parser.add_argument("--fps", type=float, default=15.0)
    parser.add_argument("--ego-speed", type=float, default=6.0, help="camera speed in m/s")
    parser.add_argument("--sequence-gt", action="store_true", help="also write annotations for every frame")
    parser.add_argument("--bag", type=Path, help="also write the sequence as a rosbag2 at this path")
    parser.add_argument("--bag-storage", choices=sorted(STORAGES), default="mcap")
    parser.add_argument("--encoding", choices=["rgb8", "bgr8"], default="rgb8")
    parser.add_argument("--compressed", action="store_true", help="add a JPEG CompressedImage topic")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    if args.width < 64 or args.height < 32:
        parser.error("--width/--height too small (at least 64x32)")
    run_command("instseg-synth", lambda: _generate(args), debug=debug_requested(args))


def _generate(args: argparse.Namespace) -> None:
    if args.sequence:
        summary = generate_sequence(args.out, args.split, args.sequence, seed=args.seed, index=args.sequence_index,
                                    width=args.width, height=args.height, fps=args.fps, ego_speed=args.ego_speed,
                                    write_gt=args.sequence_gt, bag=args.bag, bag_storage=args.bag_storage,
                                    encoding=args.encoding, compressed=args.compressed)
        print(summary)
        return
    for split, count in args.splits.items():
        rate = generate_images(args.out, split, count, seed=args.seed, width=args.width, height=args.height,
                               jobs=args.jobs)
        print(f"{split}: {count} images in {args.out} ({rate:.2f} images/s)")


if __name__ == "__main__":
    main()
