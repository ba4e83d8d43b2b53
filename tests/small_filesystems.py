"""Run a command on a real small (or read-only) file system: a tmpfs of a few MB, mounted in a mount namespace of
its own, so the host's mounts are never touched and the mount vanishes with the command.

    python tests/small_filesystems.py [--copy-to DIR] MOUNT_POINT SIZE_BYTES -- COMMAND [ARG ...]

As root (the tests' case: CI and the development machines run them as root), this process calls `unshare(2)` with
CLONE_NEWNS (what `unshare -m` does), makes its mounts private, mounts the tmpfs on MOUNT_POINT (created) and runs
COMMAND there, passing SIGINT and SIGTERM on (COMMAND is killed if this process dies first). SIGUSR1 remounts the
tmpfs read-only and SIGUSR2 read-write again (a disk remounted after errors, and repaired). When COMMAND ends, what
the tmpfs holds is copied to --copy-to (for the test to inspect), and this process exits with COMMAND's status. The
network namespace is inherited: inside the tests that is the loopback-only one of tests/conftest.py.

`small_filesystem_arguments(...)` builds the arguments of this script (SCRIPT) up to the COMMAND, for a test.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

CLONE_NEWNS = 0x00020000
PR_SET_PDEATHSIG = 1
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_REC, MS_PRIVATE = 0x1, 0x2, 0x4, 0x20, 0x4000, 1 << 18
SCRIPT = Path(__file__).resolve()


def small_filesystem_arguments(mount_point: Path, size_bytes: int, copy_to: Path | None = None) -> list[str]:
    """The arguments of `python SCRIPT ... COMMAND` up to COMMAND: a `size_bytes` tmpfs at `mount_point`."""
    return [*(["--copy-to", str(copy_to)] if copy_to else []), str(mount_point), str(size_bytes), "--"]


def is_read_only(pid: int, mount_point: Path) -> bool:
    """Whether the mount on `mount_point`, as process `pid` (this script) sees it, is read-only."""
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(mount_point):
            return "ro" in fields[5].split(",")
    raise LookupError(f"nothing is mounted on {mount_point} for process {pid}")


def _mount(libc: ctypes.CDLL, source: bytes, target: Path, kind: bytes | None, flags: int, data: bytes | None,
           what: str) -> bool:
    """mount(2); False, with the reason on stderr, when it fails."""
    if libc.mount(source, str(target).encode(), kind, flags, data) != 0:
        print(f"small_filesystems: {what} failed: {os.strerror(ctypes.get_errno())}", file=sys.stderr, flush=True)
        return False
    return True


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mount_point", type=Path)
    parser.add_argument("size_bytes", type=int)
    parser.add_argument("--copy-to", type=Path, default=None)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no COMMAND given")
    if os.geteuid() != 0:
        sys.exit("small_filesystems: mounting a tmpfs in a mount namespace of its own needs root")
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        sys.exit(f"small_filesystems: unshare(CLONE_NEWNS) failed: {os.strerror(ctypes.get_errno())}")
    args.mount_point.mkdir(parents=True, exist_ok=True)
    flags = MS_NOSUID | MS_NODEV
    if not (_mount(libc, b"none", Path("/"), None, MS_REC | MS_PRIVATE, None, "making the mounts private")
            and _mount(libc, b"tmpfs", args.mount_point, b"tmpfs", flags, f"size={args.size_bytes},mode=0777".encode(),
                       f"mounting a {args.size_bytes}-byte tmpfs on {args.mount_point}")):
        sys.exit(1)
    # the command dies with this process (a test that SIGKILLs it must not leave the command holding its pipes)
    child = subprocess.Popen(command, preexec_fn=lambda: libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL))

    def remount(read_only: bool) -> None:
        _mount(libc, b"tmpfs", args.mount_point, b"tmpfs", MS_REMOUNT | flags | (MS_RDONLY if read_only else 0),
               None, f"remounting {args.mount_point} {'read-only' if read_only else 'read-write'}")

    signal.signal(signal.SIGUSR1, lambda *_: remount(True))
    signal.signal(signal.SIGUSR2, lambda *_: remount(False))
    for forwarded in (signal.SIGINT, signal.SIGTERM):
        signal.signal(forwarded, lambda number, _: child.send_signal(number))
    status = child.wait()
    if args.copy_to is not None:
        shutil.copytree(args.mount_point, args.copy_to, dirs_exist_ok=True)
    sys.exit(status if status >= 0 else 128 - status)


if __name__ == "__main__":
    main()
