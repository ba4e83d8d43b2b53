"""`make demo`: the main job on CPU. A synthetic camera bag is played in real time into segmentation_node
(the shipped Spatial Embeddings model, ONNX Runtime on CPU); its outputs are recorded to a bag, and an
overlay contact sheet (PNG), a short MP4 and a table (fps, latency p50/p95, drops) are written.

    .venv/bin/python tools/demo.py [--out data/demo] [--frames 60] [--rate 1.0] [--input 1024x512]
                                   [--video FILE.mp4]

The camera bag (data/demo/camera, 1024x512 at 10 Hz, MCAP) is generated on the first run. The node keeps
only the newest frame, so on 2 CPU cores it segments a few frames per second and drops the rest, as it
would on a vehicle. The script isolates itself in a loopback-only network namespace before rclpy starts.

`--video FILE` plays a video instead (any file OpenCV reads, e.g. a dashcam clip): its first `--frames` frames are
written once into a camera bag (data/demo/video_<name>, the video's frame rate) and played the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


def ensure_camera_bag(out: Path, frames: int) -> Path:
    bag = out / "camera"
    if not (bag / "metadata.yaml").is_file():
        from instseg_core.data.synth_cli import main as synth

        print(f"generating the synthetic camera bag ({frames} frames, ~{frames * 0.8:.0f} s) ...", flush=True)
        shutil.rmtree(bag, ignore_errors=True)
        synth([str(out / "sequence"), "--sequence", str(frames), "--split", "val", "--width", "1024", "--height",
               "512", "--fps", "10", "--seed", "2026", "--bag", str(bag)])
    return bag


def video_camera_bag(video: Path, out: Path, frames: int) -> Path:
    """A camera bag (sensor_msgs/Image rgb8 on /camera/image_raw, the video's frame rate) of the first `frames`
    frames of `video`, written on the first use. SystemExit naming the file when OpenCV cannot read it."""
    from instseg_core.data.bags import write_image_bag

    bag = out / f"video_{video.stem}"
    if (bag / "metadata.yaml").is_file():
        return bag
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise SystemExit(f"demo: cannot read the video {video}")
    fps = capture.get(cv2.CAP_PROP_FPS) or 10.0
    rgb_frames = []
    while len(rgb_frames) < frames:
        ok, bgr = capture.read()
        if not ok:
            break
        rgb_frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    if not rgb_frames:
        raise SystemExit(f"demo: no frame could be decoded from {video}")
    print(f"writing {len(rgb_frames)} frames of {video} ({fps:.1f} Hz) into {bag}", flush=True)
    write_image_bag(bag, rgb_frames, rate_hz=fps, overwrite=True)
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
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "data" / "demo")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--rate", type=float, default=1.0, help="playback rate (1.0 = real time, 10 Hz)")
    parser.add_argument("--input", default="1024x512", help="network input WxH")
    parser.add_argument("--video", type=Path, default=None, help="play this video instead of the synthetic bag")
    args = parser.parse_args()
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
        observer = Observer(camera_topic="/camera/image_raw", keep_overlays=True)
        node = NodeProcess(f"input_width:={width}", f"input_height:={height}",
                           remaps=("image:=/camera/image_raw",)).start()
        tool = [sys.executable, str(REPO / "instseg_ros" / "bag_tools.py")]
        recorder = subprocess.Popen([*tool, "record", str(recorded), "--topics", "/segmentation_node/instances",
                                     "/segmentation_node/instance_ids", "/diagnostics", "--wait", "30"],
                                    stdout=subprocess.PIPE, text=True)
        time.sleep(2.0)
        print(f"playing {bag} at {args.rate}x into segmentation_node ({node.log[-1].split('] ')[-1].strip()})",
              flush=True)
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
    instances = [len(m.instances) for _, m in observer.arrays]
    print_table(["frames played", "received by node", "segmented", "dropped", "fps", "latency p50 ms",
                 "latency p95 ms", "instances per frame"],
                [[played, counters.get("received", 0), counters.get("processed", 0), counters.get("dropped", 0),
                  observer.fps(), latency[0], latency[1], f"{np.mean(instances):.1f}" if instances else "0"]],
                title=f"segmentation_node, {args.input} on {os.cpu_count()} CPU cores "
                      f"(latency: camera frame -> InstanceArray, both seen from another process)")
    print(f"\nrecorded {recorder_out.strip()}\ncontact sheet {sheet}\nvideo {video} ({len(observer.overlays)} frames)")


if __name__ == "__main__":
    main()
