"""Static check: no undefined name anywhere in the code a user or CI runs.

The benchmark scripts have no unit tests of their own (they run for tens of minutes), so a name left
undefined by a refactoring surfaced only when the benchmark was run for real (crash_recovery.py,
git 018ae32 -> ebae7b3). pyflakes finds that class of error without running anything.
"""

from __future__ import annotations

from pathlib import Path

from pyflakes import api, messages
from pyflakes.reporter import Reporter

ROOT = Path(__file__).resolve().parents[1]
UNDEFINED = (messages.UndefinedName, messages.UndefinedLocal, messages.UndefinedExport)


class _Collect(Reporter):
    def __init__(self) -> None:
        self.found: list[str] = []

    def unexpectedError(self, filename, msg):  # noqa: N802 - pyflakes' API
        self.found.append(f"{filename}: {msg}")

    def syntaxError(self, filename, msg, lineno, offset, text):  # noqa: N802
        self.found.append(f"{filename}:{lineno}: syntax error: {msg}")

    def flake(self, message):
        if isinstance(message, UNDEFINED):
            self.found.append(str(message))


def test_no_undefined_names_in_the_package_scripts_benchmarks_and_tests():
    reporter = _Collect()
    paths = [str(ROOT / d) for d in ("regimetry", "experiments", "benchmarks", "tests")]
    api.checkRecursive(paths, reporter)
    assert reporter.found == []


def test_the_check_finds_an_undefined_name(tmp_path):
    (tmp_path / "bad.py").write_text("def f():\n    walls = {}\n    return wall\n")
    reporter = _Collect()
    api.checkRecursive([str(tmp_path)], reporter)
    assert len(reporter.found) == 1 and "undefined name 'wall'" in reporter.found[0]
