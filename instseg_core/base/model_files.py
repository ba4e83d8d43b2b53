"""The one way a model file is found, by the runtime, the annotation code, the bag tools and the nodes alike.

`find_model(name)` looks, in this order:
1. an explicit path: `name` is absolute or names a folder (`models/x.onnx`, `./x.onnx`), and is taken as it is;
2. the folders of $INSTSEG_MODEL_DIR (os.pathsep-separated);
3. the installed package's share directory, `<prefix>/share/instseg_ros/models/`, for every prefix of
   $AMENT_PREFIX_PATH (a sourced ROS 2 install or colcon overlay) and for the prefix this library is
   installed in (`<prefix>/lib/pythonX.Y/site-packages/instseg_core`);
4. the source tree's `models/` (a checkout, or an editable install of it).
A bare file name found nowhere raises ModelFileError listing every folder searched.
"""

from __future__ import annotations

import os
from pathlib import Path

MODEL_DIR_ENV = "INSTSEG_MODEL_DIR"
SHARE_PACKAGE = "instseg_ros"  # the ROS package whose share/ folder holds models/ when installed
_HERE = Path(__file__).resolve()


class ModelFileError(RuntimeError):
    """A model file is missing or cannot be loaded; the message names the path (or the folders searched)."""


def _install_prefix() -> Path | None:
    """<prefix> when this file is <prefix>/lib/pythonX.Y/site-packages/instseg_core/base/model_files.py."""
    parents = _HERE.parents
    if len(parents) > 5 and parents[2].name in ("site-packages", "dist-packages") and parents[4].name == "lib":
        return parents[5]
    return None


def source_tree() -> Path | None:
    """The checkout this library runs from, if it runs from one (a folder with instseg_core/ and models/)."""
    root = _HERE.parents[2]
    return root if (root / "instseg_core").is_dir() and (root / "models").is_dir() else None


def share_directories(package: str) -> list[Path]:
    """<prefix>/share/<package> for every prefix of $AMENT_PREFIX_PATH and this library's own install prefix,
    in that order; existing folders only."""
    prefixes = [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    own_prefix = _install_prefix()
    if own_prefix is not None:
        prefixes.append(own_prefix)
    folders: list[Path] = []
    for prefix in prefixes:
        folder = prefix / "share" / package
        if folder.is_dir() and folder not in folders:
            folders.append(folder)
    return folders


def model_search_path() -> list[Path]:
    """The folders searched for a bare model file name, in order (see the module docstring); existing ones."""
    folders = [Path(p) for p in os.environ.get(MODEL_DIR_ENV, "").split(os.pathsep) if p]
    folders += [share / "models" for share in share_directories(SHARE_PACKAGE)]
    root = source_tree()
    if root is not None:
        folders.append(root / "models")
    unique: list[Path] = []
    for folder in folders:
        if folder.is_dir() and folder not in unique:
            unique.append(folder)
    return unique


def is_explicit_path(name: str | os.PathLike) -> bool:
    """True when `name` is a path (absolute, or with a folder part) rather than a bare file name."""
    path = Path(name)
    return path.is_absolute() or len(path.parts) > 1


def find_model(name: str | os.PathLike) -> Path:
    """The model file `name` (a bare file name like 'spatial_embeddings.onnx', or a path); see the module
    docstring for the search order. Raises ModelFileError naming what was looked for and where."""
    if not str(name):
        raise ModelFileError("empty model file name")
    if is_explicit_path(name):
        path = Path(name)
        if not path.is_file():
            raise ModelFileError(f"model file not found: {path}")
        return path
    searched = model_search_path()
    for folder in searched:
        if (folder / name).is_file():
            return folder / name
    where = ", ".join(str(f) for f in searched) or "no model folder exists"
    raise ModelFileError(f"model file {name!r} not found (searched ${MODEL_DIR_ENV}, the installed share "
                         f"directory and the source tree: {where})")
