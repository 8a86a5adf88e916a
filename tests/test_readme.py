"""The README's commands work as written: options exist, make targets exist, and what can run here runs."""

import argparse
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


def _workflow2_commands() -> list[str]:
    section = README[README.index("## Workflow 2"):README.index("## Workflow 3")]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [ln.strip() for b in blocks for ln in b.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def test_workflow2_steps_1_and_3_give_the_same_trial_list(tmp_path):
    """Step 1's exported conditions are the trial list step 3 runs (the session writes its own copy before
    the first trial). Step 3 runs as written plus a simulated participant (a person cannot be scripted
    here) that stops after one trial; the simulation does not enter the trial list."""
    sys.path.insert(0, str(ROOT / "tests"))
    from stimset_fixture import make_fixture_set

    stim = make_fixture_set(tmp_path / "set10", tmp_path / "coll", units_per_group=10, size=32)  # as the README generates it (--units-per-group 10)
    lab = tmp_path / "my_lab.toml"
    lab.write_text((ROOT / "experiment/designs/default.toml").read_text().replace("fullscreen = true", "fullscreen = false"))
    cmds = _workflow2_commands()
    step1 = next(c for c in cmds if "--check-only" in c)
    step3 = next(c for c in cmds if "--experiment study1" in c and "--no-dialog" in c and "--resume" not in c)

    def run(cmd: str, *extra: str) -> subprocess.CompletedProcess:
        argv = shlex.split(cmd.replace("data/stimuli/study1", str(stim)))
        exe = str(Path(sys.executable).parent / Path(argv[0]).name)
        return subprocess.run([exe, *argv[1:], *extra], cwd=tmp_path, capture_output=True, text=True, timeout=300)

    out1 = run(step1)
    assert out1.returncode == 0, out1.stdout + out1.stderr
    assert "experiment 'study1'" in out1.stdout and "seed " in out1.stdout  # the plan names what it was made for
    import os

    if not os.environ.get("DISPLAY"):
        pytest.skip("step 3 needs a display (run under tools/with-display.sh)")
    out3 = run(step3, "--simulate", "oracle", "--max-trials", "1")
    assert out3.returncode == 4, out3.stdout + out3.stderr
    ran = next((tmp_path / "data/sessions/study1").glob("sub-P01_ses-01/psychopy/*_conditions.csv"))
    assert ran.read_text() == (tmp_path / "P01_conditions.csv").read_text()


def test_help_and_data_docs_say_what_the_code_does():
    """--help names no hidden option; data/README.md says when session.json is rewritten as the runner does."""
    from experiment.cli import build_parser

    parser = build_parser()
    visible = {s for a in parser._actions if a.help != argparse.SUPPRESS for s in a.option_strings}
    mentioned = set(re.findall(r"(--[a-z][a-z-]+)", parser.format_help()))
    assert mentioned <= visible, f"--help mentions hidden or unknown options: {sorted(mentioned - visible)}"
    data_readme = (ROOT / "data/README.md").read_text()
    line = next(ln for ln in data_readme.splitlines() if ln.startswith("| `session.json`"))
    runner = (ROOT / "experiment/runner.py").read_text()
    assert "save_info(plan)" in runner.split("log.append(")[1].split("exp.nextEntry()")[0]  # after every trial
    assert "after every trial" in line and "block" not in line
