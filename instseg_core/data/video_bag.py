"""A camera bag from a video file: `instseg-video-bag VIDEO OUT` (or `python -m instseg_core.data.video_bag`), for
the labelling studio, `instseg-label` and `instseg-bag play`. Nothing of ROS is started.

    instseg-video-bag VIDEO OUT [--frames N] [--rate HZ] [--topic /camera/image_raw]
                            [--frame-id camera_optical_frame] [--start auto|video|file|TIME]
                            [--overwrite]

OUT becomes a rosbag2 directory (metadata.yaml and one MCAP file, written as `instseg-bag record` writes: chunk
CRCs, so a damaged frame is refused instead of shown) with one `sensor_msgs/msg/Image` (rgb8) per frame on the
topic. Every frame of the video by default; `--frames N` keeps the first N of the bag. `--rate HZ` (default: the
video's frame rate) takes the video frame nearest to every 1/HZ s, so the bag's clock stays the video's clock; a
rate above the video's is refused (it would repeat frames). Frame k is stamped start + k/HZ (header.stamp and
receive time). The start (`--start`):

- `auto` (default): the video's creation time when the file records one (the `mvhd` box of MP4 and QuickTime
  files: phones and cameras write it, in UTC), else the file's modification time;
- `video`: the creation time, refused when the file has none; `file`: the modification time;
- an ISO 8601 time, e.g. `2024-05-01T12:00:00Z` or `2024-05-01T14:00:00+02:00` (UTC when no zone is given).

The request (video path, size and modification time, frames, rate, topic, frame id, start) is kept in
metadata.yaml's `custom_data` (`instseg.video_bag`), so a later run can tell whether a bag is the one it would
write (`write_or_reuse`, used by `tools/demo.py --video`). The bag is written beside OUT and renamed into place
when complete; an existing OUT is refused unless `--overwrite`, which replaces it only with a complete new bag.
Missing folders above OUT are created (as `mkdir -p` does); they stay when the write fails.

A video that ends while frames are still asked for (all of them, or `--frames N`) is refused when it ends clearly
before the frame count its header declares: the header declares a positive count and decoding stopped more than
2 frames and more than 5 % short of it (`short_of_declared`; the margin because that count is estimated from the
duration in some containers). The line says where it stopped and suggests the `--frames K` that keeps the part
that can be read. A video whose header declares no count, or one that ends within the margin, gives the frames
that could be decoded.

FFmpeg's own messages (OpenCV's FFmpeg backend prints them on stderr: "moov atom not found", decoder errors) are
kept off stderr (OPENCV_FFMPEG_LOGLEVEL=-8 while the command runs, `ffmpeg_quiet`), unless `--debug` or the user
set OPENCV_FFMPEG_LOGLEVEL or OPENCV_FFMPEG_DEBUG.

Exit status 0 when the bag was written; 2 with one line for a video that cannot be read or ends early, a bad
option, an existing OUT or a write that fails, naming OUT (instseg_core.base.command_exit).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import struct
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from instseg_core.base.command_exit import InputError, add_debug_argument, debug_requested, os_error_line, run_command
from instseg_core.data.bags import read_custom_data, write_image_bag

COMMAND = "instseg-video-bag"
DEFAULT_TOPIC = "/camera/image_raw"
DEFAULT_FRAME_ID = "camera_optical_frame"
CUSTOM_DATA_KEY = "instseg.video_bag"
REQUEST_FORMAT = 1
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MP4_EPOCH_OFFSET_S = 2_082_844_800  # seconds from 1904-01-01 (the MP4 epoch) to 1970-01-01
# A video that ends early is refused when it stops more than this many frames, and more than this fraction of its
# declared frames, before the count its header declares (`short_of_declared`).
SHORT_BY_FRAMES = 2
SHORT_BY_FRACTION = 0.05
# OpenCV's FFmpeg backend reads these from the environment (cap_ffmpeg_impl.hpp, InternalFFMpegRegister): the
# log level of FFmpeg (an av_log level, -8 = AV_LOG_QUIET) and its debug switch. The OpenCV of this project
# (opencv-python-headless 5.0) reads them once, when FFmpeg is first used in the process.
FFMPEG_LOGLEVEL_VARIABLE = "OPENCV_FFMPEG_LOGLEVEL"
FFMPEG_DEBUG_VARIABLE = "OPENCV_FFMPEG_DEBUG"
FFMPEG_QUIET = "-8"


@dataclass(frozen=True)
class VideoBag:
    """What was written (or found): the bag, its frames and their size, its rate and start, and where the start
    came from."""

    path: Path
    frames: int
    width: int
    height: int
    rate_hz: float
    start_ns: int
    start_source: str
    video_fps: float


# --- the start time ------------------------------------------------------------------------------------------

def _boxes(stream: Any, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of the ISO base media boxes between byte offsets start and end."""
    offset = start
    while offset + 8 <= end:
        stream.seek(offset)
        header = stream.read(8)
        if len(header) < 8:
            return
        size, kind = struct.unpack(">I4s", header)
        payload = offset + 8
        if size == 1:
            large = stream.read(8)
            if len(large) < 8:
                return
            size, payload = struct.unpack(">Q", large)[0], offset + 16
        elif size == 0:
            size = end - offset
        if size < payload - offset:
            return  # not a box: not an MP4 file, or a damaged one
        yield kind, payload, min(offset + size, end)
        offset += size


