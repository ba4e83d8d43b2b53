"""The studio as a process: killed and restarted, segmenting through the ROS service, and driven in a real
headless browser (Debian's chromium + chromedriver through Selenium), all inside the loopback-only namespace."""

from __future__ import annotations

import json
import math
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
from typing import Any

import cv2
import httpx2 as httpx
import numpy as np
import pytest
from pycocotools.coco import COCO
from small_filesystems import SCRIPT as SMALL_FILESYSTEM
from small_filesystems import is_read_only, small_filesystem_arguments
from studio_fixtures import GroundTruth, sequence_bag

from instseg_core.annotate.segmenter import create_annotation_segmenter
from instseg_core.base.classes import INSTANCE_CLASSES
from instseg_core.data.cityscapes import CityscapesDataset
from instseg_core.eval.binary_metrics import iou
from instseg_core.postprocess.polygons import mask_to_polygon
from instseg_studio.bag_frames import BagFrames
from instseg_studio.headless import CHROMEDRIVER, CHROMIUM, chromium, click_image
from instseg_studio.segmenters import InProcessSegmenter
from instseg_studio.session import SESSION_FILE, Session

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

        # change the selected object's class: a new object is not selected for relabelling, so select it first
        driver.find_element(By.CSS_SELECTOR, f"#object-list li[data-id='{saved[-1]['id']}'] .name").click()
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


# --- issue 36: the seven defects an operator hit, the correction clicks, brush, tracks and attributes -----------
# One studio and one chromium for all of them (a fresh tab state per test: the session's objects are emptied and
# the page loaded again); the server-kill test starts its own studio on a port of its own.

@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail("the browser tests need Debian's chromium and chromium-driver (see open_page)")
    profile = tmp_path_factory.mktemp("chromium_profile")
    driver = chromium(profile)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _stored_proposals(gt: GroundTruth, frame: int, scores: Sequence[float]) -> list[dict]:
    """Proposals of `frame` made from its ground-truth objects (in order), as `instseg-fleet prelabel` stores them."""
    found = []
    for (name, mask), score in zip(gt.objects[frame], scores, strict=False):
        polygon, polygon_iou = mask_to_polygon(mask, 1.0)
        found.append({"class": name, "polygon": polygon.tolist(), "points": gt.extreme_points(frame, len(found)),
                      "score": score, "polygon_iou": polygon_iou, "area": int(mask.sum())})
    return found


PROPOSAL_SCORES = (0.9, 0.7, 0.5, 0.3)


@pytest.fixture(scope="module")
def shared_studio(bag: tuple[Path, GroundTruth], tmp_path_factory: pytest.TempPathFactory) -> Iterator[StudioProcess]:
    """A studio whose session has stored proposals on frame 2 (so P answers without a streaming model)."""
    out = tmp_path_factory.mktemp("shared_studio")
    session = Session(out / SESSION_FILE, str(bag[0].resolve()), "/camera/image_raw", tuple(INSTANCE_CLASSES))
    session.set_proposals({2: {"stamp_ns": 0, "proposals": _stored_proposals(bag[1], 2, PROPOSAL_SCORES)}}, 0)
    studio = StudioProcess(bag[0], out, "--segmenter", "inprocess")
    yield studio
    studio.stop()


