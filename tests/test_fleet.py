"""instseg-fleet: pre-labelling bags on a real local Ray (2 CPUs) with the shipped model, real rosbag2 files.

Three small bags, one corrupt: two studio sessions written and opened by the studio's own code, one bag reported;
a second run does nothing; a worker killed mid-bag is retried by Ray and one that keeps dying fails only its bag;
Ray listens on loopback only; `mine:K` returns K distinct frames, never two near-identical ones."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from instseg_core.base.command_exit import CommandExit
from instseg_core.data.bags import write_image_bag
from instseg_core.data.synth_cli import sequence_frames
from instseg_fleet import mining
from instseg_fleet.cli import main
from instseg_fleet.work import SUMMARY_FILE, FrameWorker, Settings, choose, chunks, plan_bags

SIZE = (256, 128)  # frames and network input (width, height): small, so that the tests stay fast
FRAMES = 6


def scene(seed: int, frames: int, speed: float = 6.0) -> list[np.ndarray]:
    return [f.rgb for _, f in sequence_frames(seed, "val", 0, frames, width=SIZE[0], height=SIZE[1], fps=10.0,
                                              ego_speed=speed)]


@pytest.fixture(scope="module")
def bags(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bags/drive_a, drive_b (6 frames each), drive_c (3 frames), broken (an MCAP zeroed but for its ends: it
    cannot be opened) and damaged (an MCAP whose index is whole but whose frames cannot be read)."""
    root = tmp_path_factory.mktemp("fleet") / "bags"
    write_image_bag(root / "drive_a", scene(3, FRAMES), rate_hz=10.0)
    write_image_bag(root / "drive_b", scene(5, FRAMES), rate_hz=10.0)
    write_image_bag(root / "drive_c", scene(7, 3), rate_hz=10.0)
    write_image_bag(root / "broken", scene(9, 3), rate_hz=10.0)
    mcap = next((root / "broken").glob("*.mcap"))
    data = bytearray(mcap.read_bytes())
    data[100:-50] = bytes(len(data) - 150)
    mcap.write_bytes(bytes(data))
    write_image_bag(root / "damaged", scene(13, 3), rate_hz=10.0)  # its index is whole, its frames are not
    mcap = next((root / "damaged").glob("*.mcap"))
    data = bytearray(mcap.read_bytes())
    data[300:len(data) // 2] = b"\x55" * (len(data) // 2 - 300)
    mcap.write_bytes(bytes(data))
    return root


def settings(frames: str, **kwargs: object) -> Settings:
    return Settings(frames=frames, input_size=SIZE, **kwargs)  # type: ignore[arg-type]


def expected_proposals(bag: Path, indices: list[int], frames: str) -> dict[int, list[dict]]:
    """What the model proposes on `indices` of `bag`, computed here in a plain loop (no Ray)."""
    worker = FrameWorker(settings(frames))
    try:
        return {r.index: r.proposals for r in worker.segment(str(bag), None, indices)}
    finally:
        worker.close()


def open_in_studio(bag: Path, out: Path) -> object:
    """The Studio `instseg-studio BAG --out OUT --segmenter inprocess` builds (the command's own code)."""
    from instseg_studio.cli import build_studio

    args = argparse.Namespace(bag=str(bag), topic=None, out=str(out), labels=None, proposals=None, threads=1,
                              segmenter="inprocess", service="", service_wait=0.0, model_file=None, refine="none",
                              flip="none")
    return build_studio(args)


def files_of(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def first_run(bags: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`instseg-fleet prelabel 'bags/drive_[ab]' bags/broken bags/damaged --frames mine:2` on a local Ray with 2
    CPUs."""
    out = tmp_path_factory.mktemp("fleet_out") / "out"
    with pytest.raises(CommandExit) as exited:
        main(["prelabel", str(bags / "drive_[ab]"), str(bags / "broken"), str(bags / "damaged"), "--out", str(out),
              "--frames", "mine:2",
              "--input-size", "256x128", "--num-cpus", "2", "--no-progress"])
    return out, str(exited.value) + f" (status {exited.value.code})"


def test_prelabel_writes_sessions_the_studio_opens_and_reports_the_corrupt_bags(first_run: tuple[Path, str],
                                                                                 bags: Path) -> None:
    from pycocotools.coco import COCO

    from instseg_studio.app import create_app

    out, ending = first_run
    assert ending.endswith("(status 2)") and "2 of 4 bags failed" in ending, ending
    assert "broken: cannot read bag" in ending  # found while planning, before any worker
    # found by a worker on Ray: the bag's chunk CRCs (instseg_core.data.bags writes them) no longer match
    assert "damaged: no frame of" in ending and "Chunk checksum mismatch" in ending
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["drive_a", "drive_b",
                                                                                  "fleet_summary.md"]
    assert not list(out.glob(".*partial*")), "a staging folder was left behind"
    for name in ("drive_a", "drive_b"):
        studio = open_in_studio(bags / name, out / name)
        session = studio.session  # type: ignore[attr-defined]
        chosen = session.proposed_frames()
        assert len(chosen) == 2 and len(set(chosen)) == 2
        assert all(session.mining(k)["reason"] for k in chosen)
        client = TestClient(create_app(studio, {"testserver"}))  # type: ignore[arg-type]
        info = client.get("/api/info").json()
        assert info["frames"] == FRAMES and info["proposals"] is True
        assert client.get("/api/timeline").json()["labelled"] == chosen  # marked on the timeline, N visits them
        expected = expected_proposals(bags / name, chosen, "mine:2")
        coco = COCO(str(out / name / "predictions_coco.json"))
        assert len(coco.getAnnIds()) == sum(len(v) for v in expected.values()) > 0
        for index in chosen:
            served = client.post(f"/api/frames/{index}/proposals", json={}).json()["proposals"]
            assert [(p["class"], p["polygon"]) for p in served] == [
                (p["class"], [[float(x), float(y)] for x, y in p["polygon"]]) for p in expected[index]]
        summary = json.loads((out / name / SUMMARY_FILE).read_text())
        assert summary["outcome"]["state"] == "done" and summary["outcome"]["frames"] == 2
    table = (out / "fleet_summary.md").read_text()
    assert "| broken " in table and "cannot read bag" in table


def test_a_second_run_does_nothing(first_run: tuple[Path, str], bags: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = first_run
    before = {name: files_of(out / name) for name in ("drive_a", "drive_b")}
    capsys.readouterr()
    main(["prelabel", str(bags / "drive_[ab]"), "--out", str(out), "--frames", "mine:2", "--input-size", "256x128",
          "--num-cpus", "2", "--no-progress"])  # returns: exit status 0
    captured = capsys.readouterr()
    assert "nothing to do: 2 bags done before" in captured.err
    assert "| 0         | 2       | 0      |" in captured.out  # bags done / skipped / failed
    assert {name: files_of(out / name) for name in ("drive_a", "drive_b")} == before


def _listening_addresses() -> list[str]:
    """Local addresses of the TCP sockets listening in this network namespace (hex, as /proc/net shows them)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                found.append(fields[1].split(":")[0])
    return found


LOOPBACK_HEX = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


def test_a_killed_worker_is_retried_and_one_that_keeps_dying_fails_only_its_bag(
        bags: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from instseg_fleet.cluster import RayOptions, run_on_ray, start_ray, stop_ray

    monkeypatch.setenv("INSTSEG_FLEET_FAULTS", "drive_a:1,drive_c:always")
    monkeypatch.setenv("INSTSEG_FLEET_FAULT_DIR", str(tmp_path))
    chosen = settings("every:2", chunk=2)
    out = tmp_path / "out"
    out.mkdir()
    plans = plan_bags([str(bags / "drive_?")], out, chosen)
    assert [p.state for p in plans] == ["todo"] * 3
    options = RayOptions(num_cpus=2, max_retries=1)
    ray = start_ray(options)
    try:
        listening = _listening_addresses()
        assert listening and set(listening) <= LOOPBACK_HEX, listening
        outcomes, run = run_on_ray(ray, plans, chosen, options)
    finally:
        stop_ray(options)
    assert run["workers"] == 2 and run["threads_per_worker"] == 1
    by_name = {o.name: o for o in outcomes}
    assert by_name["drive_a"].state == "done" and by_name["drive_a"].retries == 1
    assert sorted(p.name for p in tmp_path.glob("drive_a.kill.*")) == ["drive_a.kill.0"]  # killed exactly once
    assert by_name["drive_b"].state == "done" and by_name["drive_b"].retries == 0
    assert by_name["drive_c"].state == "failed" and by_name["drive_c"].failure_kind == "machine"
    assert "worker was lost" in by_name["drive_c"].reason
    assert sorted(p.name for p in out.iterdir()) == ["drive_a", "drive_b"]
    session = json.loads((out / "drive_a" / "studio_session.json").read_text())
    assert sorted(map(int, session["frames"])) == [0, 2, 4]
    expected = expected_proposals(bags / "drive_a", [0, 2, 4], "every:2")
    for index, frame in session["frames"].items():
        assert [p["polygon"] for p in frame["proposals"]] == [
            [[float(x), float(y)] for x, y in p["polygon"]] for p in expected[int(index)]]


def test_the_same_command_joins_a_running_cluster(bags: Path, tmp_path: Path) -> None:
    """`ray start --head` (on 127.0.0.1, as docs/fleet.md starts a head node) and `--address HOST:PORT`: the
    command uses the cluster's workers and leaves the cluster running."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                             "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started, printed = threading.Event(), []

    def watch() -> None:  # the head node prints "Ray runtime started" once it accepts drivers
        assert head.stdout is not None
        for line in head.stdout:
            printed.append(line)
            if "Ray runtime started" in line:
                started.set()

    threading.Thread(target=watch, daemon=True).start()
    try:
        if not started.wait(120):
            pytest.fail(f"ray start did not start a head node within 120 s:\n{''.join(printed)[-3000:]}")
        main(["prelabel", str(bags / "drive_c"), "--out", str(tmp_path / "out"), "--frames", "every:2",
              "--input-size", "256x128", "--address", f"127.0.0.1:{port}", "--no-progress"])
        session = json.loads((tmp_path / "out" / "drive_c" / "studio_session.json").read_text())
        assert sorted(map(int, session["frames"])) == [0, 2]
        assert head.poll() is None, "the command stopped the cluster it joined"
    finally:
        head.terminate()  # `ray start --block` stops the node's processes when it ends
        head.wait(timeout=60)  # its output is drained by watch()
        shutil.rmtree(temp, ignore_errors=True)


def test_mine_returns_k_distinct_frames_and_never_two_near_identical(tmp_path: Path) -> None:
    """A bag of 4 scenes, each held for 5 frames (a stationary vehicle: sensor noise only), the first one coming
    back at the end: mine:3 returns 3 frames of 3 different scenes; mine:6 only the 4 distinct ones."""
    rng = np.random.default_rng(0)
    scenes = [scene(seed, 1)[0] for seed in (11, 12, 13, 14)]
    order = [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5 + [0] * 3
    frames = [np.clip(scenes[s] + rng.normal(0, 2, scenes[s].shape), 0, 255).astype(np.uint8) for s in order]
    write_image_bag(tmp_path / "waiting", frames, rate_hz=10.0)
    for count, expected in ((3, 3), (6, 4)):
        config = settings(f"mine:{count}")
        worker = FrameWorker(config)
        try:
            scan = worker.scan(str(tmp_path / "waiting"), None)
            results = {r.index: r for piece in chunks(scan.candidates, 4)
                       for r in worker.segment(str(tmp_path / "waiting"), None, piece)}
        finally:
            worker.close()
        assert scan.kept == 5 and scan.scanned == len(order)  # 4 scenes + the first one again
        chosen = [c.index for c in choose(scan, results, config)]
        assert len(chosen) == len(set(chosen)) == expected
        assert len({order[k] for k in chosen}) == expected, [order[k] for k in chosen]
        embeddings = [mining.embedding(frames[k]) for k in chosen]
        closest = min(float(mining.distance(a, b)) for i, a in enumerate(embeddings) for b in embeddings[i + 1:])
        assert closest >= config.duplicate_threshold


def test_disagreement_and_margin_measure_what_they_say() -> None:
    ids = np.zeros((20, 20), np.uint16)
    ids[2:8, 2:8], ids[10:18, 10:18] = 1, 2
    shifted = np.roll(ids, 1, axis=1)
    assert mining.instance_disagreement(ids, ["car", "person"], shifted, ["car", "person"]) == 0.0
    assert mining.instance_disagreement(ids, ["car", "person"], shifted, ["car", "car"]) == 0.5
    assert mining.instance_disagreement(ids, ["car", "person"], np.zeros_like(ids), []) == 1.0
    assert mining.margin_uncertainty([0.3], 0.3) == 1.0 and mining.margin_uncertainty([1.0], 0.3) == 0.0
    assert mining.FrameSpec.parse("every:5") == mining.FrameSpec("every", 5)
    with pytest.raises(mining.FrameSpecError):
        mining.FrameSpec.parse("mine:0")


def test_dry_run_lists_the_work_and_writes_nothing(bags: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    main(["prelabel", str(bags / "*"), "--out", str(tmp_path / "out"), "--frames", "every:2", "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("| broken ") and "fail: cannot read bag" in line for line in lines)
    assert any(line.startswith("| drive_a ") and "3 frames to segment" in line for line in lines)
    assert not (tmp_path / "out").exists()


def test_an_operator_edit_keeps_the_stored_proposals(first_run: tuple[Path, str], bags: Path, tmp_path: Path) -> None:
    """The studio's session keeps a frame's proposals and reason when the operator saves its objects, and an
    accepted proposal is not offered again."""
    from instseg_studio.assist import StoredProposals, proposals

    out, _ = first_run
    shutil.copytree(out / "drive_b", tmp_path / "drive_b")  # the first run's outputs stay as they are
    studio = open_in_studio(bags / "drive_b", tmp_path / "drive_b")
    session = studio.session  # type: ignore[attr-defined]
    index = next(k for k in session.proposed_frames() if session.proposals(k))
    stored, reason = session.proposals(index), session.mining(index)["reason"]
    accepted = {"id": "p1", "class": stored[0]["class"], "points": stored[0]["points"],
                "polygon": stored[0]["polygon"], "source": "proposal"}
    session.set_objects(index, 0, [accepted], session.version)
    reopened = open_in_studio(bags / "drive_b", tmp_path / "drive_b").session  # type: ignore[attr-defined]
    assert reopened.proposals(index) == stored and reopened.mining(index)["reason"] == reason
    assert reopened.objects(index)[0]["source"] == "proposal"
    offered, _ = proposals(StoredProposals(reopened), studio.frames.frame(index),  # type: ignore[attr-defined]
                           reopened.classes)
    assert offered == stored[1:]
