"""The studio as a process: killed and restarted, segmenting through the ROS service, and driven in a real
headless browser (Debian's chromium + chromedriver through Selenium), all inside the loopback-only namespace."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import httpx2 as httpx
import numpy as np
import pytest
from pycocotools.coco import COCO
from small_filesystems import SCRIPT as SMALL_FILESYSTEM
from small_filesystems import is_read_only, small_filesystem_arguments
from studio_fixtures import GroundTruth, sequence_bag

from instseg_core.annotate.segmenter import create_annotation_segmenter
from instseg_core.data.cityscapes import CityscapesDataset
from instseg_core.eval.binary_metrics import iou
from instseg_studio.bag_frames import BagFrames
from instseg_studio.headless import CHROMEDRIVER, CHROMIUM, chromium, click_image
from instseg_studio.segmenters import InProcessSegmenter

REPO = Path(__file__).resolve().parents[1]
NODE = REPO / "instseg_ros" / "extreme_point_node.py"


@pytest.fixture(scope="module")
def bag(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    path = tmp_path_factory.mktemp("studio_browser") / "camera"
    return path, sequence_bag(path, 3)


class StudioProcess:
    """`instseg-studio` started as a console user would, on a free port; `url` once it serves."""

    def __init__(self, bag: Path, out: Path, *extra: str, env: dict | None = None,
                 command_prefix: Sequence[str] = ()) -> None:
        self.proc = subprocess.Popen(
            [*command_prefix, sys.executable, "-m", "instseg_studio.cli", str(bag), "--port", "0", "--out", str(out),
             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # printed once the socket listens and the studio is built
        match = re.search(r"serving (http://127\.0\.0\.1:\d+/)", line)
        if not match:
            self.proc.kill()
            pytest.fail(f"the studio did not start: {line}\n{self.proc.communicate(timeout=30)[1]}")
        self.url = match.group(1)
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def studios() -> Iterator[list[StudioProcess]]:
    started: list[StudioProcess] = []
    yield started
    for studio in started:
        studio.stop(signal.SIGKILL)


def _mask(polygon: list, shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.asarray(polygon, np.int32).reshape(-1, 1, 2)], 1)
    return mask.astype(bool)


def test_a_killed_studio_restarts_with_the_session_exactly(bag: tuple[Path, GroundTruth], tmp_path: Path,
                                                           studios: list[StudioProcess]) -> None:
    gt = bag[1]
    studio = StudioProcess(bag[0], tmp_path, "--segmenter", "inprocess")
    studios.append(studio)
    version = 0
    for frame in range(3):
        answer = studio.http.post("/api/segment", json={"frame": frame, "points": gt.extreme_points(frame, 0)}).json()
        objects = [{"id": f"f{frame}", "class": "person", "points": answer["points"], "polygon": answer["polygon"],
                    "tolerance": 1.0, "score": answer["score"]}]
        version = studio.http.put(f"/api/frames/{frame}/objects",
                                  json={"base_version": version, "objects": objects}).json()["version"]
    before = [studio.http.get(f"/api/frames/{k}").json()["objects"] for k in range(3)]
    studio.stop(signal.SIGKILL)
    again = StudioProcess(bag[0], tmp_path, "--segmenter", "inprocess")
    studios.append(again)
    assert again.http.get("/api/info").json()["version"] == version == 3
    assert [again.http.get(f"/api/frames/{k}").json()["objects"] for k in range(3)] == before
    assert again.http.get("/api/timeline").json()["labelled"] == [0, 1, 2]


def test_a_bad_session_file_stops_the_studio_with_the_reason(bag: tuple[Path, GroundTruth], tmp_path: Path) -> None:
    (tmp_path / "studio_session.json").write_text("{half")
    result = subprocess.run([sys.executable, "-m", "instseg_studio.cli", str(bag[0]), "--port", "0", "--out",
                             str(tmp_path), "--segmenter", "inprocess"], capture_output=True, text=True, timeout=120,
                            cwd=REPO)
    assert result.returncode == 2
    assert "studio_session.json cannot be read" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "studio_session.json").read_text() == "{half", "the file is left for the operator"


def _peak_rss_mb(pid: int) -> float:
    return int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1)) / 1024


def _chunked_upload(url: str, path: str, total_bytes: int, piece: int = 1 << 16) -> tuple[int, bytes]:
    """POST `total_bytes` of JSON whitespace with Transfer-Encoding: chunked (no Content-Length), stopping when
    the server answers or stops taking bytes; returns (bytes sent, the start of the answer)."""
    host, port = re.match(r"http://([^:/]+):(\d+)/", url).groups()  # type: ignore[union-attr]
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
        chunk = f"{piece:x}\r\n".encode() + b" " * piece + b"\r\n"
        sent = 0
        try:
            while sent < total_bytes and not select.select([sock], [], [], 0)[0]:
                sock.sendall(chunk)
                sent += piece
            if sent >= total_bytes:
                sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server closed the connection, or stopped reading (the socket timeout)
            pass
        return sent, sock.recv(4096)


def test_a_chunked_upload_is_refused_at_the_limit_without_being_read(bag: tuple[Path, GroundTruth], tmp_path: Path,
                                                                    studios: list[StudioProcess]) -> None:
    """Issue 33: a 64 MB chunked upload (no Content-Length) is answered 413 once 1 MB has arrived; the client gets
    to send only what the sockets buffer, and the server's peak memory stays put. Before, the whole body was read
    into memory first (a 256 MB upload: all of it sent, peak RSS 149 -> 662 MB; now 6 MB sent, 149 -> 150 MB)."""
    studio = StudioProcess(bag[0], tmp_path, "--segmenter", "inprocess")
    studios.append(studio)
    peak_before = _peak_rss_mb(studio.proc.pid)
    sent, answer = _chunked_upload(studio.url, "/api/segment", 64 << 20)
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert sent < 16 << 20, f"the client sent {sent >> 20} MB before the refusal"
    assert _peak_rss_mb(studio.proc.pid) - peak_before < 16
    counters = studio.http.get("/api/info").json()["counters"]
    assert counters["refused_size"] == 1 and "internal_errors" not in counters, counters


@pytest.mark.ros
def test_the_service_node_and_in_process_give_the_same_polygons(bag: tuple[Path, GroundTruth], tmp_path: Path,
                                                                 ros_processes, studios: list[StudioProcess]) -> None:
    gt = bag[1]
    node = ros_processes.start("--ros-args", "-p", "frame_cache:=4", script=NODE)
    studio = StudioProcess(bag[0], tmp_path, "--segmenter", "service", env=ros_processes.env)
    studios.append(studio)
    assert studio.http.get("/api/info").json()["segmenter"] == "service"
    local = InProcessSegmenter(create_annotation_segmenter())
    frames = BagFrames(bag[0])
    for frame in (0, 1):
        for k in range(3):  # the first request of a frame carries its pixels, the next ones only the points
            points = gt.extreme_points(frame, k)
            answer = studio.http.post("/api/segment", json={"frame": frame, "points": points[::-1]})
            assert answer.status_code == 200, answer.text
            assert answer.json()["polygon"] == local.segment(frames.frame(frame), points, 1.0).polygon.tolist()
    assert studio.http.get("/api/info").json()["segmenter_stats"] == {"requests": 6, "with_pixels": 2}
    studio.stop()
    _, node_log = ros_processes.signal_and_wait(node, signal.SIGINT)
    summary = json.loads(next(line for line in node_log.splitlines()
                              if line.startswith("extreme_point_node summary ")).split("summary ", 1)[1])
    assert summary == {"served": 6, "refused": {}}, summary


def open_page(studio: StudioProcess, profile: Path) -> tuple:
    """Headless chromium showing the studio's page, once the page is ready: (driver, a 60 s WebDriverWait)."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail("the browser tests need Debian's chromium and chromium-driver: apt-get install chromium "
                    "chromium-driver (tools/setup.sh does it when run as root, .ci/run always)")
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium(profile)
    wait = WebDriverWait(driver, 60)
    try:
        driver.get(studio.url)
        wait.until(lambda d: d.execute_script("return document.body.dataset.ready") == "true")
    except BaseException:
        driver.quit()
        raise
    return driver, wait


