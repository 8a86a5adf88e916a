"""The README's commands work as written: options exist, make targets exist, and what can run here runs."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
sys.path.insert(0, str(ROOT / "tools"))

from cli_reference import COMMANDS, parser_for, reference  # noqa: E402

PARSERS = dict(COMMANDS)


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    lines = [ln.strip() for b in blocks for ln in b.splitlines()]
    return [ln.split("  #")[0].strip() for ln in lines if ln and not ln.startswith("#")]


def test_reference_section_is_current():
    start, end = "<!-- cli-reference:start -->\n", "<!-- cli-reference:end -->"
    section = README[README.index(start) + len(start):README.index(end)]
    assert section.strip() == reference().strip(), "run: python tools/cli_reference.py and paste it into README.md"


def test_every_command_parses():
    cmds = readme_commands()
    assert len(cmds) >= 15
    makefile = (ROOT / "Makefile").read_text()
    for cmd in cmds:
        argv = shlex.split(cmd)
        prog = Path(argv[0]).name
        if prog in PARSERS:
            parser_for(PARSERS[prog]).parse_args(argv[1:])  # SystemExit on an unknown or bad option
        elif prog == "torchrun":
            i = argv.index("-m")
            assert argv[i + 1] == "stimuli_gen.cli"
            parser_for("stimuli_gen.cli").parse_args(argv[i + 2:])
        elif prog == "make":
            for target in argv[1:]:
                assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), f"no make target {target!r}"
        elif prog == "python":
            if argv[1] == "-c":
                compile(argv[2], "<README>", "exec")
            else:
                assert (ROOT / argv[1]).is_file(), argv[1]
        else:
            pytest.fail(f"README command not checked: {cmd}")


@pytest.mark.parametrize("script", ["bench/exemplars.py", "bench/render.py", "bench/analysis.py"])
def test_bench_scripts_accept_readme_flags(script):
    for cmd in readme_commands():
        if script in cmd:
            argv = shlex.split(cmd)
            flags = argv[argv.index(script) + 1:]
            out = subprocess.run([sys.executable, script, *flags, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, out.stderr


def test_check_only_command_runs_on_a_real_set(fixture_set, tmp_path):
    """The calibration step runs as written, with the study's set replaced by the test fixture."""
    cmd = next(c for c in readme_commands() if "--check-only" in c)
    cmd = cmd.replace("data/stimuli/study1", str(fixture_set)).replace("my_lab.toml", "demo")
    argv = shlex.split(cmd)
    out = subprocess.run([str(Path(sys.executable).parent / Path(argv[0]).name), *argv[1:]], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "P01_conditions.csv").is_file()
