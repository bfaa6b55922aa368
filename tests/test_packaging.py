"""environment.yml and pyproject.toml must name the same runtime dependencies."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _normalise(requirement: str) -> str:
    return re.sub(r"\s+", "", requirement).lower()


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    env_requirements = {_normalise(r) for r in pip_section if not r.startswith("-e")}
    assert env_requirements == {_normalise(r) for r in project["dependencies"]}
    assert "python=3.11" in env["dependencies"]


def test_top_level_layout():
    for name in ("experiments", "regimetry", "notebooks", "tests", "benchmarks", "environment.yml",
                 "pyproject.toml", "README.md", ".ci/run", "mlruns/.gitkeep"):
        assert (ROOT / name).exists(), name
