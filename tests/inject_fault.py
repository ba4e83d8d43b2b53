"""Inject an unexpected exception into a command: replace one function of its module by one that raises
`InjectedError`, then run the command's main().

    python tests/inject_fault.py MODULE ATTRIBUTE [ARG ...]    # e.g. instseg_ros.bag_tools record record OUT ...

ATTRIBUTE is a dotted path inside MODULE ("record", "SegmentationNode.__init__"). `inject(monkeypatch, ...)` does
the same inside the test process, for commands that end by returning or raising SystemExit.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()


class InjectedError(Exception):
    """The unexpected exception: no command knows it, so every command must call it an internal error."""


def raiser(module: str) -> Callable[..., Any]:
    """A function that raises InjectedError, presented as a function of `module` (commands name themselves after
    the module of the function they run)."""

    def fault(*_: object, **__: object) -> None:
        raise InjectedError("injected by the test")

    fault.__module__ = module
    return fault


def _owner(module: str, attribute: str) -> tuple[Any, str]:
    owner: Any = importlib.import_module(module)
    *path, name = attribute.split(".")
    return functools.reduce(getattr, path, owner), name


def inject(monkeypatch: Any, module: str, attribute: str) -> None:
    """Replace MODULE.ATTRIBUTE by `raiser` for one test (pytest's monkeypatch)."""
    owner, name = _owner(module, attribute)
    monkeypatch.setattr(owner, name, raiser(module))


def main() -> None:
    module, attribute, *argv = sys.argv[1:]
    owner, name = _owner(module, attribute)
    setattr(owner, name, raiser(module))
    importlib.import_module(module).main(argv)


if __name__ == "__main__":
    main()
