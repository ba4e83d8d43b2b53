"""Loopback-only network isolation for every process that starts rclpy in tests, demos and benchmarks.

DDS discovery multicasts on every interface that is up. To guarantee that nothing the project runs
ever sends a packet beyond this machine, the project's runners (Makefile targets, the pytest harness)
move their process into a fresh Linux network namespace whose only interface is loopback, bring `lo`
up, and pick a ROS_DOMAIN_ID of their own, before any rclpy is started. Child processes inherit the
namespace.

The namespace also gets a mount namespace with a private, empty tmpfs on /dev/shm. Fast DDS's shared-memory
transport names its segments and ports in /dev/shm by domain id and port number, and /dev/shm is not
separated by a network namespace: two isolated runs that happened to use the same ROS_DOMAIN_ID shared
segments (and participants of one run received discovery traffic of the other, whose network they cannot
reach). With a private /dev/shm nothing of one run is visible to another, whatever domain ids they use, and
segments left by killed processes vanish with the namespace.

This module imports neither rclpy nor numpy, so it can run before anything else. It needs no
iproute2 or util-linux binaries: `unshare(2)` and `mount(2)` are called through ctypes and `lo` is
brought up with the SIOCSIFFLAGS ioctl. As root network and mount namespaces are created; other users
get a user namespace as well (unprivileged user namespaces must be enabled, as they are on Debian >= 11).

Command line (also installed as `instseg-isolated`):

    python -m instseg_ros.isolation [--domain-id N] -- COMMAND [ARG...]

runs COMMAND inside a new loopback-only namespace with ROS_DOMAIN_ID, RMW_IMPLEMENTATION and
FASTDDS_BUILTIN_TRANSPORTS set (see `ros_environment` and LOCAL_TRANSPORTS).
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import os
import random
import socket
import struct
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

from instseg_core.base.command_exit import EXIT_BAD_INPUT, describe

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_NOSUID, MS_NODEV = 0x2, 0x4
SHM_DIR = "/dev/shm"
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFF_LOOPBACK = 0x8

# Fast DDS transports of every isolated run (all its processes share one host): UDPv4 for discovery and
# shared memory for data, with 8 MB buffers. Fast DDS's default 512 kB shared-memory buffers drop big samples
# (2 MP rgb8 frames at 30 Hz, best effort: 134 of 150 lost); with 8 MB none of 150 is lost. LARGE_DATA, used
# before, carries them too, but its TCP channel negotiation races when two participants start together: a
# pair of fresh processes then stays deaf in one direction for good (3 of ~100 start-ups under CPU load,
# 8 of ~90 with tcp_negotiation_timeout=500; none of 300 without TCP). See docs/testing.md and docs/ros.md.
LOCAL_TRANSPORTS = "DEFAULT?sockets_size=8MB"
# Environment every isolated ROS process gets. ROS_AUTOMATIC_DISCOVERY_RANGE is left unset on purpose (the
# namespace is loopback-only anyway, and LOCALHOST defeats LARGE_DATA for a caller who chooses it).
ROS_ENV_DEFAULTS: Mapping[str, str] = {
    "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
    "FASTDDS_BUILTIN_TRANSPORTS": LOCAL_TRANSPORTS,
}
# Valid DDS domain ids with the default port mapping on Linux are 0..101; 0 is everyone's default.
DOMAIN_ID_RANGE = (1, 101)
# Set by enter_isolated_namespace() so that a process can tell it created the namespace itself.
ISOLATED_MARKER = "INSTSEG_NETNS_ISOLATED"


class IsolationError(RuntimeError):
    """The loopback-only network namespace could not be created or verified."""


def _interface_flags(sock: socket.socket, name: str) -> int:
    request = struct.pack("16sH14x", name.encode()[:15], 0)
    reply = fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, request)
    return struct.unpack("16sH14x", reply)[1]


def interfaces_up() -> dict[str, bool]:
    """Map each network interface of this process's namespace to whether it is up.

    Uses `socket.if_nameindex()` (netlink), which sees the current namespace; /sys/class/net would show
    the namespace that mounted sysfs instead.
    """
    result: dict[str, bool] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            result[name] = bool(_interface_flags(sock, name) & IFF_UP)
    return result


def is_loopback_only() -> bool:
    """True when the only interfaces that are up in this namespace are loopback interfaces."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            flags = _interface_flags(sock, name)
            if flags & IFF_UP and not flags & IFF_LOOPBACK:
                return False
    return True