class Page:
    """The studio's page in the module's chromium, loaded on a session emptied of objects."""

    def __init__(self, driver: Any, studio: StudioProcess, width: int = 512, reset: bool = True) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.studio, self.width, self.by = driver, studio, width, By
        self.wait = WebDriverWait(driver, 30)
        if reset:
            version = studio.http.get("/api/info").json()["version"]
            for index in studio.http.get("/api/timeline").json()["labelled"]:
                version = self.put(index, [], version)
        self.load()

    def put(self, index: int, objects: list, version: int | None = None) -> int:
        version = self.studio.http.get("/api/info").json()["version"] if version is None else version
        answer = self.studio.http.put(f"/api/frames/{index}/objects", json={"base_version": version,
                                                                             "objects": objects})
        assert answer.status_code == 200, answer.text
        return answer.json()["version"]

    def load(self) -> None:
        self.driver.get(self.studio.url)
        self.wait.until(lambda d: d.execute_script("return document.body.dataset.ready") == "true")

    def state(self, expression: str) -> Any:
        return self.driver.execute_script(f"return window.studioState.{expression}")

    def text(self, element_id: str) -> str:
        return self.driver.find_element(self.by.ID, element_id).text

    def keys(self, *keys: str) -> None:
        self.driver.find_element(self.by.TAG_NAME, "body").send_keys(*keys)

    def click(self, x: float, y: float, modifier: str | None = None, double: bool = False) -> None:
        """Click image pixel (x, y), with a key held (`modifier`) or twice (`double`, a double-click)."""
        click_image(self.driver, self.driver.find_element(self.by.ID, "overlay"), self.width, x, y, modifier, double)

    def idle(self) -> None:
        """Every request answered and every change saved."""
        pending = "writes ? window.studioState.writes.length : 0"  # (the page before issue 36 had no queue)
        self.wait.until(lambda d: self.state("busy") == 0 and self.state(pending) == 0)

    def frame(self, index: int) -> None:
        self.wait.until(lambda d: self.state("busy") == 0 and self.state("frame && window.studioState.frame.index")
                        == index)

    def make_object(self, gt: GroundTruth, frame: int, k: int) -> dict:
        count = self.state("objects.length")
        for point in gt.extreme_points(frame, k):
            self.click(*point)
        self.wait.until(lambda d: self.state("objects.length") == count + 1)
        self.idle()
        return self.state("objects[window.studioState.objects.length - 1]")

    def saved(self, index: int) -> list[dict]:
        return self.studio.http.get(f"/api/frames/{index}").json()["objects"]

    def copy_to_next_frame(self, count: int) -> None:
        """→ to the next frame, then C, until the page shows `count` objects there and everything is saved."""
        from selenium.webdriver.common.keys import Keys

        shown = self.state("index")
        self.keys(Keys.ARROW_RIGHT)
        self.frame(shown + 1)
        self.keys("c")
        self.wait.until(lambda d: self.state("objects.length") == count)
        self.idle()


def test_defect_1_a_stale_tab_is_told_and_never_writes_old_state(bag: tuple[Path, GroundTruth], browser: Any,
                                                                 shared_studio: StudioProcess) -> None:
    """Issue 36, 1: tab B made an object; tab A then added one; B moved → and ← (which used to take the newer
    version silently) and pressed Ctrl+Z: its undo wrote its old frame back and deleted A's object. Now B is told
    that it is out of date when it sees the newer version, its undo and edits are refused, A's object stays."""
    from selenium.webdriver.common.keys import Keys

    gt = bag[1]
    tab_b = Page(browser, shared_studio)
    mine = tab_b.make_object(gt, 0, 3)
    first_tab = browser.current_window_handle
    browser.switch_to.new_window("tab")
    try:
        tab_a = Page(browser, shared_studio, reset=False)
        theirs = tab_a.make_object(gt, 0, 1)
        version = shared_studio.http.get("/api/info").json()["version"]
        browser.close()
    finally:
        browser.switch_to.window(first_tab)
    tab_b.keys(Keys.ARROW_RIGHT)
    tab_b.frame(1)
    tab_b.keys(Keys.ARROW_LEFT)
    tab_b.frame(0)
    tab_b.keys(Keys.CONTROL, "z")
    tab_b.idle()
    tab_b.keys(Keys.TAB, Keys.DELETE)  # a direct edit is kept in the tab, not written
    tab_b.wait.until(lambda d: tab_b.state("busy") == 0)
    assert [o["id"] for o in tab_b.saved(0)] == [mine["id"], theirs["id"]], "the other tab's object stays"
    assert shared_studio.http.get("/api/info").json()["version"] == version
    assert tab_b.driver.find_element(tab_b.by.ID, "stale").is_displayed()
    assert "Another tab or window changed this session" in tab_b.text("stale")
    assert "undo refused" in tab_b.text("message")
    assert "out of date" in tab_b.text("status") and "saved v" not in tab_b.text("status")


