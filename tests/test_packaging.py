"""pyproject.toml, the requirement files and constraints.txt agree with one another."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

import synthclip_jax

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(path: Path) -> list[str]:
    """The requirement lines of a pip requirements file (no comments, no `-r` includes)."""
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def normalized(lines) -> set[str]:
    return {str(Requirement(line)).lower() for line in lines}


def test_extras_mirror_the_requirement_files():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert normalized(extras["data_gen"]) == normalized(
        requirements(ROOT / "data_gen" / "requirements.txt"))
    assert normalized(extras["test"]) == normalized(requirements(ROOT / "requirements-test.txt"))
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["dependencies"] == {
        "file": ["requirements.txt"]}


def test_constraints_pin_every_training_requirement_within_its_bounds():
    pins = {}
    for line in requirements(ROOT / "constraints.txt"):
        name, version = line.split("==")
        pins[canonical(name)] = version
    for line in requirements(ROOT / "requirements.txt"):
        req = Requirement(line)
        assert canonical(req.name) in pins, f"constraints.txt lacks {req.name}"
        assert req.specifier.contains(pins[canonical(req.name)]), (req, pins[canonical(req.name)])


def test_version_is_read_without_importing_jax():
    assert re.fullmatch(r"\d+\.\d+\.\d+", synthclip_jax.__version__)
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "synthclip_jax.__version__"}
    code = "import sys, synthclip_jax; print(synthclip_jax.__version__, 'jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [synthclip_jax.__version__, "False"]
