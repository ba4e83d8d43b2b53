"""The repo is a well-formed ament_python package with a consistent manifest, setup and pins."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from catkin_pkg.package import parse_package

REPO = Path(__file__).resolve().parents[1]


def test_package_xml_is_format_3_ament_python() -> None:
    package = parse_package(REPO / "package.xml")
    package.validate()
    assert package.name == "instseg_ros" and package.package_format == 3
    assert package.get_build_type() == "ament_python"


def test_declared_ros_dependencies_are_importable() -> None:
    """Every ROS package declared as exec_depend exists here (python3-* keys are rosdep system deps)."""
    package = parse_package(REPO / "package.xml")
    ros_deps = [d.name for d in package.exec_depends if not d.name.startswith("python3-")]
    assert {"rclpy", "sensor_msgs", "instseg_interfaces"} <= set(ros_deps)
    for name in ros_deps:
        if name == "rmw_fastrtps_cpp":
            continue  # a C++ middleware, checked by the DDS tests
        importlib.import_module(name)


def test_interface_package_xml() -> None:
    package = parse_package(REPO / "ros2_ws" / "src" / "instseg_interfaces" / "package.xml")
    package.validate()
    assert package.get_build_type() == "ament_cmake"
    assert "rosidl_interface_packages" in [g.name for g in package.member_of_groups]


def test_versions_agree() -> None:
    import instseg_core
    import instseg_ros

    version = parse_package(REPO / "package.xml").version
    assert instseg_core.__version__ == instseg_ros.__version__ == version
    assert f'version="{version}"' in (REPO / "setup.py").read_text()


def test_every_dependency_is_pinned_exactly() -> None:
    groups = tomllib.loads((REPO / "pyproject.toml").read_text())["dependency-groups"]
    assert groups["torch"] == ["torch==2.13.0"]
    for name, requirements in groups.items():
        for requirement in requirements:
            assert "==" in requirement, f"{name}: {requirement} is not pinned"


def test_every_module_imports_and_says_what_it_is() -> None:
    """Every module of the three packages imports, and has a docstring (the docs point at them)."""
    missing = []
    for package_name in ("instseg_core", "instseg_ros", "instseg_fleet", "training"):
        package = importlib.import_module(package_name)
        for info in pkgutil.walk_packages(package.__path__, f"{package_name}."):
            module = importlib.import_module(info.name)
            if not (module.__doc__ or "").strip():
                missing.append(info.name)
    assert missing == []


@pytest.mark.parametrize("module", ["instseg_core.runtime", "instseg_core.annotate.segmenter",
                                    "instseg_core.postprocess.box_assignment"])
def test_the_runtime_path_loads_neither_cityscapesscripts_nor_ros(module: str) -> None:
    """A deployment that only segments must not pay for (or depend on) the dataset tooling or ROS."""
    code = (f"import sys, {module}; bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('cityscapesscripts', 'rclpy', 'instseg_ros', 'training')); print(bad)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def _imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def test_instseg_core_never_imports_ros() -> None:
    """instseg_core stays ROS-free: no rclpy, message packages, rosidl or instseg_ros imports."""
    def is_ros(module: str) -> bool:
        top = module.split(".")[0]
        return (top in {"rclpy", "rosidl_runtime_py", "instseg_ros", "instseg_interfaces", "builtin_interfaces"}
                or top.endswith(("_msgs", "_srvs")))

    offenders = {str(path.relative_to(REPO)): sorted(filter(is_ros, _imported_modules(path)))
                 for path in (REPO / "instseg_core").rglob("*.py")}
    assert {path: mods for path, mods in offenders.items() if mods} == {}
    assert is_ros("sensor_msgs.msg") and not is_ros("rosbags.typesys")


def test_console_scripts_resolve() -> None:
    from importlib.metadata import entry_points

    scripts = {ep.name: ep for ep in entry_points(group="console_scripts") if ep.value.startswith("instseg")}
    assert "instseg-isolated" in scripts
    for entry in scripts.values():
        assert callable(entry.load())


def _anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_is_short_and_every_doc_link_resolves() -> None:
    """README.md stays a newcomer's page (<= 250 lines); every relative link in it and in docs/ names a file
    of the repo (and an existing heading, when it has an anchor); no link leaves the repository."""
    readme = REPO / "README.md"
    assert len(readme.read_text().splitlines()) <= 250
    pages = [readme, *sorted((REPO / "docs").rglob("*.md"))]
    assert {"architecture.md", "ros.md", "benchmarks.md", "testing.md"} <= {p.name for p in pages}
    assert list((REPO / "docs" / "models").glob("*.md")), "docs/models/ has a page per model"
    problems = []
    for page in pages:
        text = page.read_text()
        in_code = re.sub(r"```.*?```", "", text, flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", in_code):
            if target.startswith(("http://", "https://")) or "../shared" in target:
                problems.append(f"{page.name}: link outside the repo: {target}")
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists() or REPO not in file.parents:
                problems.append(f"{page.name}: missing {target}")
            elif anchor and file.suffix == ".md":
                headings = {_anchor(h) for h in re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", file.read_text(),
                                                                                  flags=re.S), flags=re.M)}
                if anchor not in headings:
                    problems.append(f"{page.name}: no heading for #{anchor} in {file.name}")
    assert problems == []


TRACKED_LIMIT_MIB = 48  # the GPU machine receives at most 64 MiB of working tree; the goal is <= 40 MiB


def test_tracked_tree_is_small_and_holds_no_derived_model() -> None:
    """Each network is shipped once; the formats derived at set-up (training/derive_models.py) are not tracked,
    and the tracked tree stays small enough to send to a measuring machine."""
    from training.derive_models import DERIVATIONS, STAMP

    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    paths = [REPO / name for name in tracked.decode().split("\0") if name]
    total = sum(path.stat().st_size for path in paths if path.is_file())
    biggest = sorted((path.stat().st_size, path.relative_to(REPO)) for path in paths if path.is_file())[-5:]
    assert total <= TRACKED_LIMIT_MIB * 2**20, (
        f"tracked files are {total / 2**20:.1f} MiB (limit {TRACKED_LIMIT_MIB}); biggest: "
        + ", ".join(f"{name} {size / 2**20:.1f} MiB" for size, name in reversed(biggest)))
    derived = {f"models/{d.output}" for d in DERIVATIONS} | {f"models/{STAMP}"}
    derived |= {f"models/{d.output[:-5]}.json" for d in DERIVATIONS if d.output.endswith("_int8.onnx")}
    assert not derived & {str(path.relative_to(REPO)) for path in paths}, "a derived model file is tracked"
    ignored = subprocess.run(["git", "check-ignore", *sorted(derived)], cwd=REPO, capture_output=True, text=True)
    assert set(ignored.stdout.split()) == derived, "every derived model file is git-ignored"