def test_defect_2_number_keys_never_relabel_silently(bag: tuple[Path, GroundTruth], browser: Any,
                                                     shared_studio: StudioProcess) -> None:
    """Issue 36, 2: "press 3 before clicking a car" turned the object just made into a car. Now a new object is
    not selected for relabelling: the key sets the class of new objects; relabelling needs the operator to select
    the object, and the page says what changed."""
    gt = bag[1]
    page = Page(browser, shared_studio)
    page.keys("1")
    person = page.make_object(gt, 0, 0)
    page.keys("3")  # meant for the next object
    page.idle()
    assert [o["class"] for o in page.saved(0)] == ["person"] and page.state("newClass") == "car"
    assert "new objects: car" in page.text("message")
    car = page.make_object(gt, 0, 1)
    assert car["class"] == "car"
    browser.find_element(page.by.CSS_SELECTOR, f"#object-list li[data-id='{person['id']}'] .name").click()
    page.keys("4")
    page.wait.until(lambda d: "person → truck" in page.text("message"))
    page.idle()
    assert [o["class"] for o in page.saved(0)] == ["truck", "car"]


def test_defect_3_arrow_keys_move_frames_after_the_class_dropdown(browser: Any, shared_studio: StudioProcess) -> None:
    """Issue 36, 3: after choosing in the class dropdown, → changed the class (person → rider), not the frame."""
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    page = Page(browser, shared_studio)
    dropdown = browser.find_element(page.by.ID, "class-select")
    dropdown.click()
    Select(dropdown).select_by_visible_text("rider")
    browser.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)  # where the operator's key goes
    page.frame(1)
    browser.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)
    page.frame(2)
    assert page.state("newClass") == "rider" and dropdown.get_attribute("value") == "rider"


def test_defect_4_a_double_click_is_one_point(bag: tuple[Path, GroundTruth], browser: Any,
                                              shared_studio: StudioProcess) -> None:
    """Issue 36, 4: a double-click counted as two points and the object was built from three distinct points. Now
    it is one point, a point clicked again is refused with a warning, and the object needs four distinct ones."""
    gt = bag[1]
    page = Page(browser, shared_studio)
    points = gt.extreme_points(0, 3)
    overlay = browser.find_element(page.by.ID, "overlay")
    page.click(*points[0], double=True)
    page.click(*points[1])
    page.click(*points[0])  # not a double-click, the same point again: refused
    assert page.state("clicks.length") == 2 and page.state("objects.length") == 0, (page.state("clicks"), points)
    assert "same as click 1" in page.text("message")
    page.click(*points[2])
    page.click(*points[3])
    page.wait.until(lambda d: page.state("objects.length") == 1)
    page.idle()
    assert page.saved(0)[0]["points"] == points and overlay.is_displayed()


def test_defect_5_copying_twice_updates_the_tracks(bag: tuple[Path, GroundTruth], browser: Any,
                                                   shared_studio: StudioProcess) -> None:
    """Issue 36, 5: C twice stacked duplicates (5 -> 10 -> 15 objects). Now the copy of a track the frame already
    has updates it, and a copy that changes nothing says so."""

    gt = bag[1]
    page = Page(browser, shared_studio)
    page.make_object(gt, 0, 3)
    page.make_object(gt, 0, 1)
    page.copy_to_next_frame(2)
    page.keys("c")
    page.idle()
    source, copied = page.saved(0), page.saved(1)
    assert len(copied) == 2 and page.state("objects.length") == 2
    assert sorted(o["track_id"] for o in copied) == sorted(o["track_id"] for o in source)
    assert "nothing changed" in page.text("message")


