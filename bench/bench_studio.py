"""The labelling studio's speed, measured in a real browser (headless chromium driven by Selenium).

    .venv/bin/python bench/bench_studio.py [--frames 12] [--objects 3] [--index-frames 10000] [--no-service]

Rows (median and p95 in ms over the operator's actions, and ratios against baselines timed in the same run):
- click 4 -> polygon drawn, 2048x1024 frames: from the 4th click's handler to the polygon on the page, with the
  in-process segmenter and with extreme_point_node's service (pixels sent once per frame, then points only);
  baseline: the same segmentation called directly in Python (no HTTP, no browser). Also the first object of
  each frame alone (the page warms the frame when it is shown: decoded frame, the model's threads awake), and,
  as a baseline in the same run, the in-process page as before issue 36 (`?warm=0`: no warming, the next
  frame prefetched as soon as a frame is shown instead of once the operator pauses);
- correction click -> updated polygon: a Shift+click (positive) inside each new object, from the click's
  handler to the re-segmented polygon on the page; baseline: segment(..., positive=[click]) in Python;
- next frame shown (2048x1024 rgb8 from an MCAP bag): from the key press to the decoded image on the page;
  baseline: reading, decoding and JPEG-encoding the frame in Python;
- opening a bag of --index-frames frames: the first time (index built from the MCAP message indexes) and again
  (index read from the cache), against reading every message of the topic.
Everything runs inside a loopback-only network namespace (the service mode starts rclpy).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from instseg_ros import isolation

REPO = Path(__file__).resolve().parents[1]

# the page has answered and saved everything, and shows arguments[0] objects
IDLE = ("window.studioState.busy === 0 && window.studioState.writes.length === 0 && "
        "window.studioState.objects.length === arguments[0]")


def make_bags(root: Path, frames: int, index_frames: int) -> tuple[Path, list, list, Path]:
    """(2 MP bag, per frame the extreme points of its largest objects, per frame a pixel inside each of them, small
    bag of index_frames frames)."""
    import cv2
    import numpy as np

    from instseg_core.annotate.encoding import extreme_points_from_mask
    from instseg_core.data.bags import write_image_bag
    from instseg_core.data.cityscapes import PolygonObject, visible_masks
    from instseg_core.data.synth_cli import sequence_frames

    images, clicks, interiors = [], [], []
    for _, frame in sequence_frames(5, "val", 0, frames, width=1024, height=512, fps=10.0, ego_speed=6.0):
        polygons = [PolygonObject(label, np.asarray(p)) for label, p in frame.objects]
        masks = [cv2.resize(m.astype(np.uint8), (2048, 1024), interpolation=cv2.INTER_NEAREST).astype(bool)
                 for p, m in zip(polygons, visible_masks(512, 1024, polygons), strict=True)
                 if p.label in ("car", "person", "truck", "bus") and m.sum() > 800]
        masks.sort(key=lambda m: -int(m.sum()))
        images.append(cv2.resize(frame.rgb, (2048, 1024), interpolation=cv2.INTER_LINEAR))
        clicks.append([extreme_points_from_mask(m).tolist() for m in masks])
        # a correction click at each object's most interior pixel (the largest distance to its border)
        interiors.append([[int(v) for v in np.unravel_index(np.argmax(cv2.distanceTransform(
            m.astype(np.uint8), cv2.DIST_L2, 5)), m.shape)[::-1]] for m in masks])
    big = root / "camera_2mp"
    write_image_bag(big, images, rate_hz=10.0, storage="mcap")
    small = root / "camera_long"
    tiny = np.zeros((80, 160, 3), np.uint8)
    write_image_bag(small, (tiny for _ in range(index_frames)), rate_hz=30.0, storage="mcap")
    return big, clicks, interiors, small


def start_studio(bag: Path, out: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "instseg_studio.cli", str(bag), "--port", "0", "--out", str(out),
                             *extra], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"serving (http://127\.0\.0\.1:\d+/)", line)
    if not match:
        proc.kill()
        sys.exit(f"bench_studio: the studio did not start: {line}")
    return proc, match.group(1)


def browser_session(url: str, clicks: list, interiors: list, objects: int, warm: bool = True) -> dict[str, list[float]]:
    """Drive the page: on each frame click `objects` objects, each followed by a correction click (Shift+click at
    its interior pixel), then go to the next frame; `warm` False: the page does not warm a frame when it shows it
    (the page before issue 36). Returns the page's timings per kind ("first": the polygons of the first object of
    each frame)."""
    import numpy as np
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from instseg_studio.headless import chromium, click_image

    profile = tempfile.mkdtemp(prefix="bench_studio_chromium_")
    driver = chromium(Path(profile))
    wait = WebDriverWait(driver, 120)
    try:
        driver.get(url if warm else url + "?warm=0")
        wait.until(lambda d: d.execute_script("return document.body.dataset.ready") == "true")
        overlay = driver.find_element(By.ID, "overlay")
        body = driver.find_element(By.TAG_NAME, "body")
        for index, points_of_frame in enumerate(clicks):
            for number, points in enumerate(points_of_frame[:objects], start=1):
                for x, y in points:
                    click_image(driver, overlay, 2048, x, y)
                try:
                    wait.until(lambda d, n=number: d.execute_script(f"return {IDLE}", n))
                    click_image(driver, overlay, 2048, *interiors[index][number - 1], modifier=Keys.SHIFT)
                    wait.until(lambda d, n=number: d.execute_script(
                        f"return {IDLE} && window.studioState.objects[arguments[0] - 1].clicks.positive.length === 1",
                        n))
                except Exception:
                    state = driver.execute_script("return [window.studioState.clicks, window.studioState.busy, "
                                                  "document.getElementById('message').textContent]")
                    sys.exit(f"bench_studio: frame {index}, object {number} was not made: {state}, points {points}")
            if index + 1 < len(clicks):
                body.send_keys(Keys.ARROW_RIGHT)
                wait.until(lambda d, k=index + 1: d.execute_script(
                    "return window.studioState.frame.index === arguments[0] && window.studioState.busy === 0", k))
        timings = driver.execute_script("return window.studioTimings")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    result: dict[str, list[float]] = {}
    for entry in timings:
        result.setdefault(entry["what"], []).append(float(entry["ms"]))
        if "server_ms" in entry and entry["what"] == "polygon":
            result.setdefault("server", []).append(float(entry["server_ms"]))
    result["frame"] = result.get("frame", [])[1:]  # the first frame is the page load
    counts = [min(objects, len(points)) for points in clicks]  # objects made per frame (each was checked above)
    starts = np.cumsum([0, *counts[:-1]])
    result["first"] = [result["polygon"][k] for k, n in zip(starts, counts, strict=True) if n]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--objects", type=int, default=3)
    parser.add_argument("--index-frames", type=int, default=10000)
    parser.add_argument("--no-service", action="store_true", help="only the in-process segmenter (no ROS node)")
    args = parser.parse_args()
    isolation.ensure_isolated()
    import numpy as np
    from benchlib import print_table, summarize

    from instseg_core.annotate.segmenter import create_annotation_segmenter
    from instseg_studio.bag_frames import BagFrames
    from instseg_studio.segmenters import InProcessSegmenter

    root = Path(tempfile.mkdtemp(prefix="bench_studio_"))
    try:
        print(f"writing bags ({args.frames} frames at 2048x1024, {args.index_frames} small frames) ...", flush=True)
        big, clicks, interiors, small = make_bags(root, args.frames, args.index_frames)

        # baselines in Python: segmentation without HTTP/browser, frame read + JPEG without the page
        import cv2

        frames = BagFrames(big)
        local = InProcessSegmenter(create_annotation_segmenter())
        direct_polygon, direct_frame, direct_correction = [], [], []
        for index, points_of_frame in enumerate(clicks):
            start = time.perf_counter()
            frame = BagFrames._read(frames, index)
            cv2.imencode(".jpg", cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
            direct_frame.append((time.perf_counter() - start) * 1e3)
            for points, inside in zip(points_of_frame[:args.objects], interiors[index], strict=False):
                start = time.perf_counter()
                local.segment(frame, points, 1.0)
                direct_polygon.append((time.perf_counter() - start) * 1e3)
                start = time.perf_counter()
                local.segment(frame, points, 1.0, positive=[inside])
                direct_correction.append((time.perf_counter() - start) * 1e3)
        frames.close()

        # opening the long bag: first (index from the MCAP message indexes), again (cached), reading everything
        cache = root / "index_cache"
        start = time.perf_counter()
        long_bag = BagFrames(small, cache_dir=cache)
        first_open = (time.perf_counter() - start) * 1e3
        start = time.perf_counter()
        BagFrames(small, cache_dir=cache).close()
        cached_open = (time.perf_counter() - start) * 1e3
        start = time.perf_counter()
        long_bag._timestamps_by_reading(None)
        read_all = (time.perf_counter() - start) * 1e3
        long_bag.close()

        def session_with(mode: str, warm: bool = True) -> dict[str, list[float]]:
            studio, url = start_studio(big, root / f"out_{mode}_{warm}", "--segmenter", mode)
            try:
                return browser_session(url, clicks, interiors, args.objects, warm)
            finally:
                studio.send_signal(signal.SIGTERM)
                studio.wait(timeout=30)

        results = {"inprocess": session_with("inprocess"), "cold": session_with("inprocess", warm=False)}
        modes = ["inprocess"] if args.no_service else ["inprocess", "service"]
        if not args.no_service:
            node = subprocess.Popen([sys.executable, str(REPO / "instseg_ros" / "extreme_point_node.py")],
                                    stderr=subprocess.PIPE, text=True, cwd=REPO)
            assert node.stderr is not None
            for line in node.stderr:
                if "serving" in line:
                    break
            try:
                results["service"] = session_with("service")
            finally:
                node.send_signal(signal.SIGINT)
                node.wait(timeout=30)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    base_polygon, _ = summarize(direct_polygon)
    base_correction, _ = summarize(direct_correction)
    base_frame, _ = summarize(direct_frame)
    rows = []
    for mode in modes:
        median, p95 = summarize(results[mode]["polygon"])
        rows.append([f"click 4 -> polygon drawn ({mode})", len(results[mode]["polygon"]), median, p95,
                     median / base_polygon])
        median, p95 = summarize(results[mode]["first"])
        rows.append([f"  the first object of each frame ({mode})", len(results[mode]["first"]), median, p95,
                     median / base_polygon])
        median, p95 = summarize(results[mode]["server"])
        rows.append([f"  of which the server's segmentation ({mode})", len(results[mode]["server"]), median, p95,
                     median / base_polygon])
    median, p95 = summarize(results["cold"]["polygon"])
    rows.append(["  baseline: click 4 -> polygon, the page before (inprocess)", len(results["cold"]["polygon"]),
                 median, p95, median / base_polygon])
    median, p95 = summarize(results["cold"]["first"])
    rows.append(["  baseline: the first object of each frame, the page before", len(results["cold"]["first"]), median,
                 p95, median / base_polygon])
    rows.append(["  baseline: segmentation in Python", len(direct_polygon), base_polygon,
                 float(np.percentile(direct_polygon, 95)), 1.0])
    for mode in modes:
        median, p95 = summarize(results[mode].get("correction", []))
        rows.append([f"correction click -> polygon drawn ({mode})", len(results[mode].get("correction", [])), median,
                     p95, median / base_correction])
    rows.append(["  baseline: segmentation with the click in Python", len(direct_correction), base_correction,
                 float(np.percentile(direct_correction, 95)), 1.0])
    frame_times = [t for mode in modes for t in results[mode]["frame"]]
    median, p95 = summarize(frame_times)
    rows.append(["next frame shown", len(frame_times), median, p95, median / base_frame])
    rows.append(["  baseline: read + decode + JPEG in Python", len(direct_frame), base_frame,
                 float(np.percentile(direct_frame, 95)), 1.0])
    rows.append([f"open a {args.index_frames}-frame bag, first time", 1, first_open, first_open, first_open / read_all])
    rows.append([f"open a {args.index_frames}-frame bag, cached index", 1, cached_open, cached_open,
                 cached_open / read_all])
    rows.append(["  baseline: read every message of the topic", 1, read_all, read_all, 1.0])
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print_table(["action (2048x1024 frames)", "n", "median ms", "p95 ms", "ratio to baseline"], rows,
                f"Labelling studio in headless chromium ({os.cpu_count()} cores; load average {load} at the end)")


if __name__ == "__main__":
    main()
