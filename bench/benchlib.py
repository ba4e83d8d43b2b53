"""Timing and table printing shared by the benchmarks in bench/ (median and p95 of repeated runs)."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Timing:
    """Wall-clock samples of one operation, in milliseconds."""

    name: str
    samples_ms: np.ndarray

    @property
    def median(self) -> float:
        return float(np.median(self.samples_ms))

    @property
    def p95(self) -> float:
        return float(np.percentile(self.samples_ms, 95))


def time_call(name: str, fn: Callable[[], object], repeats: int = 50, warmup: int = 3) -> Timing:
    """Time `fn()` `repeats` times after `warmup` untimed calls, with the garbage collector paused."""
    for _ in range(warmup):
        fn()
    samples = np.empty(repeats)
    gc.disable()
    try:
        for i in range(repeats):
            start = time.perf_counter()
            fn()
            samples[i] = (time.perf_counter() - start) * 1e3
    finally:
        gc.enable()
    return Timing(name, samples)


def summarize(values_ms: Sequence[float]) -> tuple[float, float]:
    """(median, p95) of a list of milliseconds; (nan, nan) when empty."""
    if not len(values_ms):
        return float("nan"), float("nan")
    array = np.asarray(values_ms, dtype=float)
    return float(np.median(array)), float(np.percentile(array, 95))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str = "") -> None:
    """Print a GitHub-markdown table (so it pastes into the README as it is)."""
    cells = [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    if title:
        print(f"\n{title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