def test_copying_again_keeps_a_vertex_dragged_on_the_copy(bag: tuple[Path, GroundTruth], browser: Any,
                                                          shared_studio: StudioProcess) -> None:
    """Operator probe, item 2: a vertex dragged on the copied frame was overwritten by the next C (the copy was
    segmented again: "0 added, 1 updated"). Now the drag marks the object edited (and "clicks", no longer
    "propagated"), and C keeps it: "1 kept (edited by hand)"."""
    from selenium.webdriver.common.action_chains import ActionChains

    gt = bag[1]
    page = Page(browser, shared_studio)
    page.make_object(gt, 0, 3)
    page.copy_to_next_frame(1)
    copied = page.saved(1)[0]
    assert copied["source"] == "propagated" and copied["edited"] is False
    browser.find_element(page.by.CSS_SELECTOR, f"#object-list li[data-id='{copied['id']}'] .name").click()
    polygon, handles = np.asarray(copied["polygon"], float), np.asarray(copied["points"], float)
    far = max(range(len(polygon)), key=lambda j: np.linalg.norm(  # a vertex no handle or neighbour covers
        np.concatenate([handles, np.delete(polygon, j, axis=0)]) - polygon[j], axis=1).min())
    scale = browser.find_element(page.by.ID, "overlay").size["width"] / page.width
    vertex = browser.find_element(page.by.CSS_SELECTOR, f"circle.vertex[data-vertex='{far}']")
    ActionChains(browser).click_and_hold(vertex).move_by_offset(round(6 * scale), round(4 * scale)).release() \
        .perform()
    dragged = [copied["polygon"][far][0] + 6, copied["polygon"][far][1] + 4]
    page.wait.until(lambda d: page.state("busy") == 0 and page.saved(1)[0]["polygon"][far] == dragged)
    edited = page.saved(1)[0]
    assert edited["edited"] is True and edited["source"] == "clicks"
    page.keys("c")
    page.wait.until(lambda d: "kept (edited by hand)" in page.text("message"))
    page.idle()
    assert "1 kept (edited by hand)" in page.text("message")
    assert page.saved(1) == [edited] and page.state("objects[0].polygon")[far] == dragged


