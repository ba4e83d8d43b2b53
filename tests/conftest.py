"""Test harness: network isolation for everything, and real ROS 2 processes for the ROS tests.

Before any test is collected, `pytest_configure` moves the pytest process into a new network
namespace whose only interface is loopback (instseg_ros.isolation). Every process a test starts
inherits it, so however pytest is invoked (`make test`, `.venv/bin/python -m pytest tests/x.py`),
no DDS packet can reach a real interface. If isolation is impossible, the session stops with the
reason instead of running anything.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from instseg_ros import fastdds_shm, isolation

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
PEERS = TESTS_DIR / "ros_peers.py"


def pytest_configure(config: pytest.Config) -> None:
    try:
        isolation.ensure_isolated()
    except (isolation.IsolationError, OSError) as exc:
        pytest.exit(f"cannot isolate the tests from the network, refusing to run: {exc}", returncode=3)


_next_domain_id = random.randint(*isolation.DOMAIN_ID_RANGE)


def allocate_domain_id() -> int:
    """A ROS_DOMAIN_ID not used by an earlier test of this session (cycling through the valid range)."""
    global _next_domain_id
    low, high = isolation.DOMAIN_ID_RANGE
    _next_domain_id = low + (_next_domain_id - low + 1) % (high - low + 1)
    return _next_domain_id


SYNTHETIC_SIZE = (512, 256)


@pytest.fixture(scope="session")
def synthetic_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic Cityscapes tree (train 3, val 3 images at 512x256), made once per session."""
    from instseg_core.data.synth_cli import generate_images

    root = tmp_path_factory.mktemp("synthetic_cityscapes")
    for split, count in (("train", 3), ("val", 3)):
        generate_images(root, split, count, seed=7, width=SYNTHETIC_SIZE[0], height=SYNTHETIC_SIZE[1],
                        progress=False)
    return root


@dataclass
class PeerResult:
    """What one peer process printed: its JSON result line (last line starting with '{'), and logs."""

    args: Sequence[str]
    returncode: int
    result: dict
    stdout: str
    stderr: str


@dataclass
class RosProcesses:
    """Starts real ROS 2 processes for one test, all on the test's own ROS_DOMAIN_ID.

    Every process is killed at the end of the test, whatever happened.
    """

    domain_id: int
    env: dict[str, str]
    running: list[subprocess.Popen] = field(default_factory=list)

    def start(self, *args: str, script: Path = PEERS) -> subprocess.Popen:
        """Start `python script args...` (default: tests/ros_peers.py) in the test's ROS environment."""
        proc = subprocess.Popen(
            [sys.executable, str(script), *args],
            env=self.env,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.running.append(proc)
        return proc

    def wait(self, proc: subprocess.Popen, timeout: float) -> PeerResult:
        """Wait for a peer to exit and parse its JSON result; fail the test with its output if it hangs."""
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            pytest.fail(
                f"peer {proc.args[2:]} did not finish in {timeout} s\nstdout:\n{stdout}\nstderr:\n{stderr}"
            )
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            pytest.fail(
                f"peer {proc.args[2:]} exited {proc.returncode}\nstdout:\n{stdout}\nstderr:\n{stderr}"
            )
        return PeerResult(proc.args[2:], proc.returncode, json.loads(lines[-1]), stdout, stderr)

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Check `condition` every 20 ms until it holds; fail the test naming `what` after `timeout` s."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"{what} did not appear within {timeout} s")
            time.sleep(0.02)

    def signal_and_wait(self, proc: subprocess.Popen, sig: int, limit: float = 10.0) -> tuple[float, str]:
        """Send `sig` to a node and wait for it to exit: (seconds from the signal to the exit, the rest of its
        stderr). Fails the test when it is still running `limit` s later."""
        proc.send_signal(sig)
        sent = time.monotonic()
        try:
            _, rest = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, rest = proc.communicate()
            pytest.fail(f"{proc.args[1:3]} still running {limit} s after signal {sig}:\n{rest[-3000:]}")
        return time.monotonic() - sent, rest

    def stop_all(self) -> None:
        for proc in self.running:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 5
        for proc in self.running:
            try:
                proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


@pytest.fixture
def ros_processes() -> Iterator[RosProcesses]:
    """Real ROS 2 peer processes on a ROS_DOMAIN_ID of this test's own, inside the isolated namespace.

    After the test its processes are stopped (killed if they do not stop), and the shared-memory files of
    dead participants are removed (instseg_ros.fastdds_shm): killed ones leave theirs (~17 MB each)."""
    domain_id = allocate_domain_id()
    env = isolation.ros_environment(domain_id)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    group = RosProcesses(domain_id, env)
    try:
        yield group
    finally:
        group.stop_all()
        if os.environ.get(isolation.ISOLATED_MARKER):  # our private /dev/shm, never the host's
            fastdds_shm.remove_dead_files()
