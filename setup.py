"""ament_python build of the instseg_ros package (repo root).

Used by colcon on a full ROS 2 install (`colcon build` in ros2_ws/) and by `make setup` (editable
install into .venv). Pinned dependencies live in pyproject.toml, not here: on a ROS install rosdep
provides the ROS side and pip the rest.
"""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "instseg_ros"


def share(subdir: str, pattern: str) -> tuple[str, list[str]]:
    """One data_files entry: files of `subdir` matching `pattern` -> share/instseg_ros/<subdir>."""
    return (f"share/{PACKAGE}/{subdir}", sorted(glob(f"{subdir}/{pattern}")))


setup(
    name=PACKAGE,
    version="0.1.0",
    description="Real-time instance segmentation for ROS 2 and extreme-point annotation of bags",
    license="Apache-2.0",
    packages=find_packages(include=["instseg_core", "instseg_core.*", "instseg_ros", "instseg_ros.*", "instseg_studio",
                                    "instseg_studio.*", "instseg_fleet", "instseg_fleet.*", "training", "training.*"]),
    package_data={"instseg_studio": ["static/*.html", "static/*.js", "static/*.css"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        share("launch", "*.launch.py"),
        share("config", "*.yaml"),
        share("rviz", "*.rviz"),
        share("models", "*.onnx"),
        share("models", "*.json"),
        share("models", "*.pt"),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "instseg-isolated = instseg_ros.isolation:main",
            "instseg-synth = instseg_core.data.synth_cli:main",
            "extreme_point_node = instseg_ros.extreme_point_node:main",
            "instseg-label = instseg_ros.label_bag:main",
            "segmentation_node = instseg_ros.segmentation_node:main",
            "segmentation_lifecycle_node = instseg_ros.segmentation_node:main_lifecycle",
            "instseg-bag = instseg_ros.bag_tools:main",
            "instseg-video-bag = instseg_core.data.video_bag:main",
            "instseg-studio = instseg_studio.cli:main",
            "instseg-fleet = instseg_fleet.cli:main",
        ],
    },
)
