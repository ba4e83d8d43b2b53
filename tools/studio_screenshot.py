"""docs/studio.jpg: the labelling studio in headless chromium, as an operator leaves it.

    .venv/bin/python tools/studio_screenshot.py [--out docs/studio.jpg]

Writes a synthetic camera sequence (1024x512, seed 5) as a bag, opens its frame 2, clicks the extreme points
of the five largest objects of the instance classes (from the generator's ground truth; classes set with keys),
goes to frame 3 and copies them (C: the same tracks, moved), adds a correction click (Shift+click) inside the
largest, marks it occluded, asks Box2Pix for proposals, chooses one (its outline highlighted) and saves the page.
Synthetic frames only (never the COCO validation photographs).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "studio.jpg")
    parser.add_argument("--frame", type=int, default=3)
    args = parser.parse_args()
    from instseg_ros import isolation

    isolation.ensure_isolated()  # chromium and the studio stay on loopback
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from instseg_core.annotate.encoding import extreme_points_from_mask
    from instseg_core.data.bags import write_image_bag
    from instseg_core.data.cityscapes import PolygonObject, visible_masks
    from instseg_core.data.synth_cli import sequence_frames
    from instseg_studio.headless import chromium, click_image

    work = Path(tempfile.mkdtemp(prefix="studio_screenshot_"))
    images, objects = [], []
    per_frame: list[list] = []
    for _, frame in sequence_frames(5, "val", 0, args.frame + 1, width=1024, height=512, fps=10.0, ego_speed=6.0):
        polygons = [PolygonObject(label, np.asarray(p)) for label, p in frame.objects]
        images.append(frame.rgb)
        per_frame.append(sorted([(p.label, m) for p, m in zip(polygons, visible_masks(512, 1024, polygons),
                                                               strict=True)
                                 if p.label in ("car", "person", "rider", "truck", "bus", "train", "motorcycle",
                                                "bicycle") and m.sum() > 600], key=lambda item: -int(item[1].sum())))
    objects = per_frame[args.frame - 1]
    write_image_bag(work / "camera", images, rate_hz=10.0)
    studio = subprocess.Popen([sys.executable, "-m", "instseg_studio.cli", str(work / "camera"), "--port", "0",
                               "--out", str(work / "out"), "--segmenter", "inprocess", "--proposals", "box2pix"],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert studio.stdout is not None
    url = re.search(r"(http://127\.0\.0\.1:\d+/)", studio.stdout.readline()).group(1)  # type: ignore[union-attr]
    driver = chromium(work / "chromium", window=(1500, 820))
    wait = WebDriverWait(driver, 120)
    idle = "return window.studioState.busy === 0"
    try:
        driver.get(url)
        wait.until(lambda d: d.execute_script("return document.body.dataset.ready") == "true")
        body = driver.find_element(By.TAG_NAME, "body")
        for index in range(1, args.frame):
            body.send_keys(Keys.ARROW_RIGHT)
            wait.until(lambda d, k=index: d.execute_script(f"return window.studioState.frame.index === {k}")
                       and d.execute_script(idle))
        classes = driver.execute_script("return window.studioState.info.classes")
        overlay = driver.find_element(By.ID, "overlay")
        for number, (name, mask) in enumerate(objects[:5], start=1):
            body.send_keys(Keys.ESCAPE)
            body.send_keys(str(classes.index(name) + 1))
            for x, y in extreme_points_from_mask(mask):
                click_image(driver, overlay, 1024, x, y)
            try:
                wait.until(lambda d, n=number: d.execute_script(f"return window.studioState.objects.length === {n}")
                           and d.execute_script(idle + " && window.studioState.writes.length === 0"))
            except Exception:
                sys.exit(f"{name} was not made: " + driver.execute_script(
                    "return JSON.stringify([window.studioState.clicks, "
                    "document.getElementById('message').textContent])"))
        body.send_keys(Keys.ARROW_RIGHT)
        wait.until(lambda d: d.execute_script(f"return window.studioState.frame.index === {args.frame}")
                   and d.execute_script(idle))
        body.send_keys("c")
        saved = idle + " && window.studioState.writes.length === 0"
        made = min(5, len(objects))
        wait.until(lambda d: d.execute_script(f"return window.studioState.objects.length === {made}")
                   and d.execute_script(saved))
        # a correction click inside the largest object, then mark it occluded (selected from the list)
        largest = np.zeros((512, 1024), np.uint8)
        polygon = driver.execute_script("return window.studioState.objects[0].polygon")
        cv2.fillPoly(largest, [np.asarray(polygon, np.int32).reshape(-1, 1, 2)], 1)
        inside = np.unravel_index(np.argmax(cv2.distanceTransform(largest, cv2.DIST_L2, 5)), largest.shape)
        driver.find_elements(By.CSS_SELECTOR, "#object-list li .name")[0].click()
        click_image(driver, overlay, 1024, int(inside[1]), int(inside[0]), modifier=Keys.SHIFT)
        wait.until(lambda d: d.execute_script("return window.studioState.objects[0].clicks.positive.length === 1")
                   and d.execute_script(saved))
        driver.find_element(By.ID, "attribute-occluded").click()
        wait.until(lambda d: d.execute_script(saved))
        body.send_keys("p")
        wait.until(lambda d: d.execute_script("return window.studioState.proposals.length > 0") and
                   d.execute_script(idle))
        body.send_keys(Keys.ARROW_DOWN)
        time.sleep(0.3)  # let the page paint the last change before the capture
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
        studio.terminate()
        studio.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    cv2.imwrite(str(args.out), image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} kB)")


if __name__ == "__main__":
    main()
