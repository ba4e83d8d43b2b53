"""Every command tells the truth about failure (issue 33): exit status 0 only when everything asked was done; an
unexpected exception is one line naming it, exit status 1 and its traceback in a log file, never status 0 and never
a traceback on the console (instseg_core.base.command_exit). Each command gets an exception injected
(tests/inject_fault.py); before, `instseg-bag` ended such a run with status 0 and no message, and the others with a
traceback of 20-odd lines."""

from __future__ import annotations

import errno
import importlib
import re
from pathlib import Path

import pytest
from inject_fault import SCRIPT as INJECT_FAULT
from inject_fault import InjectedError, inject

from instseg_core.base.command_exit import CommandExit, InputError, os_error_line, run_command

LINE = re.compile(r"^(?P<name>.+): internal error: InjectedError: injected by the test \(traceback in (?P<log>\S+); "
                  r"--debug prints it\)$")


def _internal_error_line(stderr: str, name: str) -> Path:
    """The one line of an internal error in `stderr` (and no traceback there); returns the log file it names."""
    assert "Traceback" not in stderr, stderr
    matches = [m for m in map(LINE.match, stderr.splitlines()) if m]
    assert len(matches) == 1 and matches[0]["name"] == name, stderr
    log = Path(matches[0]["log"])
    assert "InjectedError: injected by the test" in log.read_text() and "Traceback" in log.read_text()
    return log


@pytest.fixture(autouse=True)
def log_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "logs"
    monkeypatch.setenv("INSTSEG_LOG_DIR", str(folder))
    return folder


# --- the rule ------------------------------------------------------------------------------------------------


def test_an_os_error_names_the_errno_and_the_file() -> None:
    exc = OSError(errno.ENOSPC, "No space left on device", "/data/rec/metadata.yaml")
    assert os_error_line(exc) == "[Errno 28 ENOSPC] No space left on device: /data/rec/metadata.yaml"


@pytest.mark.parametrize("raised, status, line", [
    (InputError("bag /x is damaged"), 2, "cmd: bag /x is damaged"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/x"), 2,
     "cmd: [Errno 2 ENOENT] No such file or directory: /x"),
    (SystemExit("--init /x: not a checkpoint"), 2, "cmd: --init /x: not a checkpoint"),
    (KeyboardInterrupt(), 130, "cmd: interrupted before it finished"),
])
def test_input_errors_are_one_line_and_status_2(raised: BaseException, status: int, line: str,
                                                 capsys: pytest.CaptureFixture) -> None:
    def body() -> None:
        raise raised

    with pytest.raises(CommandExit) as ended:
        run_command("cmd", body)
    assert ended.value.code == status and str(ended.value) == line
    assert capsys.readouterr().err == line + "\n"


def test_a_finished_command_keeps_its_result_and_a_plain_exit_its_status() -> None:
    assert run_command("cmd", lambda: 7) == 7
    with pytest.raises(SystemExit) as ended:
        run_command("cmd", lambda: exit(3))
    assert ended.value.code == 3 and not isinstance(ended.value, CommandExit)


