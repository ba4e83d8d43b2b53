"""`make demo`: the main job on CPU. A synthetic camera bag is played in real time into segmentation_node
(the shipped Spatial Embeddings model, ONNX Runtime on CPU); its outputs are recorded to a bag, and an
overlay contact sheet (PNG), a short MP4 and a table (fps, latency p50/p95, drops) are written.

    .venv/bin/python tools/demo.py [--out data/demo] [--frames 60] [--rate 1.0] [--input 1024x512]
                                   [--video FILE.mp4]

The camera bag (data/demo/camera, 1024x512 at 10 Hz, MCAP) is generated on the first run, and again when
--frames asks for another number of frames than it holds. The node keeps only the newest frame, so on 2 CPU
cores it segments a few frames per second and drops the rest, as it would on a vehicle. The script isolates
itself in a loopback-only network namespace before rclpy starts. `--rate` is a speed factor: 1.0 plays the
bag at its own pace (10 Hz for the synthetic bag, the video's frame rate with --video), 2.0 twice as fast.

`--video FILE` plays a video instead (any file OpenCV reads, e.g. a dashcam clip): its first `--frames` frames are
written into a camera bag (data/demo/video_<name>, at the video's frame rate, frame 0 at the video's creation
time, by `instseg-video-bag`; see docs/data.md, "A bag from a video") and played the same
way. A later run reuses that bag only when it was written from the same, unchanged video with the same
--frames; otherwise it says why and writes it again (the old bag is replaced only by a complete new one). To
make a bag from a video without running the node (e.g. for the labelling studio), use that command directly.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from benchlib import print_table, summarize  # noqa: E402

from instseg_ros import isolation  # noqa: E402

CAMERA_TOPIC = "/camera/image_raw"


def bag_frames_and_rate(bag: Path) -> tuple[int, float]:
    """(messages on /camera/image_raw, their rate in Hz) of a camera bag, from its metadata (rosbags' reader);
    (0, 0.0) when there is no bag or it cannot be read."""
    from rosbags.rosbag2 import Reader

    if not (bag / "metadata.yaml").is_file():
        return 0, 0.0
    try:
        with Reader(bag) as reader:
            count = sum(c.msgcount for c in reader.connections if c.topic == CAMERA_TOPIC)
            duration = reader.duration
    except Exception:  # any unreadable bag (rosbags raises its own errors): generated again by the caller
        return 0, 0.0
    return count, (count - 1) * 1e9 / duration if count > 1 and duration > 0 else 0.0


def ensure_camera_bag(out: Path, frames: int) -> Path:
    """The synthetic camera bag out/camera of `frames` frames: generated when missing or when it holds another
    number of frames (saying so)."""
    bag = out / "camera"
    held, _ = bag_frames_and_rate(bag)
    if held == frames:
        return bag
    if (bag / "metadata.yaml").is_file():
        print(f"the camera bag {bag} holds {held} frames and {frames} are asked: generating it again", flush=True)
    from instseg_core.data.synth_cli import main as synth

    print(f"generating the synthetic camera bag ({frames} frames, ~{frames * 0.8:.0f} s) ...", flush=True)
    synth([str(out / "sequence"), "--sequence", str(frames), "--split", "val", "--width", "1024", "--height",
           "512", "--fps", "10", "--seed", "2026", "--bag", str(bag)])
    return bag


def video_camera_bag(video: Path, out: Path, frames: int) -> Path:
    """The camera bag out/video_<name> (sensor_msgs/Image rgb8 on /camera/image_raw, the video's frame rate) of the
    first `frames` frames of `video`: reused when it was written for this video and `frames`, else (re)written.
    SystemExit naming the file when the video cannot be read."""
    from instseg_core.base.command_exit import InputError
    from instseg_core.data.video_bag import write_or_reuse

    try:
        bag, line = write_or_reuse(video, out / f"video_{video.stem}", frames=frames, topic=CAMERA_TOPIC)
    except InputError as exc:
        raise SystemExit(f"demo: {exc}") from exc
    print(line, flush=True)
    return bag


def contact_sheet(frames: list[np.ndarray], columns: int = 4, rows: int = 3, width: int = 512) -> np.ndarray:
    """A grid of up to columns x rows frames, evenly picked, each resized to `width`."""
    picked = [frames[int(i)] for i in np.linspace(0, len(frames) - 1, min(len(frames), columns * rows))]
    height = round(width * picked[0].shape[0] / picked[0].shape[1])
    tiles = [cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in picked]
    tiles += [np.zeros_like(tiles[0])] * (columns * rows - len(tiles))
    return np.vstack([np.hstack(tiles[r * columns:(r + 1) * columns]) for r in range(rows)])


def write_mp4(frames: list[np.ndarray], path: Path, fps: float) -> None:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "data" / "demo")
    parser.add_argument("--frames", type=int, default=60, help="frames of the camera bag (default 60)")
    parser.add_argument("--rate", type=float, default=1.0,
                        help="playback speed factor: 1.0 plays the camera bag at its own rate (10 Hz for the "
                             "synthetic bag, the video's frame rate with --video), 2.0 twice as fast")
    parser.add_argument("--input", default="1024x512", help="network input WxH")
    parser.add_argument("--video", type=Path, default=None, help="play this video instead of the synthetic bag")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.frames < 1 or args.rate <= 0:
        sys.exit("demo: --frames must be at least 1 and --rate positive")
    isolation.ensure_isolated()
    os.environ.setdefault("ROS_DOMAIN_ID", "72")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.video:
        bag = video_camera_bag(args.video, args.out, args.frames)
    else:
        bag = ensure_camera_bag(args.out, args.frames)

    import rclpy
    from streamlib import NodeProcess, Observer

    width, height = (int(v) for v in args.input.split("x"))
    recorded = args.out / f"outputs_{time.strftime('%Y%m%d_%H%M%S')}"
    rclpy.init()
    try:
        observer = Observer(camera_topic=CAMERA_TOPIC, keep_overlays=True)
        node = NodeProcess(f"input_width:={width}", f"input_height:={height}",
                           remaps=(f"image:={CAMERA_TOPIC}",)).start()
        tool = [sys.executable, str(REPO / "instseg_ros" / "bag_tools.py")]
        recorder = subprocess.Popen([*tool, "record", str(recorded), "--topics", "/segmentation_node/instances",
                                     "/segmentation_node/instance_ids", "/diagnostics", "--wait", "30"],
                                    stdout=subprocess.PIPE, text=True)
        time.sleep(2.0)
        count, bag_hz = bag_frames_and_rate(bag)
        print(f"playing {count} frames of {bag} at {args.rate:g}x its {bag_hz:.3g} Hz ({args.rate * bag_hz:.3g} "
              f"frames/s) into segmentation_node ({node.log[-1].split('] ')[-1].strip()})", flush=True)
        player = subprocess.run([*tool, "play", str(bag), "--rate", str(args.rate), "--reliability", "best_effort",
                                 "--wait-for-subscribers", "30"], capture_output=True, text=True, check=True)
        time.sleep(3.0)
        recorder.send_signal(signal.SIGINT)
        recorder_out, _ = recorder.communicate(timeout=60)
        counters = node.stop()
        observer.close()
    finally:
        rclpy.try_shutdown()
    played = sum(json.loads(player.stdout.strip().splitlines()[-1])["published"].values())
    if not observer.overlays:
        sys.exit("demo: no overlay arrived; see the node log:\n" + "".join(node.log))
    prefix = f"{args.video.stem}_" if args.video else ""
    sheet = args.out / f"{prefix}contact_sheet.png"
    cv2.imwrite(str(sheet), cv2.cvtColor(contact_sheet(observer.overlays), cv2.COLOR_RGB2BGR))
    video = args.out / f"{prefix}overlay.mp4"
    write_mp4(observer.overlays, video, fps=max(1.0, observer.fps()))
    latency = summarize(observer.latencies_ms)
    latency_from = "camera frame -> InstanceArray, both seen from another process"
    if not observer.latencies_ms:  # large best-effort frames may all be lost to the observer on a loaded machine
        latency = tuple(float(observer.diagnostics.get(f"latency_p{p}_ms", "nan")) for p in (50, 95))
        latency_from = ("the observer saw none of the camera frames it could match, so the node's own figure: "
                        "frame received -> published, from /diagnostics")
    instances = [len(m.instances) for _, m in observer.arrays]
    print_table(["frames played", "received by node", "segmented", "dropped", "fps", "latency p50 ms",
                 "latency p95 ms", "instances per frame"],
                [[played, counters.get("received", 0), counters.get("processed", 0), counters.get("dropped", 0),
                  observer.fps(), latency[0], latency[1], f"{np.mean(instances):.1f}" if instances else "0"]],
                title=f"segmentation_node, {args.input} on {os.cpu_count()} CPU cores "
                      f"(latency: {latency_from})")
    print(f"\nrecorded {recorder_out.strip()}\ncontact sheet {sheet}\nvideo {video} ({len(observer.overlays)} frames)")


if __name__ == "__main__":
    main()