def test_defect_6_a_dead_server_never_shows_saved_and_the_edits_are_saved_in_order(
        bag: tuple[Path, GroundTruth], browser: Any, tmp_path: Path, studios: list[StudioProcess]) -> None:
    """Issue 36, 6: after the server was killed the page showed "saved" while the edit in flight was not, and after
    the restart that edit went out silently with the next change, outside the undo history. Now the status says
    NOT SAVED – retrying, the edits are retried in order once the server is back, and undo takes them back; a server
    that hangs instead is given 5 s per save. Operator probe: a frame change while the server is away keeps the
    frame's kept points, and the messages about the server being away go once it answers again. Every other
    request of the page has a time limit too (the 4th click, a frame change, P, a correction click, a brush
    stroke, C; the export is watched instead): past it the page says that the server does not answer and keeps
    everything as it was, and the answers that come once the server wakes up are not applied. An undo whose frame
    cannot be shown is not done (it wrote the other frame's objects onto the frame shown)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    gt = bag[1]
    studio = StudioProcess(bag[0], tmp_path, "--segmenter", "inprocess")
    studios.append(studio)
    page = Page(browser, studio)
    made = page.make_object(gt, 0, 3)
    port = studio.url.rsplit(":", 1)[1].strip("/")
    studio.stop(signal.SIGKILL)
    browser.find_element(page.by.CSS_SELECTOR, f"#object-list li[data-id='{made['id']}'] .name").click()
    browser.execute_script("""window.statusLog = [];
        new MutationObserver(() => window.statusLog.push(document.getElementById('status').textContent))
          .observe(document.getElementById('status'), {childList: true, characterData: true, subtree: true});""")
    page.keys("h")  # hide: not saved
    page.wait.until(lambda d: "NOT SAVED" in page.text("status"))
    page.keys("4")  # relabel: after it
    page.wait.until(lambda d: page.state("busy") == 0)
    assert "NOT SAVED" in page.text("status") and page.driver.find_element(page.by.ID, "unsaved").is_displayed()
    second = gt.extreme_points(0, 1)
    page.keys(Keys.ESCAPE)
    for point in second:  # a new object while the server is away: the 4th click cannot be segmented
        page.click(*point)
    page.wait.until(lambda d: "does not answer" in page.text("message"))
    assert page.state("clicks.length") == 3, "the first three points are kept"
    # operator probe: → while the server is away lost the kept points; the page stays on the frame as it was
    page.keys(Keys.ARROW_RIGHT)
    page.wait.until(lambda d: "frame 2 could not be shown" in page.text("message") and page.state("busy") == 0)
    assert page.state("index") == 0 and page.state("frame.index") == 0
    assert page.state("clicks.length") == 3, "a failed frame change keeps the kept points"
    again = StudioProcess(bag[0], tmp_path, "--segmenter", "inprocess", "--port", port)
    studios.append(again)
    page.studio = again
    # both edits are saved, in order, without the operator doing anything
    page.wait.until(lambda d: [(o["hidden"], o["class"]) for o in page.saved(0)] == [(True, "truck")])
    page.idle()
    assert again.http.get("/api/info").json()["version"] == 3 and "saved v3" in page.text("status")
    # the server answers again: what the page said about it being away is gone (it stayed beside "saved v3")
    assert not page.text("message"), page.text("message")
    log = browser.execute_script("return window.statusLog")
    assert any("NOT SAVED – retrying" in text for text in log), log
    assert not [text for text in log[:log.index(next(t for t in log if "saved v3" in t))] if "saved v" in text], log
    page.click(*second[3])  # the 4th point again: the object is made
    page.wait.until(lambda d: page.state("objects.length") == 2)
    page.idle()
    assert len(page.saved(0)) == 2 and "does not answer" not in page.text("message"), "no stale error left"
    page.keys(Keys.CONTROL, "z")  # the edits are in the undo history, in order
    page.idle()
    assert [(o["hidden"], o["class"]) for o in page.saved(0)] == [(True, "truck")]
    page.keys(Keys.CONTROL, "z")
    page.idle()
    assert [(o["hidden"], o["class"]) for o in page.saved(0)] == [(True, "person")]
    page.keys(Keys.CONTROL, "z")
    page.idle()
    assert [(o["hidden"], o["class"]) for o in page.saved(0)] == [(False, "person")]
    # a server that hangs (stopped, not dead) answers nothing: past 5 s a save says so and is retried. Every other
    # request has a time limit of its own (docs/studio.md, Saving; 0.5 s here while the server is stopped), after
    # which the page says that the server does not answer and is exactly as it was; the export has none, but the
    # page checks that the server answers while it runs. A late answer (the server woken) is never applied
    gone = "the studio server does not answer"
    limits = browser.execute_script("return Object.assign({}, window.studioLimits)")
    assert limits == {"save": 5000, "segment": 5000, "frame": 10000, "brush": 10000, "propagate": 30000,
                      "proposals": 30000, "background": 10000, "alive": 5000, "aliveEvery": 5000}, limits
    short = {"save": 500, "segment": 500, "frame": 500, "brush": 500, "proposals": 500, "propagate": 500,
             "alive": 500, "aliveEvery": 200}
    browser.execute_script("Object.assign(window.studioLimits || {}, arguments[0])", short)
    version = again.http.get("/api/info").json()["version"]
    ys, xs = np.nonzero(gt.objects[0][3][1])
    inside = [int(np.median(xs)), int(np.median(ys))]
    snapshot = "return JSON.stringify([s.index, s.frame.index, s.objects, s.clicks, s.proposals, s.undo.length])" \
        .replace("s.", "window.studioState.")
    os.kill(again.proc.pid, signal.SIGSTOP)
    try:
        page.keys(Keys.CONTROL, Keys.SHIFT, "z")  # redo the hiding: its save hangs while the rest goes on
        for point in second:  # a new object: the 4th click is not answered, the first three are kept
            page.click(*point)
        page.wait.until(lambda d: f"{gone} (no answer within 0.5 s): the first three points are kept" in
                        page.text("message"))
        assert page.state("clicks.length") == 3 and page.state("objects.length") == 1
        page.keys(Keys.ARROW_RIGHT)  # a frame change: the page stays on its frame, as it was
        page.wait.until(lambda d: "frame 2 could not be shown" in page.text("message"))
        assert page.state("index") == 0 and page.state("frame.index") == 0 and page.state("clicks.length") == 3
        page.keys("p")
        page.wait.until(lambda d: gone in page.text("message") and "P showed nothing" in page.text("message"))
        browser.find_element(page.by.CSS_SELECTOR, f"#object-list li[data-id='{made['id']}'] .name").click()
        page.click(*inside, modifier=Keys.SHIFT)  # a correction click
        page.wait.until(lambda d: "the correction click was not applied" in page.text("message"))
        page.keys("b")  # a brush stroke
        overlay = browser.find_element(page.by.ID, "overlay")
        scale = overlay.size["width"] / page.width
        ActionChains(browser).move_to_element_with_offset(
            overlay, math.floor((inside[0] - 8.5) * scale - overlay.size["width"] / 2),
            math.floor((inside[1] + 0.5) * scale - overlay.size["height"] / 2)).click_and_hold() \
            .move_by_offset(round(16 * scale), 0).release().perform()
        page.wait.until(lambda d: "the stroke was not applied" in page.text("message"))
        page.keys("b")
        page.keys("e")  # the export waits (no limit), and the page says that the server does not answer
        page.wait.until(lambda d: f"export: {gone}" in page.text("message"))
        page.wait.until(lambda d: "did not answer within 0.5 s" in page.text("unsaved"))
        assert "NOT SAVED – retrying" in page.text("status")
        before = browser.execute_script(snapshot)
    finally:
        os.kill(again.proc.pid, signal.SIGCONT)
    browser.execute_script("Object.assign(window.studioLimits || {}, arguments[0])", limits)
    page.wait.until(lambda d: "exported 1 objects on 1 frames" in page.text("message"))  # the export's late answer
    page.idle()  # the first attempt is saved when the server wakes up; its retry finds it saved, not another tab's
    assert [(o["hidden"], o["class"]) for o in page.saved(0)] == [(True, "person")] and not page.state("stale")
    # the server has answered everything it was sent: only the redo was saved, nothing else came late
    assert again.http.get("/api/info").json()["version"] == version + 1
    assert browser.execute_script(snapshot) == before and gone not in page.text("message")
    page.click(*second[3])  # the 4th point again: the object is made, once
    page.wait.until(lambda d: page.state("objects.length") == 2)
    page.idle()
    assert len(page.saved(0)) == 2 and again.http.get("/api/info").json()["version"] == version + 2
    # C on a hung server copies nothing, and its late answer is not applied: C again copies both objects. An undo
    # whose frame cannot be shown is not done (it wrote frame 1's objects onto frame 2)
    page.keys(Keys.ARROW_RIGHT)
    page.frame(1)
    undo = page.state("undo.length")
    browser.execute_script("Object.assign(window.studioLimits || {}, arguments[0])", short)
    os.kill(again.proc.pid, signal.SIGSTOP)
    try:
        page.keys("c")
        page.wait.until(lambda d: gone in page.text("message") and "C copied nothing" in page.text("message"))
        page.keys(Keys.CONTROL, "z")
        page.wait.until(lambda d: re.search("undo (not done|on frame)", page.text("message")))
        assert page.state("index") == 1 and page.state("objects.length") == 0, "nothing undone on frame 2"
        assert "undo not done: frame 1 could not be shown" in page.text("message")
    finally:
        os.kill(again.proc.pid, signal.SIGCONT)
    browser.execute_script("Object.assign(window.studioLimits || {}, arguments[0])", limits)
    assert page.state("index") == 1 and page.state("objects.length") == 0 and page.state("writes.length") == 0
    assert page.state("undo.length") == undo
    page.keys("c")
    page.wait.until(lambda d: "copied from frame 1: 2 added, 0 updated" in page.text("message"))
    page.idle()
    assert len(page.saved(1)) == 2 and again.http.get("/api/info").json()["version"] == version + 3


def test_a_save_whose_answer_was_lost_is_not_taken_for_another_tab(bag: tuple[Path, GroundTruth], browser: Any,
                                                                   shared_studio: StudioProcess) -> None:
    """The server saved a change but its answer never reached the page (killed between the two, a dropped
    connection): the page retries, the server refuses the retry as stale (409), and the page finds its own change
    saved (one version on, the frame holding exactly what it sent) instead of telling the operator that another
    tab changed the session. The lost answer is made in the page: its fetch performs the PUT, then fails."""
    gt = bag[1]
    page = Page(browser, shared_studio)
    made = page.make_object(gt, 0, 3)
    version = page.state("version")
    browser.execute_script("""const realFetch = window.fetch;
        window.fetch = async (path, options) => {
          const answer = await realFetch(path, options);
          if (options && options.method === 'PUT') { window.fetch = realFetch; throw new TypeError('Failed to fetch'); }
          return answer;
        };""")
    browser.find_element(page.by.CSS_SELECTOR, f"#object-list li[data-id='{made['id']}'] .name").click()
    page.keys("h")
    page.idle()
    assert page.saved(0)[0]["hidden"] and shared_studio.http.get("/api/info").json()["version"] == version + 1
    assert page.state("version") == version + 1 and not page.state("stale"), page.text("stale")
    assert page.text("status") == f"saved v{version + 1}"


def test_defect_7_proposals_are_chosen_explicitly_shown_filtered_and_not_duplicated(
        bag: tuple[Path, GroundTruth], browser: Any, shared_studio: StudioProcess) -> None:
    """Issue 36, 7: Enter accepted the first proposal blindly, the list did not show which outline an entry was,
    and proposals duplicated labelled objects. Now: Enter needs a chosen entry, hovering or choosing an entry
    highlights its outline, a score slider filters the list, proposals overlapping objects are left out (and the
    page says how many)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    gt = bag[1]
    page = Page(browser, shared_studio)
    page.keys(Keys.END)
    page.frame(2)
    page.make_object(gt, 2, 0)  # the 0.9 proposal's object, labelled already
    page.keys("p")
    page.wait.until(lambda d: page.state("busy") == 0 and page.state("proposals.length") > 0)
    page.keys(Keys.ENTER)
    page.idle()
    assert page.state("objects.length") == 1 and len(page.saved(2)) == 1, "Enter alone accepts nothing"
    assert "Enter accepts the CHOSEN proposal" in page.text("message")
    assert page.state("proposals.length") == 3, "the proposal of the labelled object is left out"
    assert "1 more left out: they overlap labelled objects" in page.text("proposal-note")
    entries = browser.find_elements(page.by.CSS_SELECTOR, "#proposal-list li")
    assert len(entries) == 2 and page.text("proposal-count") == "(2 of 3)", "the slider starts at 0.5: 0.3 hidden"
    hovered = entries[1].get_attribute("data-proposal")
    ActionChains(browser).move_to_element(entries[1].find_element(page.by.CLASS_NAME, "name")).perform()
    lit = browser.find_elements(page.by.CSS_SELECTOR, "#overlay polygon.proposal.highlight")
    assert [e.get_attribute("data-proposal") for e in lit] == [hovered]
    slider = browser.find_element(page.by.ID, "score-min")
    browser.execute_script("arguments[0].value = 0.6; arguments[0].dispatchEvent(new Event('input'))", slider)
    assert len(browser.find_elements(page.by.CSS_SELECTOR, "#proposal-list li")) == 1  # 0.7 only (0.5, 0.3 hidden)
    assert len(browser.find_elements(page.by.CSS_SELECTOR, "#overlay polygon.proposal")) == 1
    page.keys(Keys.ARROW_DOWN, Keys.ENTER)
    page.wait.until(lambda d: page.state("objects.length") == 2)
    page.idle()
    accepted = page.saved(2)[1]
    assert accepted["source"] == "proposal" and accepted["class"] == gt.objects[2][1][0]
    assert iou(_mask(accepted["polygon"], (256, 512)), gt.objects[2][1][1]) > 0.9


