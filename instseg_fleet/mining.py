"""Which frames of a bag are worth an operator's time: near-duplicates out, diverse and uncertain frames in.

`--frames every:N` takes frames 0, N, 2N, ...; `--frames mine:K` chooses at most K frames per bag in three steps:

1. **Near-duplicates out** (`scan_embeddings`, `drop_near_duplicates`). Every frame (or every `scan_stride`-th)
   is reduced to a cheap image embedding: the frame resized to 32×16 pixels (area averaging), RGB in [0, 1],
   flattened (1536 numbers). The distance of two frames is the RMS difference of their embeddings (0 = the same
   picture, 1 = black against white). Walking the bag in time order, a frame closer than `duplicate_threshold`
   (default 0.03) to the last frame kept is a near-duplicate of it: a vehicle waiting at a light yields one frame,
   which "stands for" the ones dropped after it.
2. **A diverse candidate pool** (`farthest_points`): of the frames kept, `pool` × K (default 2 K) are chosen by
   farthest-point sampling on the embeddings (each next candidate is the frame farthest from all candidates so
   far), so the pool covers the bag's different scenes rather than its longest one.
3. **Uncertainty and diversity** (`select_frames`). The candidates are segmented (their proposals are needed
   anyway) and each gets an uncertainty in [0, 1], the mean of the signals asked for:
   - `margin` (always): how close its instances' scores lie to the proposal threshold t: the mean over the
     instances the model reports (score >= 0.1) of 1 - |score - t| / max(t, 1 - t); 0 without instances.
     Instances near the threshold are the ones an operator has to decide on;
   - `temporal` (`--temporal`): the disagreement between the frame's instances and the next frame's (instances
     of the same class matched at mask IoU > 0.5; disagreement = 1 - 2 matches / (n1 + n2)): objects that flicker
     between consecutive frames are ones the model is unsure of;
   - `models` (`--second-model MODEL`): the same disagreement between two models on the frame.

   Then K frames are chosen greedily: each step takes the candidate with the highest
   `uncertainty_weight` × uncertainty + `diversity_weight` × (its distance to the nearest frame already chosen,
   divided by the largest such distance among the candidates); a candidate closer than `duplicate_threshold` to
   a chosen frame is never taken, so no two chosen frames are near-identical, and fewer than K are returned when
   the bag has fewer distinct frames. Each chosen frame gets its reason (the numbers behind its choice), which
   goes into the studio session.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

EMBEDDING_SIZE = (32, 16)  # (width, height) of the thumbnail behind a frame's embedding
DEFAULT_DUPLICATE_THRESHOLD = 0.03  # RMS embedding distance below which two frames are near-duplicates
MATCH_IOU = 0.5  # mask IoU above which two instances of the same class are the same object


class FrameSpecError(ValueError):
    """A --frames value that cannot be used; the message says why."""


@dataclass(frozen=True)
class FrameSpec:
    """`every:N` (mode 'every', count N) or `mine:K` (mode 'mine', count K)."""

    mode: str
    count: int

    @classmethod
    def parse(cls, text: str) -> FrameSpec:
        match = re.fullmatch(r"(every|mine):(\d+)", text.strip())
        if match is None or int(match.group(2)) < 1:
            raise FrameSpecError(f"--frames must be every:N or mine:K with a positive integer, got {text!r}")
        return cls(match.group(1), int(match.group(2)))

    def __str__(self) -> str:
        return f"{self.mode}:{self.count}"


def embedding(rgb: np.ndarray) -> np.ndarray:
    """(1536,) float32 cheap embedding of an (H, W, 3) uint8 frame: the 32×16 area-averaged thumbnail in [0, 1]."""
    return (cv2.resize(rgb, EMBEDDING_SIZE, interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0).reshape(-1)


def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """RMS difference of embeddings: `a` (D,) or (N, D) against `b` (D,) -> () or (N,) float32 in [0, 1]."""
    return np.sqrt(np.mean((np.asarray(a, np.float32) - np.asarray(b, np.float32)) ** 2, axis=-1))


def drop_near_duplicates(embeddings: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(kept, stands_for): positions (ascending) of the frames kept from (N, D) `embeddings` in time order, each
    kept when it differs by at least `threshold` from the last frame kept, and how many frames each kept one
    stands for (itself and the near-duplicates dropped after it)."""
    kept: list[int] = []
    stands_for: list[int] = []
    for k in range(len(embeddings)):
        if kept and float(distance(embeddings[k], embeddings[kept[-1]])) < threshold:
            stands_for[-1] += 1
            continue
        kept.append(k)
        stands_for.append(1)
    return np.asarray(kept, np.int64), np.asarray(stands_for, np.int64)


def farthest_points(embeddings: np.ndarray, count: int) -> np.ndarray:
    """Positions (ascending) of `count` rows of (N, D) `embeddings` chosen by farthest-point sampling, starting at
    the row farthest from the mean: every row when N <= count."""
    n = len(embeddings)
    if n <= count:
        return np.arange(n)
    chosen = [int(np.argmax(distance(embeddings, embeddings.mean(axis=0))))]
    nearest = distance(embeddings, embeddings[chosen[0]])
    while len(chosen) < count:
        k = int(np.argmax(nearest))
        chosen.append(k)
        nearest = np.minimum(nearest, distance(embeddings, embeddings[k]))
    return np.sort(np.asarray(chosen, np.int64))