@pytest.mark.slow
def test_an_operator_labels_in_the_browser(bag: tuple[Path, GroundTruth], tmp_path: Path,
                                           studios: list[StudioProcess]) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    gt = bag[1]
    studio = StudioProcess(bag[0], tmp_path, "--segmenter", "inprocess")
    studios.append(studio)
    driver, wait = open_page(studio, tmp_path / "chromium")
    state = lambda script: driver.execute_script(f"return window.studioState.{script}")  # noqa: E731
    api = studio.http
    try:
        overlay = driver.find_element(By.ID, "overlay")
        body = driver.find_element(By.TAG_NAME, "body")
        scale = overlay.size["width"] / 512

        def wait_saved(count: int) -> None:
            wait.until(lambda d: d.execute_script("return window.studioState.busy") == 0
                       and state("version") >= count)

        # four clicks on each of the three largest objects, in a shuffled order
        largest = sorted(range(len(gt.objects[0])), key=lambda k: -gt.objects[0][k][1].sum())[:3]
        rng = np.random.default_rng(0)
        for number, k in enumerate(largest, start=1):
            body.send_keys(Keys.ESCAPE)  # deselect: a class key now sets the class of new objects only
            body.send_keys("3" if gt.objects[0][k][0] == "car" else "1")
            for point in np.asarray(gt.extreme_points(0, k))[rng.permutation(4)]:
                click_image(driver, overlay, 512, *point)
            wait_saved(number)
            wait.until(lambda d, n=number: state("objects.length") == n)
        saved = api.get("/api/frames/0").json()["objects"]
        assert [o["class"] for o in saved] == [gt.objects[0][k][0] for k in largest]
        for obj, k in zip(saved, largest, strict=True):
            assert iou(_mask(obj["polygon"], (256, 512)), gt.objects[0][k][1]) >= 0.85, obj["class"]

        # drag a vertex of the selected (last) object (one away from its extreme-point handles), then undo it
        version = state("version")
        before = saved[-1]["polygon"]
        # the vertex farthest from the handles and from its neighbours (a handle drawn over it would take the drag)
        others = [np.asarray(saved[-1]["points"], float)]
        far = max(range(len(before)), key=lambda j: np.linalg.norm(
            np.concatenate([*others, np.delete(np.asarray(before, float), j, axis=0)]) - before[j], axis=1).min())
        vertex = driver.find_element(By.CSS_SELECTOR, f"circle.vertex[data-vertex='{far}']")
        ActionChains(driver).click_and_hold(vertex).move_by_offset(round(6 * scale), round(4 * scale)) \
            .release().perform()
        wait_saved(version + 1)
        moved = api.get("/api/frames/0").json()["objects"][-1]["polygon"]
        assert moved[far] == [before[far][0] + 6, before[far][1] + 4]
        assert moved[:far] + moved[far + 1:] == before[:far] + before[far + 1:]
        body.send_keys(Keys.CONTROL, "z")
        wait_saved(version + 2)
        assert api.get("/api/frames/0").json()["objects"][-1]["polygon"] == before

        # change the selected object's class
        body.send_keys("4")
        wait_saved(version + 3)
        assert api.get("/api/frames/0").json()["objects"][-1]["class"] == "truck"

        # next frame, copy the objects, export
        body.send_keys(Keys.ARROW_RIGHT)
        wait.until(lambda d: state("frame && window.studioState.frame.index") == 1)
        body.send_keys("c")
        wait.until(lambda d: state("objects.length") == 3)
        wait_saved(version + 4)
        copied = api.get("/api/frames/1").json()["objects"]
        assert [o["source"] for o in copied] == ["propagated"] * 3
        body.send_keys("e")
        wait.until(lambda d: "exported" in d.find_element(By.ID, "message").text)
        export = tmp_path / "export"
        assert len(COCO(str(export / "annotations_coco.json")).getAnnIds()) == 6
        assert len(list(CityscapesDataset(export, "train"))) == 2
        driver.save_screenshot(str(tmp_path / "studio.png"))
        assert api.get("/api/info").json()["counters"].get("internal_errors", 0) == 0
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium", ignore_errors=True)