def _bring_loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = _interface_flags(sock, "lo")
        request = struct.pack("16sH14x", b"lo", flags | IFF_UP)
        fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, request)


def _write(path: str, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)


def enter_isolated_namespace(private_shm: bool = True) -> None:
    """Move the calling process into a new network namespace with only `lo`, and bring `lo` up.

    Must run before any thread that uses the network starts (as non-root also before any thread at
    all: the kernel refuses CLONE_NEWUSER in a multithreaded process). Raises IsolationError with the
    reason when the kernel refuses, and also when the result is not loopback-only.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.geteuid(), os.getegid()
    flags = CLONE_NEWNET | (CLONE_NEWNS if private_shm else 0) | (0 if uid == 0 else CLONE_NEWUSER)
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        hint = (
            "unprivileged user namespaces may be disabled (sysctl kernel.unprivileged_userns_clone) "
            "or the process is multithreaded; run as root or enable them"
            if uid != 0
            else "a container may forbid unshare(CLONE_NEWNET); run with CAP_SYS_ADMIN"
        )
        raise IsolationError(f"unshare(network namespace) failed: {os.strerror(err)}; {hint}")
    if uid != 0:
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"0 {uid} 1")
        _write("/proc/self/gid_map", f"0 {gid} 1")
    if private_shm:
        _private_shared_memory(libc)
    _bring_loopback_up()
    if not is_loopback_only():
        raise IsolationError(f"new namespace is not loopback-only: {interfaces_up()}")
    os.environ[ISOLATED_MARKER] = "1"


def _private_shared_memory(libc: ctypes.CDLL) -> None:
    """In the new mount namespace: stop mount events propagating back to the host, then mount an empty tmpfs
    on /dev/shm (see the module docstring)."""
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        err = ctypes.get_errno()
        raise IsolationError(f"making the mounts of the new namespace private failed: {os.strerror(err)}")
    if libc.mount(b"tmpfs", SHM_DIR.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=1777") != 0:
        err = ctypes.get_errno()
        raise IsolationError(f"mounting a private tmpfs on {SHM_DIR} failed: {os.strerror(err)}")


def ros_environment(domain_id: int | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a ROS process in the isolated namespace.

    `base` (default os.environ) plus ROS_ENV_DEFAULTS for keys not already set, and ROS_DOMAIN_ID:
    `domain_id` when given, else the base's ROS_DOMAIN_ID, else a random id in DOMAIN_ID_RANGE.
    """
    env = dict(os.environ if base is None else base)
    for key, value in ROS_ENV_DEFAULTS.items():
        env.setdefault(key, value)
    if domain_id is None:
        domain_id = int(env.get("ROS_DOMAIN_ID") or random.randint(*DOMAIN_ID_RANGE))
    if not DOMAIN_ID_RANGE[0] <= domain_id <= DOMAIN_ID_RANGE[1]:
        raise IsolationError(f"ROS_DOMAIN_ID {domain_id} outside {DOMAIN_ID_RANGE}")
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env.pop("ROS_AUTOMATIC_DISCOVERY_RANGE", None)
    env.pop("ROS_STATIC_PEERS", None)
    return env


def ensure_isolated(domain_id: int | None = None, private_shm: bool = True) -> None:
    """Make sure this process runs loopback-only, entering a new namespace if needed; set the ROS env.

    A process already in a loopback-only namespace stays there (a parent runner isolated it).
    """
    if not is_loopback_only():
        enter_isolated_namespace(private_shm)
    os.environ.update(ros_environment(domain_id))


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: run a command inside a new loopback-only network namespace with the ROS environment set."""
    parser = argparse.ArgumentParser(
        prog="instseg-isolated",
        description="Run COMMAND in a new loopback-only network namespace with its own ROS_DOMAIN_ID.",
    )
    parser.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: random)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no COMMAND given")
    try:
        enter_isolated_namespace()
        env = ros_environment(args.domain_id)
    except (IsolationError, OSError) as exc:
        _fail(f"instseg-isolated: {exc}")
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        _fail(f"instseg-isolated: cannot run {command[0]!r}: {describe(exc)}")


def _fail(line: str) -> NoReturn:
    """One line on stderr and exit status 2 (instseg_core.base.command_exit: the namespace or the command is a
    problem of the machine or the input, not of this runner)."""
    print(line, file=sys.stderr, flush=True)
    sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    main()
