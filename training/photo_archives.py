"""Reading the real evaluation sets' photographs and labels out of the package archives that set-up downloads.

pyproject.toml's `photos` group names pinned wheels (and one source archive, labelme's, whose examples are not in
its wheel) that `make setup` downloads into data/photos/ and never installs. Their files are read straight from
the archives, so photographs under other licences are not copied into this repository; every file is checked
against the sha256 its set records, so a changed archive is refused instead of measured.
"""

from __future__ import annotations

import hashlib
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
PHOTO_ARCHIVES = REPO / "data" / "photos"


@dataclass
class ProxyObject:
    """One object: image (H, W, 3) uint8 RGB; mask (H, W) bool, its visible pixels; a name and a label."""

    name: str
    label: str
    image: np.ndarray
    mask: np.ndarray


def archive_member(archive_name: str, file: str) -> bytes:
    """The bytes of `file` inside the downloaded archive `archive_name` (data/photos/): a wheel (zip) or a source
    archive (.tar.gz). Raises FileNotFoundError naming the archive when set-up has not downloaded it."""
    path = PHOTO_ARCHIVES / archive_name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run make setup (it downloads the pinned archives of the real "
                                "evaluation sets' photographs)")
    if archive_name.endswith(".tar.gz"):
        with tarfile.open(path, "r:gz") as archive:
            member = archive.extractfile(file)
            if member is None:
                raise KeyError(f"{file} is not a regular file in {archive_name}")
            return member.read()
    with zipfile.ZipFile(path) as wheel:
        return wheel.read(file)


def checked(data: bytes, sha256: str, where: str, what: str = "photograph") -> bytes:
    """`data` itself if its sha256 is `sha256`; ValueError naming `where` otherwise."""
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"{where} is not the {what} the labels were made on (sha256 differs)")
    return data


def decode_image(data: bytes, sha256: str, where: str) -> np.ndarray:
    """Encoded image bytes (checked by sha256) -> (H, W, 3) uint8 RGB."""
    image = cv2.imdecode(np.frombuffer(checked(data, sha256, where), np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{where} is not a decodable image")
    return np.ascontiguousarray(image[..., ::-1])
