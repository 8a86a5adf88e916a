"""The runner's screens and input in a real window, in this process (Xvfb): practice feedback that waits
for Continue, clicks that arrive together, frame counts around the Escape question, text that must
fit, the handler file, Monitor Center calibrations and the refresh-rate record.

A scripted "person" acts through a hook on ``win.flip``: after given flips it presses the mouse
through PsychoPy's own pyglet handler (emulated presses, as in PsychoPy's tests) or types keys.
"""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.display


@pytest.fixture(scope="module", autouse=True)
def display():
    if os.environ.get("DISPLAY"):
        yield
        return
    r, w = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", "1920x1080x24", "-nolisten", "tcp"],
                            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    with os.fdopen(r) as f:
        os.environ["DISPLAY"] = f":{f.readline().strip()}"
    yield
    del os.environ["DISPLAY"]
    xvfb.terminate()
    xvfb.wait(timeout=10)


class GiveUp(Exception):
    """The scripted person ran out of patience: the screen did not react as it should."""


def _design(**changes):
    from experiment.config import design_from_dict, load_design

    raw = json.loads(json.dumps(load_design("demo").raw))
    for key, value in changes.items():
        table, k = key.split(".")
        raw[table][k] = value
    return design_from_dict(raw, "test-design")


@pytest.fixture
def screen(fixture_set, tmp_path):
    """(ui, plan, stimset, script): a person-mode UI on a demo design; ``script[n]`` runs after flip n."""
    from psychopy import visual

    from contracts.stimulus_set import load_stimulus_set
    from experiment.monitor import open_monitor
    from experiment.runner import _UI
    from experiment.storage import new_session

    design = _design(**{"timing.feedback_s": 0.05, "timing.iti_s": 0.0})
    stimset = load_stimulus_set(fixture_set)
    plan = new_session(tmp_path / "data", "demo", "P1", 1, design, stimset)
    mon, _ = open_monitor(design["monitor"])
    win = visual.Window(size=list(design["monitor"]["resolution"]), monitor=mon, units="deg", fullscr=False,
                        checkTiming=False, waitBlanking=False, color=[0, 0, 0])
    ui = _UI(win, mon, design["display"], None, tmp_path / "shots", None)
    script: dict = {}
    state = {"n": 0}
    flip = win.flip

    def scripted_flip(*a, **k):
        out = flip(*a, **k)
        state["n"] += 1
        for action in script.pop(state["n"], []):
            action()
        if state["n"] > 400:
            raise GiveUp(f"still waiting after {state['n']} flips")
        return out

    win.flip = scripted_flip
    yield ui, plan, stimset, script, state
    if hasattr(ui, "clicks"):
        ui.clicks.close()
    win.close()


def _click_row(ui, lay, kind, row):
    target = lay.confirm if kind == "confirm" else lay.rows[kind][row]
    return lambda: ui.sim_click(target.x, target.y)


def _answer_clicks(t):
    """Clicks that pair every reference row with its own unit's candidate row."""
    return [(("candidate", t.candidate_units.index(i)), ("reference", i)) for i in range(3)]


def test_practice_feedback_stays_until_continue_is_clicked(screen):
    ui, plan, stimset, script, flips = screen
    from experiment.layout import trial_layout

    t = plan.trials[0]
    assert t.is_practice
    lay = trial_layout(t.n_images, plan.design["display"])
    at = 3
    for a, b in _answer_clicks(t):
        script.setdefault(at, []).append(_click_row(ui, lay, *a))
        script.setdefault(at + 1, []).append(_click_row(ui, lay, *b))
        at += 2
    script.setdefault(at, []).append(_click_row(ui, lay, "confirm", None))
    continued = {"clicked": False}

    def press_continue():  # long after feedback_s (0.05 s): the screen must still be waiting for this click
        continued["clicked"] = True
        ui.sim_click(lay.confirm.x, lay.confirm.y)

    script[at + 60] = [lambda: ui.core.wait(0.1), press_continue]
    ui.run_trial(t, stimset, plan, progress="Trial 1 of 22")
    assert continued["clicked"], "practice feedback left before Continue was clicked"
    assert ui.last_feedback_s >= 0.1
    shot = np.asarray(Image.open(ui.screenshot_dir / "practice_feedback.png").convert("RGB")).astype(int)
    c = lay.confirm  # the Continue button (bright, not dimmed) sits where Confirm was
    from psychopy.tools.monitorunittools import deg2pix

    h, w = shot.shape[:2]
    cx, cy = int(w / 2 + deg2pix(c.x, ui.mon)), int(h / 2 - deg2pix(c.y, ui.mon))
    assert shot[cy, cx - int(deg2pix(c.w / 2.5, ui.mon))].tolist() != shot[5, 5].tolist()