def test_correction_clicks_brush_attributes_and_tracks_in_the_page(bag: tuple[Path, GroundTruth], browser: Any,
                                                                   shared_studio: StudioProcess) -> None:
    """Issue 36, 2-5: a Shift+click (positive) and an Alt+click or right-click (negative) re-segment the selected
    object with its clicks, which are kept in the object and drawn; the eraser cuts the mask; attributes and
    "exclude" are saved; the track list names the object's frames; each step undoes. The first-run hint,
    human-readable times."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    gt = bag[1]
    page = Page(browser, shared_studio)
    assert browser.find_element(page.by.ID, "hint").is_displayed()
    assert re.search(r"2023-11-14 22:13:20\.000 UTC \(\+0\.00 s\)", page.text("frame-label")), page.text("frame-label")
    mask = gt.objects[0][3][1]
    made = page.make_object(gt, 0, 3)
    assert not browser.find_element(page.by.ID, "hint").is_displayed()
    ys, xs = np.nonzero(mask)
    inside = [int(np.median(xs)), int(np.median(ys))]
    outside = [int(xs.min()) + 2, int(ys.min()) + 2] if not mask[ys.min() + 2, xs.min() + 2] else [0, 0]
    page.click(*inside, modifier=Keys.SHIFT)
    page.wait.until(lambda d: page.state("writes.length") == 0 and len(page.saved(0)[0]["clicks"]["positive"]) == 1)
    page.click(*outside, modifier=Keys.ALT)
    page.wait.until(lambda d: page.state("writes.length") == 0 and len(page.saved(0)[0]["clicks"]["negative"]) == 1)
    # a negative click on background the outline leaves out did its job: no warning
    assert "had no effect" not in page.text("message")
    corrected = page.saved(0)[0]
    for kind, point in (("positive", inside), ("negative", outside)):  # Selenium's whole-pixel offsets: +-1 px
        assert np.abs(np.subtract(corrected["clicks"][kind], [point])).max() <= 1, corrected["clicks"]
    assert len(browser.find_elements(page.by.CSS_SELECTOR, "#overlay circle.correction")) == 2
    timings = browser.execute_script("return window.studioTimings.filter(t => t.what === 'correction').length")
    assert timings == 2
    page.keys(Keys.CONTROL, "z")
    page.idle()
    assert page.saved(0)[0]["clicks"] == {"positive": corrected["clicks"]["positive"], "negative": []}
    overlay = browser.find_element(page.by.ID, "overlay")  # a right-click (that does not drag) is negative too
    scale = overlay.size["width"] / 512
    ActionChains(browser).move_to_element_with_offset(
        overlay, math.floor((outside[0] + 0.5) * scale - overlay.size["width"] / 2),
        math.floor((outside[1] + 0.5) * scale - overlay.size["height"] / 2)).context_click().perform()
    page.wait.until(lambda d: page.state("writes.length") == 0 and len(page.saved(0)[0]["clicks"]["negative"]) == 1)
    # a positive click far outside the object's crop cannot pull that pixel in: the page says so; undo removes it
    far = [502 if inside[0] < 256 else 9, 246 if inside[1] < 128 else 9]
    page.click(*far, modifier=Keys.SHIFT)
    page.wait.until(lambda d: page.state("writes.length") == 0 and len(page.saved(0)[0]["clicks"]["positive"]) == 2)
    page.wait.until(lambda d: "positive click had no effect" in page.text("message"))
    page.keys(Keys.CONTROL, "z")
    page.idle()
    assert [len(page.saved(0)[0]["clicks"][kind]) for kind in ("positive", "negative")] == [1, 1]

    # the eraser: a stroke across the object's middle cuts it; undo restores it
    area = int(_mask(page.saved(0)[0]["polygon"], (256, 512)).sum())
    page.keys("x")
    left, right = int(xs.min()) - 3, int(xs.max()) + 3
    start = (math.floor((left + 0.5) * scale - overlay.size["width"] / 2),
             math.floor((inside[1] + 0.5) * scale - overlay.size["height"] / 2))
    ActionChains(browser).move_to_element_with_offset(overlay, *start).click_and_hold() \
        .move_by_offset(round((right - left) * scale / 2), 0).move_by_offset(round((right - left) * scale / 2), 0) \
        .release().perform()
    page.wait.until(lambda d: page.state("writes.length") == 0 and page.saved(0)[0]["source"] == "brush")
    assert int(_mask(page.saved(0)[0]["polygon"], (256, 512)).sum()) < area
    page.keys("x", Keys.CONTROL, "z")
    page.idle()
    assert page.saved(0)[0]["source"] == "clicks"

    # attributes, exclude, the track list
    browser.find_element(page.by.CSS_SELECTOR, f"#object-list li[data-id='{made['id']}'] .name").click()
    browser.find_element(page.by.ID, "attribute-occluded").click()
    page.idle()
    browser.find_element(page.by.ID, "excluded").click()
    page.idle()
    saved = page.saved(0)[0]
    assert saved["attributes"]["occluded"] and saved["excluded"] and not saved["attributes"]["crowd"]
    entry = f"#track-list li[data-track='{saved['track_id']}']"
    page.wait.until(lambda d: d.find_elements(page.by.CSS_SELECTOR, entry))
    track = browser.find_element(page.by.CSS_SELECTOR, entry)
    assert track.text == f"#{saved['track_id']} {saved['class']}: frames 1"
