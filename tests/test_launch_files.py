"""Launch files, parameter YAMLs and the RViz config agree with the nodes (`launch` is not installable here,
so the files are parsed): executables exist as console scripts, parameters are ones the nodes declare."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
import rclpy
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((REPO / "launch").glob("*.launch.py"))
CONFIGS = sorted((REPO / "config").glob("*.yaml"))
pytestmark = pytest.mark.ros


def console_scripts() -> set[str]:
    """The console scripts setup.py declares (name = module:function), each checked to resolve."""
    entries = re.findall(r'"([\w-]+) = ([\w.]+):(\w+)"', (REPO / "setup.py").read_text())
    assert len(entries) >= 7
    for name, module, function in entries:
        assert callable(getattr(importlib.import_module(module), function)), name
    return {name for name, _, _ in entries}


@pytest.fixture(scope="module")
def live_nodes() -> dict[str, dict[str, set[str]]]:
    """What each of our nodes really declares and publishes (nodes created with rclpy in this isolated process):
    {node name: {"parameters": names, "publishers": resolved topic names, "services": resolved names}}."""
    from instseg_ros.extreme_point_node import ExtremePointNode
    from instseg_ros.segmentation_node import SegmentationNode

    rclpy.init()
    try:
        found = {}
        for cls in (SegmentationNode, ExtremePointNode):
            node = cls()
            found[node.get_name()] = {
                "parameters": set(node._parameters) - {"use_sim_time", "start_type_description_service"},
                "publishers": {publisher.topic_name for publisher in node.publishers},
                "services": {node.resolve_service_name(service.srv_name) for service in node.services},
            }
            if hasattr(node, "stop"):
                node.stop()
            node.destroy_node()
        return found
    finally:
        rclpy.try_shutdown()


@pytest.fixture(scope="module")
def declared_parameters(live_nodes: dict[str, dict[str, set[str]]]) -> dict[str, set[str]]:
    return {name: node["parameters"] for name, node in live_nodes.items()}


def launch_nodes(path: Path) -> list[dict]:
    """Node(...) calls of a launch file: package, executable, name (string literals) and parameter files."""
    nodes = []
    for call in ast.walk(ast.parse(path.read_text())):
        if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "Node":
            fields = {k.arg: k.value for k in call.keywords}
            nodes.append({key: fields[key].value for key in ("package", "executable", "name")
                          if isinstance(fields.get(key), ast.Constant)} | {"source": ast.unparse(call)})
    return nodes


def test_every_launch_file_starts_existing_executables() -> None:
    assert {p.name for p in LAUNCH_FILES} >= {"segmentation.launch.py", "annotation.launch.py",
                                              "labelling.launch.py"}
    scripts = console_scripts()
    for path in LAUNCH_FILES:
        compile(path.read_text(), str(path), "exec")
        nodes = launch_nodes(path)
        assert nodes, path
        for node in nodes:
            if node["package"] == "instseg_ros":
                assert node["executable"] in scripts, (path.name, node)
            else:
                assert node["package"] == "rviz2", (path.name, node)
        for command in re.findall(r'cmd=\["([\w-]+)"', path.read_text()):
            assert command in scripts, (path.name, command)


def test_parameter_files_only_set_declared_parameters(declared_parameters: dict[str, set[str]]) -> None:
    assert declared_parameters["segmentation_node"] >= {"model", "backend", "device", "score_threshold"}
    for path in CONFIGS:
        for node_name, section in yaml.safe_load(path.read_text()).items():
            unknown = set(section["ros__parameters"]) - declared_parameters[node_name]
            assert not unknown, (path.name, node_name, unknown)
    for path in LAUNCH_FILES:  # the config files the launch files name exist
        for config in re.findall(r'"config" / "([\w.]+)"', path.read_text()):
            assert (REPO / "config" / config).is_file(), (path.name, config)


def test_rviz_config_shows_the_node_outputs(live_nodes: dict[str, dict[str, set[str]]]) -> None:
    """The image topics RViz displays are ones the node really publishes (with its default name)."""
    config = yaml.safe_load((REPO / "rviz" / "instseg.rviz").read_text())
    topics = {d["Topic"]["Value"] for d in config["Visualization Manager"]["Displays"] if "Topic" in d}
    assert {"/segmentation_node/overlay", "/segmentation_node/instance_ids"} <= topics
    node_topics = {t for t in topics if t.startswith("/segmentation_node/")}  # the rest is the camera input
    assert node_topics <= live_nodes["segmentation_node"]["publishers"], live_nodes["segmentation_node"]["publishers"]
    assert "/extreme_point_node/segment" in live_nodes["extreme_point_node"]["services"]