def test_two_presses_between_two_flips_both_count(screen):
    ui, plan, stimset, script, flips = screen
    from experiment.layout import trial_layout

    t = next(x for x in plan.trials if not x.is_practice)
    lay = trial_layout(t.n_images, plan.design["display"])
    at = 3
    for a, b in _answer_clicks(t):  # candidate and reference row pressed between the same two flips
        script[at] = [_click_row(ui, lay, *a), _click_row(ui, lay, *b)]
        at += 1
    script[at] = [_click_row(ui, lay, "confirm", None)]
    row = ui.run_trial(t, stimset, plan, progress="x")
    assert [c[1] for c in row["clicks"]] == ["candidate", "reference"] * 3 + ["confirm"]
    assert row["trial_correct"] is True
    times = [c[0] for c in row["clicks"]]
    assert times == sorted(times)


def test_escape_question_flips_are_not_trial_frames(screen):
    ui, plan, stimset, script, flips = screen
    from experiment.layout import trial_layout

    t = next(x for x in plan.trials if not x.is_practice)
    lay = trial_layout(t.n_images, plan.design["display"])
    script[4] = [lambda: ui._pending_keys.extend(["escape", "x", "x", "x", "x", "x", "x", "n"])]  # 6 question flips
    at = 20
    for a, b in _answer_clicks(t):
        script[at] = [_click_row(ui, lay, *a)]
        script[at + 1] = [_click_row(ui, lay, *b)]
        at += 2
    script[at] = [_click_row(ui, lay, "confirm", None)]
    row = ui.run_trial(t, stimset, plan, progress="x")
    assert row["paused_s"] > 0  # the question was shown
    # Every recorded interval is between two trial flips: at most frames - 1 of them, drops among them.
    assert ui.last_n_intervals <= row["frames"] - 1
    assert row["frames_dropped"] <= ui.last_n_intervals


def test_instructions_that_do_not_fit_are_made_smaller(fixture_set, tmp_path):
    """demo.toml at 1280 x 720 px with text_deg 0.9: the instructions ran under the Start button."""
    from psychopy import visual

    from experiment.monitor import open_monitor
    from experiment.runner import INSTRUCTIONS, _UI
    from psychopy.tools.monitorunittools import deg2pix

    design = _design(**{"monitor.resolution": [1280, 720], "display.text_deg": 0.9})
    mon, _ = open_monitor(design["monitor"])
    win = visual.Window(size=[1280, 720], monitor=mon, units="deg", fullscr=False, checkTiming=False,
                        waitBlanking=False, color=[0, 0, 0])
    try:
        ui = _UI(win, mon, design["display"], None, tmp_path, None)
        ui.time_scale = 0.0
        from experiment.layout import message_button_y

        by = message_button_y(ui.h_deg, ui.text_h)
        flip = win.flip
        win.flip = lambda *a, **k: (flip(*a, **k), ui.sim_click(0, by))[0]
        ui.message(INSTRUCTIONS, button="Start", screenshot="instructions")
        shot = np.asarray(Image.open(tmp_path / "instructions.png").convert("RGB")).astype(int)
        button_top = int(360 - deg2pix(by + 1.1 * ui.text_h, mon))  # image row of the button's top edge
        band = shot[button_top - int(deg2pix(0.5 * ui.text_h, mon)):button_top - 3]
        assert not (band.min(axis=2) > 200).any(), "text runs into the button"
        assert (shot[:button_top].min(axis=2) > 200).sum() > 1000  # the text is there
        with pytest.raises(ValueError, match="display.text_deg"):
            ui.message(INSTRUCTIONS * 4, button="Start")
    finally:
        win.close()


def test_fitted_text_height():
    from experiment.layout import fitted_text_height

    assert fitted_text_height(0.8, 10.0, 12.0, 0.8) == 0.8
    assert 0.6 < fitted_text_height(0.8, 12.0, 10.0, 0.8) < 0.8 * 10 / 12
    assert fitted_text_height(0.8, 30.0, 10.0, 0.8) is None


