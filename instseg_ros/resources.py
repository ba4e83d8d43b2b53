"""Where installed resources (models, configs) live: the ament share directory, else the source tree."""

from __future__ import annotations

from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[1]


def share_directory() -> Path | None:
    """share/instseg_ros of an installed package (colcon overlay or ROS install), if registered."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return None
    try:
        return Path(get_package_share_directory("instseg_ros"))
    except (PackageNotFoundError, LookupError, ValueError, OSError):  # OSError: AMENT_PREFIX_PATH unset
        return None


def model_path(name: str) -> Path:
    """models/<name> from the installed share directory if it has it, else from the source checkout."""
    share = share_directory()
    if share is not None and (share / "models" / name).is_file():
        return share / "models" / name
    return SOURCE_ROOT / "models" / name
