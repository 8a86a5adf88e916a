"""The install story: dependency lists agree, commands exist, lab-PC packages stay torch-free."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[;]", req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r): r.replace(" ", "") for r in project["dependencies"] + project["optional-dependencies"]["test"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = {}, {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip.update({_name(r): r.replace(" ", "") for r in dep["pip"]})
        else:
            conda[_name(dep)] = dep.replace(" ", "")
    got = {**{k: v for k, v in conda.items() if k not in ("python", "pip")}, **pip}
    assert got == wanted, "environment.yml and pyproject.toml list different dependencies or versions"


@pytest.mark.parametrize("cmd", ["fvmatch-stimuli", "fvmatch-session", "fvmatch-analyze"])
def test_commands_have_help_with_examples(cmd):
    out = subprocess.run([str(BIN / cmd), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout and "examples:" in out.stdout


def test_experiment_and_analysis_do_not_import_torch():
    code = (
        "import sys, pkgutil, importlib, experiment, analysis, contracts\n"
        "for pkg in (experiment, analysis, contracts):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'))\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr


def test_ci_calls_make_test():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