def test_handler_csv_is_rewritten_without_the_overwrite_warning(tmp_path):
    from psychopy import data, logging

    from experiment.runner import _save_handler

    log = tmp_path / "psychopy.log"
    target = logging.LogFile(str(log), level=logging.WARNING, filemode="w")
    try:
        exp = data.ExperimentHandler(name="x", dataFileName=str(tmp_path / "x"), savePickle=False,
                                     saveWideText=False, autoLog=False)
        for i in range(3):
            exp.addData("trial_index", i)
            exp.nextEntry()
            _save_handler(exp, tmp_path / "x.csv")
        exp.abort()
        logging.flush()
    finally:
        logging.root.removeTarget(target)
    assert "overwritten" not in log.read_text()
    assert len((tmp_path / "x.csv").read_text().strip().splitlines()) == 4
    assert sorted(p.name for p in tmp_path.glob("x*")) == ["x.csv"]


@pytest.fixture
def monitor_folder(tmp_path, monkeypatch):
    from psychopy.monitors import calibTools

    monkeypatch.setattr(calibTools, "monitorFolder", str(tmp_path))
    return tmp_path


def test_a_saved_monitor_center_calibration_is_used(monitor_folder):
    from psychopy import monitors

    from experiment.monitor import open_monitor

    cal = monitors.Monitor("booth2", width=53.1, distance=60.0, gamma=2.2, autoLog=False)
    cal.setSizePix([1920, 1080])
    cal.save()
    cfg = {"name": "booth2", "width_cm": 53.1, "distance_cm": 60.0, "resolution": [1920, 1080]}
    mon, rec = open_monitor(cfg)
    assert rec["loaded"] is True and rec["name"] == "booth2"
    assert rec["gamma"] == pytest.approx(2.2)
    assert mon.getGamma() == pytest.approx(2.2)
    with pytest.raises(ValueError, match="monitor.width_cm = 40"):
        open_monitor({**cfg, "width_cm": 40.0}, "lab.toml")
    with pytest.raises(ValueError, match="monitor.resolution"):
        open_monitor({**cfg, "resolution": [1280, 720]}, "lab.toml")
    mon, rec = open_monitor({**cfg, "name": "booth9"})
    assert rec["loaded"] is False and "booth9" in rec["note"]
    assert mon.getWidth() == 53.1 and mon.getDistance() == 60.0 and list(mon.getSizePix()) == [1920, 1080]


class _FakeWin:
    def __init__(self, fps):
        self.fps = fps
        self.monitorFramePeriod = self.refreshThreshold = None

    def getActualFrameRate(self, **kw):
        return self.fps


@pytest.mark.parametrize("fps, status, warns, period", [
    (None, "could not be measured", True, 16.667),
    (59.9, "as expected", False, 16.694),
    (75.0, "differs from expected", True, 16.667),
])
def test_refresh_rate_record_says_what_was_measured(fps, status, warns, period):
    from experiment.monitor import measure_refresh

    win = _FakeWin(fps)
    rec, warning = measure_refresh(win, 60.0, attempt=True)
    assert rec["status"] == status and rec["expected_hz"] == 60.0
    assert rec["measured_hz"] == (round(fps, 3) if fps else None)
    assert (warning is not None) == warns
    assert rec["frame_period_ms"] == pytest.approx(period, abs=1e-3)
    assert win.refreshThreshold == pytest.approx(1.2 * period / 1000, rel=1e-3)
    rec, warning = measure_refresh(_FakeWin(60.0), 60.0, attempt=False, why_not="--no-timing-check")
    assert rec["status"] == "not measured" and rec["measured_hz"] is None and warning is None


def test_escape_mid_trial_keeps_the_clicks_made_so_far(screen):
    ui, plan, stimset, script, flips = screen
    from experiment.layout import trial_layout
    from experiment.runner import SessionAborted

    t = next(x for x in plan.trials if not x.is_practice)
    lay = trial_layout(t.n_images, plan.design["display"])
    (a, b), _, _ = _answer_clicks(t)
    script[3] = [_click_row(ui, lay, *a)]
    script[4] = [_click_row(ui, lay, *b)]
    script[6] = [lambda: ui._pending_keys.extend(["escape", "y"])]
    with pytest.raises(SessionAborted):
        ui.run_trial(t, stimset, plan, progress="x")
    rec = ui.aborted_trial
    assert rec["trial_index"] == t.trial_index and rec["onset"]
    assert [c[1:] for c in rec["clicks"]] == [list(a), list(b)]
