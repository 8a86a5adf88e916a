"""A whole online session in a real browser (headless chromium through chromedriver), clicking like a person,
against the built-in server on 127.0.0.1: every trial lands in trials.csv as it is answered; killing the
browser mid-session and opening the link again resumes with nothing lost or duplicated; the analysis reads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contracts.session import read_session_info, read_trials
from experiment.design import correct_assignment
from webdriver_client import CHROMEDRIVER, CHROMIUM, Browser

pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Debian's chromium and chromium-driver (make test installs them as root)")

ROOT = Path(__file__).resolve().parents[1]


def n_rows(folder: Path) -> int:
    p = folder / "trials.csv"
    return len(read_trials(folder)) if p.is_file() else 0


def wait_rows(folder: Path, n: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while n_rows(folder) < n:
        assert time.monotonic() < deadline, f"trial {n - 1} did not reach trials.csv"
        time.sleep(0.05)


def setup_screens(b: Browser, shots: Path | None = None) -> None:
    """Full screen, browser check, card calibration (the box left at its start size)."""
    b.find("#jspsych-fullscreen-btn")
    if shots:
        b.screenshot(shots / "online_fullscreen.png")
    b.click("#jspsych-fullscreen-btn")
    b.find("#end_resize_phase")
    if shots:
        b.screenshot(shots / "online_calibration.png")
    b.click("#end_resize_phase")


def answer_trial(b: Browser, trial, wrong: bool, change_first: bool) -> None:
    """Pair the rows like a person: candidate row, then its reference row; optionally a wrong pair first, then
    corrected (change before confirm); ``wrong`` swaps two pairs on purpose."""
    a = correct_assignment(trial.candidate_units)
    if wrong:
        a = [a[1], a[0], a[2]]
    b.find(f"#fv-stage[data-trial='{trial.trial_index}'][data-ready='1']")
    if change_first:
        b.click(f"#fv-candidate-{a[1]}")
        b.click("#fv-reference-0")  # a wrong pair, changed below
    for ref in (0, 1, 2):
        b.click(f"#fv-candidate-{a[ref]}")
        b.click(f"#fv-reference-{ref}")
    b.click("#fv-confirm:not(.disabled)")


def run_trials(b: Browser, plan_trials, start: int, stop: int, folder: Path, shots: Path | None = None) -> None:
    for i in range(start, stop):
        t = plan_trials[i]
        deadline = time.monotonic() + 20
        while not b.js(f"return !!document.querySelector(\"#fv-stage[data-trial='{i}'][data-ready='1']\")"):
            assert time.monotonic() < deadline, b.text()
            if b.js("return !!document.querySelector('#jspsych-html-button-response-btngroup button')"):
                if shots and "Block 1 of" in b.text():
                    b.screenshot(shots / "online_break.png")
                b.click("#jspsych-html-button-response-btngroup button")  # a break or practice-over screen
            time.sleep(0.05)
        answer_trial(b, t, wrong=(i % 5 == 3), change_first=(i % 4 == 1))
        if shots and i == start and t.is_practice:
            b.find("#fv-feedback")
            b.screenshot(shots / "online_practice_feedback.png")
        wait_rows(folder, i + 1)  # on disk before the next trial is shown
        rows = read_trials(folder)
        assert len(rows) == i + 1 and list(rows.trial_index) == list(range(i + 1))


def test_whole_online_session_in_a_browser_with_a_crash(online_study, tmp_path):
    from online.server import StudyServer
    from online.sessions import OnlineStudy

    data = tmp_path / "sessions"
    study = OnlineStudy(online_study, data)
    # FVMATCH_ONLINE_SCREENSHOTS=docs saves each screen (the README's screenshots were made this way)
    shots = Path(os.environ["FVMATCH_ONLINE_SCREENSHOTS"]) if os.environ.get("FVMATCH_ONLINE_SCREENSHOTS") else None
    if shots:
        shots.mkdir(parents=True, exist_ok=True)
    with StudyServer(study, port=0, quiet=True) as srv:
        link = srv.url + "?PROLIFIC_PID=P07&STUDY_ID=S1&SESSION_ID=abc"
        folder = data / study.experiment / "sub-P07_ses-01"
        b = Browser()
        try:
            b.get(link)
            setup_screens(b, shots)
            b.find("#jspsych-html-button-response-btngroup button")
            assert "Welcome, and thank you" in b.text()
            if shots:
                b.screenshot(shots / "online_instructions.png")
            b.click("#jspsych-html-button-response-btngroup button")  # instructions
            b.click("#jspsych-html-button-response-btngroup button")  # practice intro
            plan = study._plans["P07"]
            if shots:  # a trial with its pairs made, before confirm
                b.find("#fv-stage[data-trial='0'][data-ready='1']")
                a = correct_assignment(plan.trials[0].candidate_units)
                for ref in (0, 1, 2):
                    b.click(f"#fv-candidate-{a[ref]}")
                    b.click(f"#fv-reference-{ref}")
                b.screenshot(shots / "online_trial.png")
                b.click("#fv-confirm:not(.disabled)")
                wait_rows(folder, 1)
            run_trials(b, plan.trials, 1 if shots else 0, 6, folder, shots)
            saved_before = (folder / "trials.csv").read_bytes()
        finally:
            b.kill()  # the browser dies mid-session (trial 6 was on the screen)

        b = Browser()
        try:
            b.get(link)
            setup_screens(b)
            b.find("#jspsych-html-button-response-btngroup button")
            assert "continues with trial 7 of 22" in b.text()
            b.click("#jspsych-html-button-response-btngroup button")
            plan = study._plans["P07"]
            assert plan.start_index == 6
            run_trials(b, plan.trials, 6, len(plan.trials), folder, shots)
            b.find("#fv-end")
            deadline = time.monotonic() + 10
            while "Thank you" not in b.text():
                assert time.monotonic() < deadline, b.text()
                time.sleep(0.05)
            if shots:
                b.screenshot(shots / "online_end.png")
        finally:
            b.quit()

    assert (folder / "trials.csv").read_bytes().startswith(saved_before)  # nothing recorded was changed
    rows = read_trials(folder)
    assert list(rows.trial_index) == list(range(22))
    assert [list(map(int, a.split(";"))) for a in rows.candidate_units] == [list(t.candidate_units) for t in plan.trials]
    assert 0 < rows.trial_correct.mean() < 1  # the deliberate errors are recorded as errors
    clicks = [json.loads(c) for c in rows.clicks]
    assert all(c[-1][1] == "confirm" for c in clicks) and len(clicks[1]) == 9  # trial 1: a changed pair, then 3
    info = read_session_info(folder)
    assert info["status"] == "completed" and info["mode"] == "online" and len(info["runs"]) == 2
    assert info["online"]["calibration"]["px_per_deg"] > 5 and info["online"]["instructions_s"] > 0
    assert info["online"]["platform_ids"] == {"STUDY_ID": "S1", "SESSION_ID": "abc"}

    out = subprocess.run([sys.executable, "-m", "analysis.cli", str(data / study.experiment), "--out", str(tmp_path / "res"),
                          "--no-models", "--no-figures", "--n-boot", "50"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "res" / "accuracy_by_condition.csv").is_file()


def test_a_too_small_window_is_asked_to_grow(online_study, tmp_path):
    from online.server import StudyServer
    from online.sessions import OnlineStudy

    study = OnlineStudy(online_study, tmp_path / "sessions")
    with StudyServer(study, port=0, quiet=True) as srv:
        b = Browser(width=900, height=560)
        try:
            b.get(srv.url + "?participant=small01")
            b.click("#jspsych-fullscreen-btn")
            b.find("#browser-check-actual-width")
            assert "too small" in b.text() and "at least 1000 x 600" in b.text()
            assert not b.js("return !!document.getElementById('end_resize_phase')")  # no calibration, no trials
        finally:
            b.quit()
    assert read_trials(tmp_path / "sessions" / study.experiment / "sub-small01_ses-01").empty