@pytest.mark.slow
def test_a_change_the_disk_refuses_stays_in_the_page_until_it_is_saved(bag: tuple[Path, GroundTruth], tmp_path: Path,
                                                                       studios: list[StudioProcess]) -> None:
    """Issue 33: the output folder's disk is remounted read-only mid-session (a real tmpfs in the studio's own mount
    namespace, tests/small_filesystems.py). The save answers 507 "not saved: [Errno 30 EROFS] Read-only file
    system"; the page keeps drawing the new object under a banner, still has it after moving to another frame and
    back, and saves it with "Retry saving" once the disk is writable again. Before: a 500 "internal error", and
    moving to another frame lost the object."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    gt = bag[1]
    disk = tmp_path / "disk"
    studio = StudioProcess(bag[0], disk, "--segmenter", "inprocess",
                           command_prefix=[sys.executable, str(SMALL_FILESYSTEM),
                                           *small_filesystem_arguments(disk, 16 << 20)])
    studios.append(studio)
    driver, wait = open_page(studio, tmp_path / "chromium")
    state = lambda script: driver.execute_script(f"return window.studioState.{script}")  # noqa: E731
    try:
        overlay = driver.find_element(By.ID, "overlay")
        body = driver.find_element(By.TAG_NAME, "body")
        banner = driver.find_element(By.ID, "unsaved")
        largest = sorted(range(len(gt.objects[0])), key=lambda k: -gt.objects[0][k][1].sum())[:2]

        def add_object(k: int) -> None:
            body.send_keys(Keys.ESCAPE)
            for point in gt.extreme_points(0, k):
                click_image(driver, overlay, 512, *point)

        def on_frame(index: int) -> None:
            wait.until(lambda d: state("busy") == 0 and state("frame && window.studioState.frame.index") == index)

        add_object(largest[0])
        wait.until(lambda d: state("busy") == 0 and state("version") == 1)
        os.kill(studio.proc.pid, signal.SIGUSR1)  # the disk is remounted read-only
        wait.until(lambda d: is_read_only(studio.proc.pid, disk))
        add_object(largest[1])
        wait.until(lambda d: banner.is_displayed())
        assert "not saved: [Errno 30 EROFS] Read-only file system" in banner.text, banner.text
        assert "NOT SAVED" in driver.find_element(By.ID, "status").text
        assert state("objects.length") == 2 and len(studio.http.get("/api/frames/0").json()["objects"]) == 1
        body.send_keys(Keys.ARROW_RIGHT)
        on_frame(1)
        body.send_keys(Keys.ARROW_LEFT)
        on_frame(0)
        assert state("objects.length") == 2 and banner.is_displayed(), "moving to another frame keeps the change"
        os.kill(studio.proc.pid, signal.SIGUSR2)  # writable again
        wait.until(lambda d: not is_read_only(studio.proc.pid, disk))
        driver.find_element(By.ID, "retry-button").click()
        wait.until(lambda d: not banner.is_displayed() and state("busy") == 0)
        saved = studio.http.get("/api/frames/0").json()["objects"]
        assert len(saved) == 2 and state("version") == 2
        counters = studio.http.get("/api/info").json()["counters"]
        assert counters["save_failures"] == 1 and "internal_errors" not in counters, counters
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium", ignore_errors=True)