def test_an_internal_error_is_logged_or_printed_with_debug(log_dir: Path, capsys: pytest.CaptureFixture,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def body() -> None:
        raise InjectedError("injected by the test")

    with pytest.raises(CommandExit) as ended:
        run_command("cmd sub", body)
    assert ended.value.code == 1
    assert _internal_error_line(capsys.readouterr().err, "cmd sub").parent == log_dir
    with pytest.raises(CommandExit):
        run_command("cmd", body, debug=True)
    stderr = capsys.readouterr().err
    assert "Traceback" in stderr and stderr.endswith("cmd: internal error: InjectedError: injected by the test "
                                                      "(traceback above)\n")
    monkeypatch.setenv("INSTSEG_LOG_DIR", str(log_dir / "not a folder" / "logs"))
    (log_dir / "not a folder").write_text("")  # the log cannot be written: the traceback goes to stderr instead
    with pytest.raises(CommandExit):
        run_command("cmd", body)
    assert "Traceback" in capsys.readouterr().err


# --- every command -------------------------------------------------------------------------------------------

IN_PROCESS = [  # (command's module, the function that fails, argv, the name its line starts with)
    ("instseg_ros.label_bag", "create_annotation_segmenter", ["BAG", "--topic", "/t", "--clicks", "CLICKS", "--out",
                                                             "OUT"], "instseg-label"),
    ("instseg_studio.cli", "build_studio", ["BAG", "--port", "0"], "instseg-studio"),
    ("instseg_core.data.synth_cli", "generate_images", ["OUT"], "instseg-synth"),
    ("training.derive_models", "derive", ["--models", "OUT"], "training.derive_models"),
    ("training.spatial_embeddings", "train", ["train", "--data", "DATA", "--out", "OUT"],
     "training.spatial_embeddings train"),
    ("training.box2pix", "evaluate", ["evaluate", "--data", "DATA", "--run", "OUT"], "training.box2pix evaluate"),
    ("training.box2pix", "coverage", ["coverage", "--data", "DATA"], "training.box2pix coverage"),
    ("training.dcme", "export", ["export", "--run", "DATA", "--out", "OUT"], "training.dcme export"),
    ("training.dcme", "tune", ["tune", "--data", "DATA", "--run", "OUT"], "training.dcme tune"),
    ("training.extreme_points", "prepare", ["prepare", "--data", "DATA", "--out", "OUT"],
     "training.extreme_points prepare"),
    ("training.real_validation", "read_sets", ["--data", "DATA", "--json", "OUT"], "training.real_validation"),
    ("training.calibrate_streaming", "read_yolo_seg", ["--real", "DATA"], "training.calibrate_streaming"),
]


@pytest.mark.parametrize("module, attribute, argv, name", IN_PROCESS, ids=[f"{c[0]}.{c[1]}" for c in IN_PROCESS])
def test_an_unexpected_exception_ends_the_command_with_status_1_and_one_line(
        module: str, attribute: str, argv: list[str], name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    clicks = tmp_path / "clicks.json"
    clicks.write_text('{"0": [[[1, 5], [30, 1], [60, 5], [30, 30], "car"]]}')
    paths = {"BAG": tmp_path / "bag", "CLICKS": clicks, "OUT": tmp_path / "out", "DATA": tmp_path / "data"}
    inject(monkeypatch, module, attribute)
    with pytest.raises(SystemExit) as ended:
        importlib.import_module(module).main([str(paths.get(word, word)) for word in argv])
    assert ended.value.code == 1
    _internal_error_line(capsys.readouterr().err, name)


ROS_COMMANDS = [  # (module, the function that fails, argv, name)
    ("instseg_ros.bag_tools", "play", ["play", "BAG"], "instseg-bag"),
    ("instseg_ros.bag_tools", "record", ["record", "OUT", "--topics", "/image"], "instseg-bag"),
    ("instseg_ros.segmentation_node", "SegmentationNode.__init__", [], "segmentation_node"),
    ("instseg_ros.extreme_point_node", "ExtremePointNode.__init__", [], "extreme_point_node"),
]


@pytest.mark.ros
@pytest.mark.parametrize("module, attribute, argv, name", ROS_COMMANDS, ids=[f"{c[0]}.{c[1]}" for c in ROS_COMMANDS])
def test_an_unexpected_exception_ends_a_ros_command_with_status_1_and_one_line(
        module: str, attribute: str, argv: list[str], name: str, tmp_path: Path, ros_processes) -> None:
    """The ROS commands end with os._exit (instseg_ros.spinning), so they run as processes. Before, instseg-bag
    answered this with status 0 and no message at all."""
    paths = {"BAG": tmp_path / "bag", "OUT": tmp_path / "out"}
    ros_processes.env["INSTSEG_LOG_DIR"] = str(tmp_path / "logs")
    process = ros_processes.start(module, attribute, *[str(paths.get(word, word)) for word in argv],
                                  script=INJECT_FAULT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr
    assert _internal_error_line(stderr, name).parent == tmp_path / "logs"