def margin_uncertainty(scores: Iterable[float], threshold: float) -> float:
    """Mean over instances of 1 - |score - threshold| / max(threshold, 1 - threshold), in [0, 1]; 0 for none."""
    values = np.asarray(list(scores), np.float64)
    if not len(values):
        return 0.0
    span = max(threshold, 1.0 - threshold)
    return float(np.mean(np.clip(1.0 - np.abs(values - threshold) / span, 0.0, 1.0)))


def instance_disagreement(ids_a: np.ndarray, classes_a: list[str], ids_b: np.ndarray, classes_b: list[str]) -> float:
    """1 - 2 matches / (n_a + n_b) for two instance sets of one image size ((H, W) uint16 id images, 0 = none, with
    the class name of each id 1..n): a match is a pair of the same class with mask IoU > 0.5 (each instance used
    once, best IoU first). 0 when both are empty, 1 when nothing matches."""
    n_a, n_b = len(classes_a), len(classes_b)
    if n_a + n_b == 0:
        return 0.0
    if n_a == 0 or n_b == 0:
        return 1.0
    if ids_a.shape != ids_b.shape:
        ids_b = cv2.resize(ids_b, (ids_a.shape[1], ids_a.shape[0]), interpolation=cv2.INTER_NEAREST)
    joint = np.bincount(ids_a.astype(np.int64).ravel() * (n_b + 1) + ids_b.astype(np.int64).ravel(),
                        minlength=(n_a + 1) * (n_b + 1)).reshape(n_a + 1, n_b + 1)
    intersection = joint[1:, 1:].astype(np.float64)
    union = joint[1:, :].sum(axis=1)[:, None] + joint[:, 1:].sum(axis=0)[None, :] - intersection
    iou = np.where(union > 0, intersection / np.maximum(union, 1), 0.0)
    same = np.asarray(classes_a)[:, None] == np.asarray(classes_b)[None, :]
    iou = np.where(same, iou, 0.0)
    matches = 0
    used_a, used_b = set(), set()
    for flat in np.argsort(-iou, axis=None):
        a, b = divmod(int(flat), n_b)
        if iou[a, b] <= MATCH_IOU:
            break
        if a in used_a or b in used_b:
            continue
        used_a.add(a)
        used_b.add(b)
        matches += 1
    return 1.0 - 2.0 * matches / (n_a + n_b)


@dataclass(frozen=True)
class Candidate:
    """A frame that may be chosen: its index in the bag, (D,) embedding, how many frames it stands for, and its
    uncertainty signals (name -> value in [0, 1]; absent when not measured)."""

    index: int
    embedding: np.ndarray
    stands_for: int
    signals: dict[str, float]

    @property
    def uncertainty(self) -> float:
        return float(np.mean(list(self.signals.values()))) if self.signals else 0.0


@dataclass(frozen=True)
class Choice:
    """A chosen frame: its index and the note written into the session ({"reason": str, numbers...})."""

    index: int
    note: dict


def select_frames(candidates: list[Candidate], count: int, duplicate_threshold: float = DEFAULT_DUPLICATE_THRESHOLD,
                  uncertainty_weight: float = 0.5, diversity_weight: float = 0.5) -> list[Choice]:
    """At most `count` of `candidates`, chosen greedily by uncertainty and diversity (module docstring, step 3),
    never two closer than `duplicate_threshold`; in the order chosen (best first)."""
    if not candidates or count < 1:
        return []
    embeddings = np.stack([c.embedding for c in candidates]).astype(np.float32)
    uncertainty = np.array([c.uncertainty for c in candidates])
    nearest = np.full(len(candidates), np.inf)
    taken = np.zeros(len(candidates), bool)
    choices: list[Choice] = []
    while len(choices) < count:
        eligible = ~taken & (nearest >= duplicate_threshold)
        if not eligible.any():
            break
        finite = nearest[eligible & np.isfinite(nearest)]
        scale = float(finite.max()) if len(finite) else 1.0
        diversity = np.where(np.isfinite(nearest), nearest / max(scale, 1e-9), 1.0)
        value = np.where(eligible, uncertainty_weight * uncertainty + diversity_weight * diversity, -np.inf)
        k = int(np.argmax(value))
        candidate = candidates[k]
        choices.append(Choice(candidate.index, _note(candidate, len(choices) + 1, float(nearest[k]),
                                                     float(diversity[k]))))
        taken[k] = True
        nearest = np.minimum(nearest, distance(embeddings, embeddings[k]))
    return choices


def _note(candidate: Candidate, rank: int, nearest: float, diversity: float) -> dict:
    signals = ", ".join(f"{name} {value:.2f}" for name, value in sorted(candidate.signals.items()))
    parts = [f"rank {rank}: uncertainty {candidate.uncertainty:.2f}" + (f" ({signals})" if signals else "")]
    if math.isfinite(nearest):
        parts.append(f"distance {nearest:.3f} to the nearest frame chosen before it (diversity {diversity:.2f})")
    else:
        parts.append("the first choice")
    if candidate.stands_for > 1:
        parts.append(f"stands for {candidate.stands_for} near-identical frames")
    note: dict = {"reason": "; ".join(parts), "rank": rank, "uncertainty": round(candidate.uncertainty, 4),
                  "stands_for": candidate.stands_for}
    note.update({name: round(value, 4) for name, value in candidate.signals.items()})
    if math.isfinite(nearest):
        note["distance"] = round(nearest, 4)
    return note


def every_nth(frame_count: int, step: int) -> list[int]:
    """Frames 0, step, 2 step, ... of a bag of `frame_count` frames."""
    return list(range(0, frame_count, step))
