"""The ground floor (instseg_core.base): class table, model-file lookup, atomic writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from instseg_core.base import model_files
from instseg_core.base.atomic_files import atomic_path, write_bytes_atomically, write_text_atomically
from instseg_core.base.classes import ANNOTATION_CLASSES, CLASS_TABLE, INSTANCE_CLASSES, label_ids
from instseg_core.base.model_files import MODEL_DIR_ENV, ModelFileError, find_model, model_search_path

REPO = Path(__file__).resolve().parents[1]


def test_class_table_equals_cityscapes() -> None:
    """Our table (imported on the runtime path) carries exactly the official ids, train ids and colours."""
    from cityscapesscripts.helpers.labels import labels, name2label

    for entry in CLASS_TABLE:
        official = name2label[entry.name]
        assert (entry.label_id, entry.train_id, entry.colour) == (official.id, official.trainId, official.color)
    official_instances = tuple(label.name for label in labels if label.hasInstances and not label.ignoreInEval)
    assert official_instances == INSTANCE_CLASSES
    assert set(ANNOTATION_CLASSES) <= {entry.name for entry in CLASS_TABLE}
    assert label_ids(["person", "car"]) == [24, 26]
    with pytest.raises(ValueError, match="unicorn"):
        label_ids(["unicorn"])


def test_find_model_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Explicit path, then $INSTSEG_MODEL_DIR, then installed share directories, then the source tree."""
    monkeypatch.delenv(MODEL_DIR_ENV, raising=False)
    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
    assert find_model("spatial_embeddings.onnx") == REPO / "models" / "spatial_embeddings.onnx"  # source tree

    prefix = tmp_path / "install"
    share = prefix / "share" / "instseg_ros" / "models"
    share.mkdir(parents=True)
    (share / "spatial_embeddings.onnx").write_bytes(b"installed")
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    assert find_model("spatial_embeddings.onnx") == share / "spatial_embeddings.onnx"
    assert find_model("box2pix.onnx") == REPO / "models" / "box2pix.onnx"  # not installed: the source tree

    override = tmp_path / "mine"
    override.mkdir()
    (override / "spatial_embeddings.onnx").write_bytes(b"mine")
    monkeypatch.setenv(MODEL_DIR_ENV, str(override))
    assert find_model("spatial_embeddings.onnx") == override / "spatial_embeddings.onnx"
    assert model_search_path()[:2] == [override, share]

    explicit = tmp_path / "elsewhere" / "spatial_embeddings.onnx"
    with pytest.raises(ModelFileError, match=r"not found: .*elsewhere"):
        find_model(explicit)  # an explicit path is never searched for elsewhere
    explicit.parent.mkdir()
    explicit.write_bytes(b"x")
    assert find_model(explicit) == explicit
    with pytest.raises(ModelFileError, match=r"'nothing.onnx' not found \(searched .*mine"):
        find_model("nothing.onnx")
    with pytest.raises(ModelFileError, match="empty"):
        find_model("")


def test_install_prefix_is_derived_from_site_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = Path("/opt/overlay/lib/python3.11/site-packages/instseg_core/base/model_files.py")
    monkeypatch.setattr(model_files, "_HERE", installed)
    assert model_files._install_prefix() == Path("/opt/overlay")
    assert model_files.source_tree() is None
    monkeypatch.setattr(model_files, "_HERE", REPO / "instseg_core" / "base" / "model_files.py")
    assert model_files._install_prefix() is None and model_files.source_tree() == REPO


def test_atomic_writes_leave_old_or_new_never_half(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.json"
    write_text_atomically(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("writer crashed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.json"]  # no temporary left behind
    write_bytes_atomically(target, b"new")
    assert target.read_bytes() == b"new"
    with atomic_path(tmp_path / "arrays.npz", suffix=".npz") as temporary:
        assert temporary.name.endswith(".tmp.npz") and temporary.name.startswith(".arrays.npz.")


def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path: Path) -> None:
    """mkstemp makes 0600 files; an installed model or an exported label file must be readable by others."""
    import os
    import stat

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = write_text_atomically(tmp_path / "atomic.txt", "x")
    assert stat.S_IMODE(os.stat(atomic).st_mode) == stat.S_IMODE(os.stat(plain).st_mode)
