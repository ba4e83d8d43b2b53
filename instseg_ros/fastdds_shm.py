"""Fast DDS shared-memory files left by dead processes: find them and remove them.

Fast DDS's shared-memory transport keeps, per participant, a segment `fastdds_<16 hex>` (its sample buffers)
and a port `fastdds_port<N>` per listening port in /dev/shm, each with a lock file `<name>_el` that its owner
holds (flock) while alive, and a named semaphore `sem.fastdds_port<N>_mutex` per port. A participant that
exits cleanly removes its files; one killed with SIGKILL (or OOM, or a crash) leaves them, and they take
memory: a segment is allocated in full (about 17 MB per participant with the `sockets_size=8MB` the isolated
runner sets, see instseg_ros.isolation), so a test suite or a crash-looping node fills /dev/shm.

`remove_dead_files` removes the files whose lock nobody holds, as the `fastdds shm clean` command of Fast
DDS's CLI does (that CLI is not on PyPI). It is safe while other participants run (their locks are held), but
not while one is starting: a participant between creating its segment and locking it looks dead. The test
harness calls it between tests, and the DDS start-up benchmark between rounds.

    python -m instseg_ros.fastdds_shm [--directory /dev/shm]   # removes, and lists what it removed
"""

from __future__ import annotations

import argparse
import fcntl
import os
from pathlib import Path

SHM_DIR = Path("/dev/shm")
LOCK_SUFFIXES = ("_el", "_sl")


def _lock_is_free(lock_file: Path) -> bool:
    """True when no process holds a flock on `lock_file` (its owner is gone)."""
    try:
        descriptor = os.open(lock_file, os.O_RDONLY)
    except OSError:
        return False  # vanished meanwhile, or not ours to read: leave it alone
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(descriptor)  # closing also releases the probe's own lock
    return True


def dead_files(directory: Path = SHM_DIR) -> list[Path]:
    """The Fast DDS files in `directory` whose owner is gone: for each `<name>` whose lock files (`<name>_el`,
    `<name>_sl`) exist and are all free, those lock files, `<name>` and `sem.<name>_mutex` (those that exist),
    sorted. A name with one lock still held (a port with a live reader) is kept whole."""
    names = {lock.name[:-3] for lock in directory.glob("fastdds_*") if lock.name.endswith(LOCK_SUFFIXES)}
    found: list[Path] = []
    for name in names:
        locks = [path for path in (directory / f"{name}{suffix}" for suffix in LOCK_SUFFIXES) if path.exists()]
        if locks and all(_lock_is_free(lock) for lock in locks):
            found += [path for path in (*locks, directory / name, directory / f"sem.{name}_mutex") if path.exists()]
    return sorted(found)


def remove_dead_files(directory: Path = SHM_DIR) -> list[Path]:
    """Remove dead_files(directory); returns what was removed (a file another process removed first is
    skipped)."""
    removed = []
    for path in dead_files(directory):
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m instseg_ros.fastdds_shm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--directory", type=Path, default=SHM_DIR)
    args = parser.parse_args(argv)
    removed = remove_dead_files(args.directory)
    for path in removed:
        print(path)
    print(f"removed {len(removed)} file(s) of dead Fast DDS participants from {args.directory}")


if __name__ == "__main__":
    main()
