"""Data safety of sessions (issue 11): one writer per session (lock), nothing outlives a killed display
wrapper, recovery from a kill before the first trial, id checks, the message for a completed session."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import psutil
import pytest

from contracts.session import read_session_info, read_trials, validate_id
from experiment import cli as session_cli
from experiment.session_lock import LOCK_FILE, SessionLock, SessionLocked
from experiment.storage import SessionExists
from test_experiment_session import (CLI, ROOT, display_env, kill, run_cli, session_args,  # noqa: F401 (fixture)
                                     start_hanging_session, wait_rows)

WRAPPER = str(ROOT / "tools" / "with-display.sh")


# ---- the lock itself (no window) --------------------------------------------------------------------

def test_lock_refuses_a_second_holder_and_a_dead_holder_never_blocks(tmp_path):
    folder = tmp_path / "sub-P1_ses-01"
    with SessionLock(folder) as first:
        assert first.taken_over is None
        note = json.loads((folder / LOCK_FILE).read_text())
        assert note["pid"] == os.getpid()
        with pytest.raises(SessionLocked, match=f"pid {os.getpid()} on host"):
            SessionLock(folder).acquire()
    assert not folder.exists()  # released: the note is gone, and the folder that held nothing else too
    folder.mkdir()
    (folder / LOCK_FILE).write_text(json.dumps({"pid": 999999, "host": "lab-pc", "since": "then", "command": "x"}))
    with SessionLock(folder) as taken:  # a note without a live flock: its process died
        assert taken.taken_over["pid"] == 999999


def test_ids_with_a_final_newline_and_an_empty_experiment_are_refused(fixture_set, tmp_path, capsys):
    for bad in ("P01\n", "P01\n\n", "", "a/b"):
        with pytest.raises(ValueError):
            validate_id(bad)
    base = ["--stimuli", str(fixture_set), "--design", "demo", "--data-dir", str(tmp_path), "--no-dialog", "--check-only"]
    assert session_cli.main(base + ["--participant", "P01\n"]) == 2
    assert "invalid participant id" in capsys.readouterr().err
    assert session_cli.main(base + ["--participant", "P01", "--experiment="]) == 2
    assert "invalid experiment name ''" in capsys.readouterr().err
    assert session_cli.main(base + ["--participant", "P01"]) == 0
    assert not any(tmp_path.iterdir())  # a check writes nothing, not even a lock


def test_completed_session_message_does_not_suggest_resume(tmp_path):
    msg = str(SessionExists(tmp_path, 22, "completed"))
    assert "--resume" not in msg and "another session number" in msg
    assert "--resume" in str(SessionExists(tmp_path, 5, "running"))


# ---- two writers, kills, recovery (real windows) ----------------------------------------------------

@pytest.mark.display
def test_second_writer_is_refused_and_a_killed_writer_is_taken_over(fixture_set, tmp_path, display_env):
    data = tmp_path / "data"
    proc, folder = start_hanging_session(fixture_set, data, "sim05", 4, display_env)
    try:
        wait_rows(folder, 4, proc)
        second = run_cli(session_args(fixture_set, data, "sim05") + ["--resume"], display_env)
        assert second.returncode == 2, second.stderr
        assert "refusing a second writer" in second.stderr and f"pid {proc.pid} " in second.stderr
        assert proc.poll() is None  # the first writer was not disturbed
    finally:
        kill(proc)
    assert list(read_trials(folder).trial_index) == [0, 1, 2, 3]
    resumed = run_cli(session_args(fixture_set, data, "sim05") + ["--resume", "--max-trials", "2"], display_env)
    assert resumed.returncode == 4, resumed.stderr  # stopped after 2 trials of this run (keeps the test short)
    assert "took over the lock" in resumed.stderr and f"pid {proc.pid} " in resumed.stderr
    assert list(read_trials(folder).trial_index) == list(range(6))  # each trial once, in order
    assert not (folder / LOCK_FILE).exists()


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.display
@pytest.mark.parametrize("chain", ["exec", "script"])
def test_kill_9_of_the_display_wrapper_leaves_no_process_behind(chain, fixture_set, tmp_path):
    data = tmp_path / "data"
    folder = data / "demo" / "sub-sim06_ses-01"
    args = session_args(fixture_set, data, "sim06") + ["--sim-hang-after", "3"]
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"} | {"FVMATCH_FORCE_XVFB": "1"}
    # "script": like `make demo`, the wrapper runs a shell script that starts the session as its child
    cmd = [WRAPPER, CLI, *args] if chain == "exec" else [WRAPPER, "bash", "-c", f'"{CLI}" "$@"; echo ended', "bash", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        wait_rows(folder, 3, proc)
        tree = psutil.Process(proc.pid).children(recursive=True)
        tree.append(psutil.Process(proc.pid))
        cmdlines = " | ".join(" ".join(p.cmdline()) for p in tree)
        assert "Xvfb" in cmdlines and "fvmatch-session" in cmdlines, cmdlines
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(p) for p in tree):
            time.sleep(0.1)
        left = [f"{p.pid} {p.name()}" for p in tree if _alive(p)]
    finally:
        kill(proc)
        for p in tree if "tree" in locals() else []:
            if _alive(p):
                p.kill()
    assert not left, f"outlived the wrapper: {left}"
    assert list(read_trials(folder).trial_index) == [0, 1, 2]
    assert read_session_info(folder)["status"] == "running"


@pytest.mark.display
@pytest.mark.parametrize("how", ["plain", "resume"])
def test_kill_during_the_first_session_json_write_starts_cleanly(how, fixture_set, tmp_path, display_env):
    data = tmp_path / "data"
    folder = data / "demo" / "sub-sim07_ses-01"
    folder.mkdir(parents=True)
    (folder / "session.json.tmp").write_text('{"schema": "fvmatch.session", "exper')  # killed in the first write
    out = run_cli(session_args(fixture_set, data, "sim07") + ["--max-trials", "1"] + (["--resume"] if how == "resume" else []),
                  display_env)
    assert out.returncode == 4, out.stderr  # stopped by --max-trials after one trial: resumable
    assert "starting it" in out.stderr and len(read_trials(folder)) == 1
    assert len(list(folder.glob("session.json.tmp.restarted-*"))) == 1  # kept under another name, never deleted


@pytest.mark.display
def test_kill_before_the_first_trial_starts_cleanly(fixture_set, tmp_path, display_env):
    data = tmp_path / "data"
    proc, folder = start_hanging_session(fixture_set, data, "sim08", 0, display_env)
    try:
        wait_rows(folder, 0, proc, timeout=60)
        time.sleep(0.5)
    finally:
        kill(proc)
    assert read_session_info(folder)["n_trials_completed"] == 0 and len(read_trials(folder)) == 0
    out = run_cli(session_args(fixture_set, data, "sim08") + ["--max-trials", "1"], display_env)
    assert out.returncode == 2 and "--resume" in out.stderr  # its session.json holds the plan: resume it
    out = run_cli(session_args(fixture_set, data, "sim08") + ["--max-trials", "1", "--resume"], display_env)
    assert out.returncode == 4 and "resuming at trial 1" in out.stdout, out.stderr
    assert len(read_trials(folder)) == 1


def test_a_refused_session_leaves_no_folder_behind(tmp_path):
    folder = tmp_path / "data" / "exp" / "sub-P1_ses-01"
    with SessionLock(folder):
        assert folder.is_dir()
    assert not (tmp_path / "data").exists()
    (tmp_path / "data" / "exp").mkdir(parents=True)  # folders that were there before stay
    with SessionLock(folder):
        pass
    assert (tmp_path / "data" / "exp").is_dir() and not folder.exists()