def mp4_creation_ns(path: str | Path) -> int | None:
    """The creation time (ns since the epoch) that an MP4 / QuickTime file records in its movie header (`mvhd`);
    None for another format, a file without one (0, as many encoders write) or one that cannot be parsed."""
    try:
        with open(path, "rb") as stream:
            end = stream.seek(0, 2)
            for kind, start, stop in _boxes(stream, 0, end):
                if kind != b"moov":
                    continue
                for inner, payload, _ in _boxes(stream, start, stop):
                    if inner != b"mvhd":
                        continue
                    stream.seek(payload)
                    head = stream.read(12)
                    if len(head) < 12:
                        return None
                    seconds = struct.unpack(">I", head[4:8])[0] if head[0] == 0 else struct.unpack(">Q", head[4:12])[0]
                    return (seconds - MP4_EPOCH_OFFSET_S) * 10**9 if seconds > MP4_EPOCH_OFFSET_S else None
                return None
    except (OSError, struct.error):
        return None
    return None


def _utc(ns: int) -> str:
    return (EPOCH + timedelta(microseconds=ns // 1000)).strftime("%Y-%m-%d %H:%M:%S UTC")


def resolve_start(video: Path, start: str) -> tuple[int, str]:
    """(start ns since the epoch, where it came from) for `--start` (module docstring)."""
    if start in ("auto", "video"):
        created = mp4_creation_ns(video)
        if created is not None:
            return created, "the video's creation time"
        if start == "video":
            raise InputError(f"{video} records no creation time; use --start file or --start 2024-05-01T12:00:00Z")
    if start in ("auto", "file"):
        return video.stat().st_mtime_ns, "the video file's modification time"
    try:
        moment = datetime.fromisoformat(start)
    except ValueError:
        raise InputError(f"--start {start!r}: expected auto, video, file or an ISO 8601 time such as "
                         "2024-05-01T12:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // timedelta(microseconds=1) * 1000, "--start"


# --- the frames ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def ffmpeg_quiet(enabled: bool = True) -> Iterator[None]:
    """The command's run: OPENCV_FFMPEG_LOGLEVEL is set to quiet within the block and restored after it, so that
    FFmpeg's own lines ("moov atom not found", "File ended prematurely", decoder errors), which OpenCV's FFmpeg
    backend otherwise prints on stderr, do not come before the command's one line. Nothing is changed when not
    `enabled` (`--debug`) or when the user set OPENCV_FFMPEG_LOGLEVEL or OPENCV_FFMPEG_DEBUG.

    OpenCV reads the variable when FFmpeg is first used in the process: the `instseg-video-bag` process is quiet
    throughout; where FFmpeg was used before in the same process (a caller of `main`), the block changes
    nothing; and where the block is that first use, FFmpeg stays quiet in that process after it (OpenCV offers
    no means to set the level back)."""
    if not enabled or FFMPEG_LOGLEVEL_VARIABLE in os.environ or FFMPEG_DEBUG_VARIABLE in os.environ:
        yield
        return
    os.environ[FFMPEG_LOGLEVEL_VARIABLE] = FFMPEG_QUIET
    try:
        yield
    finally:
        os.environ.pop(FFMPEG_LOGLEVEL_VARIABLE, None)


def _require_video(video: Path) -> None:
    """InputError when `video` is missing or not a file."""
    if not video.is_file():
        raise InputError(f"video {video} does not exist" if not video.exists() else f"{video} is not a file")


def _open(video: Path) -> tuple[Any, float, int]:
    """(capture, frames per second or 0.0, frame count the header declares or 0)."""
    _require_video(video)
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise InputError(f"cannot read the video {video}: OpenCV opens no video stream in it")
    fps = capture.get(cv2.CAP_PROP_FPS)
    declared = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    return (capture, float(fps) if fps and np.isfinite(fps) and fps > 0 else 0.0,
            int(declared) if declared and np.isfinite(declared) and declared > 0 else 0)


def short_of_declared(decoded: int, declared: int) -> bool:
    """Whether a video that could be decoded up to `decoded` frames stopped clearly short of the `declared` frame
    count of its header: the header declares a positive count, and decoding stopped more than SHORT_BY_FRAMES
    frames and more than SHORT_BY_FRACTION of it before that count. The margin is there because that count is
    not always exact: OpenCV takes the stream's frame count where the container records one (MP4, MOV, AVI) and
    otherwise estimates it from the duration and the frame rate (Matroska, WebM, MPEG-TS), where an audio track
    that lasts longer or a variable frame rate moves it; 0 means it knows none."""
    return declared > 0 and declared - decoded > max(SHORT_BY_FRAMES, SHORT_BY_FRACTION * declared)


def _frames(capture: Any, step: float, limit: int | None, shape: list[tuple[int, ...]],
            video: Path, declared: int = 0) -> Iterator[np.ndarray]:
    """RGB frames: bag frame k is video frame round(k * step), until the video ends or `limit` frames.
    InputError when the video ends while frames are still asked for, clearly short of the `declared` frame count
    (`short_of_declared`): a truncated or damaged file."""
    position = -1  # the video frame last decoded
    count = 0

    def ended() -> None:
        decoded = position + 1
        if not short_of_declared(decoded, declared):
            return
        if not count:
            raise InputError(f"no frame could be decoded from {video}, while its header declares {declared} (a "
                             "truncated or damaged file); nothing was written")
        raise InputError(f"{video} cannot be decoded after {decoded} of the {declared} frames its header declares "
                         f"(a truncated or damaged file); nothing was written; --frames {count} writes the {count} "
                         f"frame{'s' if count > 1 else ''} before that")

    try:
        while limit is None or count < limit:
            wanted = round(count * step)
            while position < wanted - 1:
                if not capture.grab():
                    ended()
                    return
                position += 1
            ok, bgr = capture.read()
            if not ok:
                ended()
                return
            position += 1
            if not shape:
                shape.append(bgr.shape)
            elif bgr.shape != shape[0]:
                raise InputError(f"{video}: frame {position} is {bgr.shape[1]}x{bgr.shape[0]}, the first was "
                                 f"{shape[0][1]}x{shape[0][0]}; a bag holds frames of one size")
            count += 1
            if count % 100 == 0:
                print(f"{COMMAND}: {count} frames ...", file=sys.stderr, flush=True)
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()


def video_request(video: str | Path, *, frames: int | None = None, rate_hz: float | None = None,
                  topic: str = DEFAULT_TOPIC, frame_id: str = DEFAULT_FRAME_ID, start: str = "auto") -> dict:
    """What a bag of `video` is asked to be: kept in its metadata and compared by `write_or_reuse`."""
    video = Path(video).resolve()
    stat = video.stat()
    return {"format": REQUEST_FORMAT, "video": str(video), "video_bytes": stat.st_size,
            "video_mtime_ns": stat.st_mtime_ns, "frames": frames, "rate_hz": rate_hz, "topic": topic,
            "frame_id": frame_id, "start": start}


def write_video_bag(video: str | Path, out: str | Path, *, frames: int | None = None, rate_hz: float | None = None,
                    topic: str = DEFAULT_TOPIC, frame_id: str = DEFAULT_FRAME_ID, start: str = "auto",
                    overwrite: bool = False) -> VideoBag:
    """Write the bag OUT of `video` (module docstring); InputError naming the problem for a video that cannot be
    read (or ends clearly before the frames its header declares), a bad argument, an existing `out` without
    `overwrite`, or a write that fails (naming `out`)."""
    video, out = Path(video), Path(out)
    if frames is not None and frames < 1:
        raise InputError(f"--frames must be at least 1, got {frames}")
    if rate_hz is not None and not (np.isfinite(rate_hz) and rate_hz > 0):
        raise InputError(f"--rate must be a positive number of frames per second, got {rate_hz}")
    if not topic.startswith("/"):
        raise InputError(f"--topic must start with '/', got {topic!r}")
    capture, fps, declared = _open(video)
    try:
        if fps == 0.0 and rate_hz is None:
            raise InputError(f"{video} records no frame rate; give one with --rate")
        if rate_hz is not None and fps and rate_hz > fps * (1 + 1e-6):
            raise InputError(f"--rate {rate_hz:g} is above the video's {fps:g} frames per second: frames would "
                             "repeat; give at most that")
        rate = rate_hz if rate_hz is not None else fps
        step = fps / rate if fps else 1.0
        start_ns, start_source = resolve_start(video, start)
        request = video_request(video, frames=frames, rate_hz=rate_hz, topic=topic, frame_id=frame_id, start=start)
        if out.exists() and not overwrite:
            raise InputError(f"{out} exists; pass --overwrite to replace it, or choose another OUT")
        _check_out_folder(out)
    except BaseException:
        capture.release()
        raise
    shape: list[tuple[int, ...]] = []
    try:
        summary = write_image_bag(out, _frames(capture, step, frames, shape, video, declared), rate_hz=rate,
                                  topic=topic, frame_id=frame_id, start_ns=start_ns, overwrite=overwrite,
                                  custom_data={CUSTOM_DATA_KEY: json.dumps(request, sort_keys=True)})
    except ValueError as exc:
        if shape:
            raise
        raise InputError(f"no frame could be decoded from {video}") from exc
    except FileExistsError as exc:
        if out.exists() and not overwrite:  # created meanwhile by someone else
            raise InputError(f"{out} exists; pass --overwrite to replace it, or choose another OUT") from exc
        raise InputError(f"cannot write {out}: {os_error_line(exc)}") from exc
    except OSError as exc:  # the error names the hidden staging folder beside OUT: name OUT first
        raise InputError(f"cannot write {out}: {os_error_line(exc)}") from exc
    return VideoBag(summary.path, summary.counts[topic], shape[0][1], shape[0][0], rate, start_ns, start_source, fps)


def _check_out_folder(out: Path) -> None:
    """InputError when the nearest existing folder above `out` is not a folder (a regular file: `mkdir -p` would
    fail on it); missing folders below it are created by the write."""
    for folder in out.parents:
        if folder.is_dir():
            return
        if folder.exists() or folder.is_symlink():
            what = "a file" if folder.is_file() else "a broken link" if not folder.exists() else "a special file"
            raise InputError(f"cannot write {out}: {folder} is {what}, not a folder")


def mismatch(out: str | Path, request: dict) -> str | None:
    """Why the bag at `out` is not the bag `request` asks for (a line), or None when it is."""
    out = Path(out)
    if not (out / "metadata.yaml").is_file():
        return f"{out} holds no bag (no metadata.yaml)"
    try:
        recorded = json.loads(read_custom_data(out).get(CUSTOM_DATA_KEY, "null"))
    except (OSError, ValueError) as exc:
        return f"its metadata.yaml cannot be read ({exc})"
    if not isinstance(recorded, dict):
        return "it records no request it was written for (an older or another writer's bag)"
    if not any(out.glob("*.mcap")):
        return f"{out} holds no .mcap file"
    for key, asked in request.items():
        if recorded.get(key) != asked:
            return (f"it was written with {key} = {_shown(key, recorded.get(key))}, and {key} = {_shown(key, asked)} "
                    "is asked now")
    return None


def _shown(key: str, value: object) -> str:
    if value is None and key in ("frames", "rate_hz"):
        return "all" if key == "frames" else "the video's"
    return str(value)


def write_or_reuse(video: str | Path, out: str | Path, *, frames: int | None = None, rate_hz: float | None = None,
                   topic: str = DEFAULT_TOPIC, frame_id: str = DEFAULT_FRAME_ID,
                   start: str = "auto") -> tuple[Path, str]:
    """The bag `out` of `video` as asked: reused when it was written for exactly this request (the same video file,
    unchanged, and the same options), else written (replacing an old one only once the new one is complete).
    Returns (out, a line saying which and why)."""
    video, out = Path(video), Path(out)
    _require_video(video)
    request = video_request(video, frames=frames, rate_hz=rate_hz, topic=topic, frame_id=frame_id, start=start)
    reason = mismatch(out, request) if out.exists() else None
    if out.exists() and reason is None:
        return out, f"reusing {out}: written from {video} with the same options"
    written = write_video_bag(video, out, frames=frames, rate_hz=rate_hz, topic=topic, frame_id=frame_id,
                              start=start, overwrite=True)
    why = f" (rewritten: {reason})" if reason else ""
    return out, describe(written, video) + why


def describe(bag: VideoBag, video: Path) -> str:
    """One line saying what was written."""
    size = sum(f.stat().st_size for f in bag.path.iterdir() if f.is_file())
    sampled = "every frame" if bag.video_fps and abs(bag.rate_hz - bag.video_fps) < 1e-6 * bag.video_fps else \
        f"the frame nearest to every 1/{bag.rate_hz:g} s of its {bag.video_fps:g} frames/s" if bag.video_fps else \
        "every frame"
    return (f"wrote {bag.frames} frames of {video} ({bag.width}x{bag.height}, {sampled}) into {bag.path}: "
            f"sensor_msgs/Image rgb8 at {bag.rate_hz:g} Hz, MCAP with chunk CRCs, {size / 1e6:.1f} MB; "
            f"frame 0 at {_utc(bag.start_ns)} ({bag.start_source})")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="instseg-video-bag",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("video", type=Path, help="a video file OpenCV reads (MP4, MOV, AVI, MKV, ...)")
    parser.add_argument("out", type=Path, help="the bag directory to write")
    parser.add_argument("--frames", type=int, default=None, help="write at most N frames (default: all)")
    parser.add_argument("--rate", type=float, default=None, metavar="HZ",
                        help="frames per second in the bag (default: the video's); lower takes the nearest frames")
    parser.add_argument("--topic", default=DEFAULT_TOPIC, help=f"image topic (default {DEFAULT_TOPIC})")
    parser.add_argument("--frame-id", default=DEFAULT_FRAME_ID, help=f"header.frame_id (default {DEFAULT_FRAME_ID})")
    parser.add_argument("--start", default="auto",
                        help="time of frame 0: auto (the video's creation time, else the file's modification "
                             "time), video, file, or an ISO 8601 time such as 2024-05-01T12:00:00Z (default auto)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    add_debug_argument(parser)
    args = parser.parse_args(argv)

    def run() -> None:
        bag = write_video_bag(args.video, args.out, frames=args.frames, rate_hz=args.rate, topic=args.topic,
                              frame_id=args.frame_id, start=args.start, overwrite=args.overwrite)
        print(describe(bag, args.video), flush=True)

    with ffmpeg_quiet(not debug_requested(args)):
        run_command(COMMAND, run, debug=debug_requested(args))


if __name__ == "__main__":
    main()
