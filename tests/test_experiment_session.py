"""The PsychoPy session end to end, in a real window (Xvfb): files and rows, screenshots checked for
content, SIGKILL mid-session and --resume, Escape, refusal of tampered stimulus sets.

Sessions run as subprocesses of the installed ``fvmatch-session`` with a simulated participant, which
clicks through emulated pyglet mouse presses (the same polling code as for a person). When no DISPLAY is
set, the module starts its own Xvfb (24-bit) and stops it by its pid.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from contracts.session import TRIAL_COLUMNS, read_session_info, read_trials

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "fvmatch-session")
SCREENS = Path("/work/briefs/screens")  # copies for the README (written when that folder exists)

pytestmark = pytest.mark.display


@pytest.fixture(scope="module")
def display_env():
    env = dict(os.environ)
    if env.get("DISPLAY"):
        yield env
        return
    r, w = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", "1920x1080x24", "-nolisten", "tcp"],
                            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    with os.fdopen(r) as f:
        number = f.readline().strip()
    assert number, "Xvfb did not start (install xvfb, or run the tests with tools/with-display.sh)"
    env["DISPLAY"] = f":{number}"
    yield env
    xvfb.terminate()
    xvfb.wait(timeout=10)


def run_cli(args: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def session_args(stimuli: Path, data: Path, participant: str, policy: str = "oracle", design: str = "demo") -> list[str]:
    return ["--stimuli", str(stimuli), "--design", design, "--experiment", "demo", "--participant", participant,
            "--session", "1", "--simulate", policy, "--data-dir", str(data), "--no-dialog"]


def start_hanging_session(stimuli: Path, data: Path, participant: str, hang_after: int,
                          env: dict) -> tuple[subprocess.Popen, Path]:
    """A simulated session that stops answering after ``hang_after`` trials (its window stays up), and its folder."""
    proc = subprocess.Popen([CLI, *session_args(stimuli, data, participant), "--sim-hang-after", str(hang_after)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    return proc, data / "demo" / f"sub-{participant}_ses-01"


def wait_rows(folder: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until trials.csv holds ``n`` trials (0: the file exists), failing if the session ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        f = folder / "trials.csv"
        if f.is_file() and f.read_text().count("\n") >= n + 1:
            return
        time.sleep(0.05)
    raise AssertionError(f"{n} rows not written (exit {proc.poll()}): {proc.stderr.read().decode() if proc.poll() is not None else ''}")


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def pix_per_deg(monitor: dict) -> float:
    return monitor["resolution"][0] / monitor["width_cm"] * monitor["distance_cm"] * 0.017455


def check_trial_screenshot(png: Path, row: pd.Series, monitor: dict, stimuli_root: Path, colors: list[str]) -> None:
    """Every image of the trial is where trials.csv says, showing its file; all three pair colours drawn."""
    shot = np.asarray(Image.open(png).convert("RGB")).astype(float)
    h, w, _ = shot.shape
    assert (w, h) == tuple(monitor["resolution"])
    ppd = pix_per_deg(monitor)
    stimuli = json.loads(row["stimuli"])
    assert len(stimuli) == 6 * row["n_images"]
    files = sorted({s["file"] for s in stimuli})
    for s in stimuli:
        half = s["size"] * ppd / 2
        cx, cy = w / 2 + s["x"] * ppd, h / 2 - s["y"] * ppd
        x0, x1, y0, y1 = (int(round(v)) for v in (cx - half, cx + half, cy - half, cy + half))
        assert 0 <= x0 and x1 <= w and 0 <= y0 and y1 <= h, f"{s['file']} is off screen"
        assert x1 - x0 >= 64, "images are drawn too small"
        patch = shot[y0 + 3:y1 - 3, x0 + 3:x1 - 3]
        assert patch.std() > 8, f"region of {s['file']} is flat: nothing drawn"

        def diff(rel: str) -> float:
            src = Image.open(stimuli_root / rel).convert("RGB").resize((x1 - x0, y1 - y0), Image.BILINEAR)
            return float(np.abs(np.asarray(src, float)[3:-3, 3:-3] - patch).mean())

        own = diff(s["file"])
        assert own < 20, f"screen region at {s['x']}, {s['y']} does not show {s['file']} (mean abs diff {own:.1f})"
        others = [diff(f) for f in files if f != s["file"]][:4]
        assert all(own < o for o in others), "a region matches another file better than its own"
    for c in colors:
        rgb = np.array([int(c[i:i + 2], 16) for i in (1, 3, 5)], float)
        near = (np.abs(shot - rgb).max(axis=2) <= 10).sum()
        assert near > 200, f"pair colour {c} is not drawn ({near} px)"


def check_title_is_one_line(png: Path, n: int, design: dict) -> None:
    """White text above the rows is only the title's single line (no wrapped line running into the rows)."""
    from experiment.layout import trial_layout

    shot = np.asarray(Image.open(png).convert("RGB")).astype(int)
    h = shot.shape[0]
    ppd = pix_per_deg(design["monitor"])
    lay = trial_layout(n, design["display"])
    text = design["display"]["text_deg"]
    top_row = max(r.y + r.h / 2 for r in lay.rows["reference"])
    white_rows = np.nonzero((shot.min(axis=2) > 240).any(axis=1))[0]
    above = white_rows[white_rows < h / 2 - top_row * ppd - 2]
    assert len(above), "no title"
    lo, hi = h / 2 - (lay.title_y + text) * ppd, h / 2 - (lay.title_y - text) * ppd
    assert lo <= above.min() and above.max() <= hi, f"text outside the title line: rows {above.min()}-{above.max()}"
    assert above.max() - above.min() < 1.4 * text * ppd, "the title wraps onto a second line"


def test_simulated_session_files_rows_and_screenshots(fixture_set, tmp_path, display_env):
    shots = tmp_path / "shots"
    data = tmp_path / "data"
    out = run_cli(session_args(fixture_set, data, "sim01", "noisy:0.8") + ["--screenshots", str(shots)], display_env)
    assert out.returncode == 0, out.stderr
    assert "completed: 22 of 22 trials saved" in out.stdout
    folder = data / "demo" / "sub-sim01_ses-01"
    info = read_session_info(folder)
    assert info["status"] == "completed" and info["simulated"] == "noisy:0.8" and info["ended"]
    assert info["n_trials_planned"] == info["n_trials_completed"] == 22
    assert info["design"]["counterbalance"] == 0 and info["design"]["design"]["name"] == "demo"
    assert info["frame_stats"]["frames"] > 0 and info["software"]["psychopy"]
    # lab records (session 1.3)
    run = info["runs"][0]
    assert run["monitor_center"]["loaded"] is False and run["refresh"]["status"] == "not measured"
    assert run["refresh_measured"] is False and run["refresh"]["expected_hz"] == 60.0
    assert run["runtime_info"]["openGLVendor"] and "windowGamma" in run["runtime_info"]
    assert info["design"]["reference_side"] == "left" and len(info["display_sha256"]) == 64
    assert [b["after_block"] for b in info["breaks"]] == [1] and info["breaks"][0]["duration_s"] >= 0
    assert info["participant_info"] == {}
    assert info["instructions_s"] >= 0  # session 1.5

    with open(folder / "trials.csv") as f:
        assert f.readline().strip().split(",") == list(TRIAL_COLUMNS)
    df = read_trials(folder)
    assert len(df) == 22 and list(df.trial_index) == list(range(22))
    assert list(df.is_practice) == [1, 1] + [0] * 20 and df.is_catch.sum() == 2
    assert set(df.block) == {0, 1, 2}
    for _, r in df.iterrows():
        clicks = json.loads(r["clicks"])
        assert clicks[-1][1] == "confirm" and clicks[-1][2] is None
        assert r["rt_first_click"] == clicks[0][0] <= r["rt_confirm"] == clicks[-1][0]
        assert r["frames"] >= len(clicks)
        assert len(json.loads(r["stimuli"])) == 6 * r["n_images"]
    assert df[~df.is_catch.astype(bool)].shape[0] == 20

    psy = sorted(p.name for p in (folder / "psychopy").iterdir())
    handler = [p for p in psy if p.endswith(".csv") and not p.endswith("_conditions.csv")]
    assert len(handler) == 1 and not any("_1." in p for p in psy), psy  # no duplicate from an exit save
    assert handler[0].startswith("sim01_demo_") and any(p.endswith(".log") for p in psy)
    hdf = pd.read_csv(folder / "psychopy" / handler[0])
    assert len(hdf) == 22 and list(hdf.trial_index) == list(df.trial_index)
    assert list(hdf.assignment) == list(df.assignment)

    design = info["design"]
    names = {p.stem for p in shots.glob("*.png")}
    assert {"instructions", "trial_exemplar", "trial_feature_vis", "practice_feedback", "break"} <= names
    for t in ("exemplar", "feature_vis"):
        row = df[(df.trial_type == t) & (df.is_catch == 0)].iloc[0]  # the first trial of the type is the one shot
        check_trial_screenshot(shots / f"trial_{t}.png", row, design["monitor"], fixture_set, design["display"]["pair_colors"])
    catch = df[df.is_catch == 1].iloc[0]
    check_trial_screenshot(shots / "trial_catch.png", catch, design["monitor"], fixture_set, design["display"]["pair_colors"])
    for name, n in (("trial_exemplar", 3), ("trial_catch", catch["n_images"])):
        check_title_is_one_line(shots / f"{name}.png", n, design)
    ins = np.asarray(Image.open(shots / "instructions.png").convert("RGB")).astype(int)
    white = (ins.min(axis=2) > 230).mean()
    assert 0.01 < white < 0.2, f"instruction text coverage {white:.3f}"
    rows_with_text = np.nonzero((ins.min(axis=2) > 230).any(axis=1))[0]
    assert rows_with_text.min() > 10 and rows_with_text.max() < ins.shape[0] - 10  # no clipped text
    if SCREENS.is_dir():
        for p in shots.glob("*.png"):
            shutil.copy(p, SCREENS / p.name)


def test_odd_counterbalance_index_puts_the_reference_rows_on_the_right(fixture_set, tmp_path, display_env):
    shots = tmp_path / "shots"
    out = run_cli(session_args(fixture_set, tmp_path / "data", "sim07") + ["--counterbalance", "1", "--screenshots", str(shots)],
                  display_env)
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "data" / "demo" / "sub-sim07_ses-01"
    info = read_session_info(folder)
    assert info["design"]["counterbalance"] == 1 and info["design"]["reference_side"] == "right"
    df = read_trials(folder)
    for _, r in df.iterrows():
        stim = json.loads(r["stimuli"])
        assert all(s["x"] > 0 for s in stim if s["side"] == "reference") and all(s["x"] < 0 for s in stim if s["side"] == "candidate")
    design = info["design"]
    row = df[(df.trial_type == "exemplar") & (df.is_catch == 0)].iloc[0]
    check_trial_screenshot(shots / "trial_exemplar.png", row, design["monitor"], fixture_set, design["display"]["pair_colors"])


def test_largest_n_fits_the_default_lab_screen(fixture_set, tmp_path, display_env):
    """n = 5 on the default design's monitor and display settings: all 30 images on screen, right files."""
    import tomllib

    raw = tomllib.loads((ROOT / "experiment" / "designs" / "default.toml").read_text())
    raw["design"].update(n_images=[5], trials_per_cell=1, blocks=1, max_triplet_uses=1)
    raw["practice"]["trials"] = 0
    raw["catch"]["per_block"] = 0
    raw["monitor"]["fullscreen"] = False
    raw["timing"]["min_break_s"] = 0.0
    toml = "\n".join(f"[{t}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in kv.items()) for t, kv in raw.items())
    (tmp_path / "n5.toml").write_text(toml)
    shots = tmp_path / "shots"
    out = run_cli(session_args(fixture_set, tmp_path / "data", "n5", design=str(tmp_path / "n5.toml"))
                  + ["--screenshots", str(shots)], display_env)
    assert out.returncode == 0, out.stderr
    df = read_trials(tmp_path / "data" / "demo" / "sub-n5_ses-01")
    assert len(df) == 6 and set(df.n_images) == {5} and df.trial_correct.all()  # oracle
    row = df[df.trial_type == "feature_vis"].iloc[0]
    check_trial_screenshot(shots / "trial_feature_vis.png", row, raw["monitor"], fixture_set, raw["display"]["pair_colors"])
    if SCREENS.is_dir():
        shutil.copy(shots / "trial_feature_vis.png", SCREENS / "trial_feature_vis_n5_lab.png")
        shutil.copy(shots / "trial_exemplar.png", SCREENS / "trial_exemplar_n5_lab.png")


def test_sigkill_keeps_completed_trials_and_resume_continues_in_order(fixture_set, tmp_path, display_env):
    data = tmp_path / "data"
    proc, folder = start_hanging_session(fixture_set, data, "sim02", 5, display_env)
    try:
        wait_rows(folder, 5, proc)
        time.sleep(0.3)  # the simulated participant has stopped: trial 6 is on screen, unanswered
    finally:
        kill(proc)
    assert proc.returncode == -signal.SIGKILL
    saved = read_trials(folder)
    assert list(saved.trial_index) == [0, 1, 2, 3, 4]
    info = read_session_info(folder)
    assert info["status"] == "running" and info["n_trials_completed"] == 5
    handler = [p for p in (folder / "psychopy").glob("sim02_demo_*.csv") if not p.name.endswith("_conditions.csv")]
    assert len(handler) == 1 and len(pd.read_csv(handler[0])) == 5  # rewritten after every trial

    refused = run_cli(session_args(fixture_set, data, "sim02"), display_env)
    assert refused.returncode == 2 and "never overwritten" in refused.stderr and "--resume" in refused.stderr
    assert len(read_trials(folder)) == 5

    resumed = run_cli(session_args(fixture_set, data, "sim02") + ["--resume"], display_env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at trial 6" in resumed.stdout
    df = read_trials(folder)
    assert list(df.trial_index) == list(range(22))
    info = read_session_info(folder)
    assert info["status"] == "completed" and [r["start_index"] for r in info["runs"]] == [0, 5]

    # the same order as an uninterrupted session of the same participant
    ref = run_cli(session_args(fixture_set, tmp_path / "ref", "sim02"), display_env)
    assert ref.returncode == 0, ref.stderr
    full = read_trials(tmp_path / "ref" / "demo" / "sub-sim02_ses-01")
    cols = ["trial_index", "block", "trial_type", "layer_group", "n_images", "unit_0", "unit_1", "unit_2", "candidate_units"]
    pd.testing.assert_frame_equal(df[cols], full[cols])
    files = lambda d: [[s["file"] for s in json.loads(x)] for x in d.stimuli]  # noqa: E731
    assert files(df) == files(full)

    again = run_cli(session_args(fixture_set, data, "sim02") + ["--resume"], display_env)
    assert again.returncode == 2 and "already completed" in again.stderr


def test_escape_asks_then_ends_cleanly(fixture_set, tmp_path, display_env):
    data = tmp_path / "data"
    out = run_cli(session_args(fixture_set, data, "sim03") + ["--sim-escape-after", "3"], display_env)
    assert out.returncode == 3, out.stderr
    folder = data / "demo" / "sub-sim03_ses-01"
    info = read_session_info(folder)
    assert info["status"] == "aborted" and info["ended"] and info["n_trials_completed"] == 3
    assert "aborted_trial" not in info["runs"][-1]  # Escape came between trials (a mid-trial one: test_experiment_screens)
    assert len(read_trials(folder)) == 3
    log = next((folder / "psychopy").glob("*.log")).read_text()
    assert "EmulatedKey" in log  # the abort went through PsychoPy's key handling (Escape, then Y)


DIALOG_DRIVER = """
import sys
from PyQt6 import QtCore, QtWidgets
from PyQt6.QtTest import QTest
from psychopy.gui import qtgui
from experiment.cli import main

typed = {"P11": 0}

def answer():  # a scripted experimenter: types into the first dialog, then presses OK on every dialog
    app = QtWidgets.QApplication.instance()
    for w in [w for w in app.topLevelWidgets() if w.isVisible() and isinstance(w, QtWidgets.QDialog)]:
        edits = w.findChildren(QtWidgets.QLineEdit)
        if edits and not typed["P11"]:
            for edit, text in zip(edits, ("P11", "3")):
                edit.selectAll()
                QTest.keyClicks(edit, text)
            typed["P11"] = 1
        print("dialog:", w.windowTitle(), flush=True)
        w.findChildren(QtWidgets.QDialogButtonBox)[0].button(QtWidgets.QDialogButtonBox.StandardButton.Ok).click()
    QtCore.QTimer.singleShot(100, answer)

qtgui.ensureQtApp()
QtCore.QTimer.singleShot(100, answer)
sys.exit(main(sys.argv[1:]))
"""


def test_real_psychopy_dialogs_ask_ids_and_offer_resume(fixture_set, tmp_path, display_env):
    """PsychoPy's own Qt dialogs (DlgFromDict for the ids, Dlg to offer resuming), answered by typing."""
    from contracts.session import write_session_info
    from contracts.stimulus_set import load_stimulus_set
    from experiment.config import load_design
    from experiment.storage import new_session

    driver = tmp_path / "driver.py"
    driver.write_text(DIALOG_DRIVER)
    args = ["--stimuli", str(fixture_set), "--design", "demo", "--data-dir", str(tmp_path / "data"), "--check-only"]
    out = subprocess.run([sys.executable, str(driver), *args], env=display_env, capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "dialog: fvmatch: demo" in out.stdout and "sub-P11_ses-03: 22 trials" in out.stdout
    assert "counterbalance 0" in out.stdout and "resuming" not in out.stdout

    plan = new_session(tmp_path / "data", "demo", "P11", 3, load_design("demo"), load_stimulus_set(fixture_set))
    plan.folder.mkdir(parents=True)
    write_session_info(plan.folder, plan.info)
    out = subprocess.run([sys.executable, str(driver), *args], env=display_env, capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "dialog: Session exists" in out.stdout and "resuming at trial 1" in out.stdout


def test_tampered_stimulus_set_is_refused(fixture_set, tmp_path, capsys):
    from experiment.cli import main

    bad = tmp_path / "set"
    shutil.copytree(fixture_set, bad)
    imgs = sorted((bad / "images").rglob("*.png"))
    with open(imgs[0], "ab") as f:
        f.write(b"x")
    imgs[1].unlink()
    rc = main(["--stimuli", str(bad), "--design", "demo", "--participant", "P1", "--data-dir", str(tmp_path / "d"),
               "--no-dialog", "--simulate", "oracle"])
    err = capsys.readouterr().err
    assert rc == 2 and "refusing to start" in err
    assert f"changed file (sha256 differs from manifest): {imgs[0].relative_to(bad).as_posix()}" in err
    assert f"missing file: {imgs[1].relative_to(bad).as_posix()}" in err
    assert not (tmp_path / "d").exists()
    (bad / "manifest.json").write_text("{")
    rc = main(["--stimuli", str(bad), "--participant", "P1", "--no-dialog", "--check-only"])
    assert rc == 2 and "manifest.json" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("xdotool") is None,
                    reason="xdotool not installed (apt-get install xdotool): the real-X11-input test cannot run")
def test_person_session_driven_by_real_x11_clicks_and_keys(fixture_set, tmp_path, display_env):
    """No simulation: xdotool sends real X11 mouse clicks and key presses, as a person's hardware would.

    The driver reads the right answers from the conditions file the session writes, pairs every row
    correctly, presses Escape then N once (the session must continue), and closes the end screen.
    """
    import csv

    from experiment.config import load_design
    from experiment.design import correct_assignment
    from experiment.layout import message_button_y, screen_size_deg, trial_layout

    toml = tmp_path / "person.toml"
    toml.write_text('[design]\nname = "person"\nseed = 1\ntrial_types = ["exemplar", "feature_vis"]\nlayer_groups = ["early"]\n'
                    'n_images = [3]\ntrials_per_cell = 1\nblocks = 1\n[display]\nimage_deg = 2.6\n[monitor]\ndistance_cm = 57.0\n'
                    'width_cm = 34.0\nresolution = [1280, 800]\nfullscreen = false\n[timing]\niti_s = 0.2\n')
    design = load_design(str(toml))
    mon, disp = design["monitor"], design["display"]
    ppd = pix_per_deg(mon)
    w_deg, h_deg = screen_size_deg(mon["width_cm"], mon["distance_cm"], mon["resolution"])
    data = tmp_path / "data"
    folder = data / "person" / "sub-P9_ses-01"
    proc = subprocess.Popen([CLI, "--stimuli", str(fixture_set), "--design", str(toml), "--participant", "P9",
                             "--data-dir", str(data), "--no-dialog", "--no-timing-check"], env=display_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)

    def xdo(*args: str) -> str:
        return subprocess.run(["xdotool", *args], env=display_env, capture_output=True, text=True, timeout=20).stdout

    def wait_log(fragment: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()
            logs = list((folder / "psychopy").glob("*.log")) if (folder / "psychopy").is_dir() else []
            if logs and fragment in logs[0].read_text():
                return
            time.sleep(0.05)
        raise AssertionError(f"never logged: {fragment}")

    try:
        wait_log("screen shown: Welcome")
        wid = xdo("search", "--name", "PsychoPy").split()[0]

        def click(x: float, y: float) -> None:
            xdo("mousemove", "--window", wid, str(round(640 + x * ppd)), str(round(400 - y * ppd)), "click", "1")
            time.sleep(0.1)

        click(0, message_button_y(h_deg, disp["text_deg"]))
        with open(next((folder / "psychopy").glob("*_conditions.csv"))) as f:
            plan = list(csv.DictReader(f))
        lay = trial_layout(3, disp)
        for k, trial in enumerate(plan):
            wait_log(f"trial {k} onset")
            answer = correct_assignment(tuple(int(v) for v in trial["candidate_units"].split(";")))
            for ref, cand in enumerate(answer):
                click(lay.rows["candidate"][cand].x, lay.rows["candidate"][cand].y)
                click(lay.rows["reference"][ref].x, lay.rows["reference"][ref].y)
            if k == 0:  # Escape asks; N continues the same trial
                xdo("windowfocus", wid)
                xdo("key", "Escape")
                time.sleep(1.5)  # long enough that no load-induced delay between the clicks can reach it
                xdo("key", "n")
                time.sleep(0.2)
            click(lay.confirm.x, lay.confirm.y)
        wait_log("screen shown: Thank you")
        time.sleep(1.1)  # the end screen's button is active after 1 s
        click(0, message_button_y(h_deg, disp["text_deg"]))
        assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    df = read_trials(folder)
    assert len(df) == 2 and df.trial_correct.all() and set(df.trial_type) == {"exemplar", "feature_vis"}
    for _, r in df.iterrows():
        clicks = json.loads(r["clicks"])
        assert [c[1] for c in clicks] == ["candidate", "reference"] * 3 + ["confirm"]
        assert all(b[0] > a[0] for a, b in zip(clicks, clicks[1:]))  # real, increasing press times
    # Trial 0 paused on the Escape question (1.5 s between the keys), which lies between its last pairing click
    # and its confirm click: in wall time they are more than the pause apart. On the trial's clock the pause is
    # taken out, so they are closer than the pause unless something else delayed them by more than 1.5 s. No
    # fixed time limit: CPU load cannot fail this.
    assert df.paused_s[0] >= 1.0 and df.paused_s[1] == 0
    clicks0 = json.loads(df.clicks[0])
    assert 0 < clicks0[-1][0] - clicks0[-2][0] < df.paused_s[0]
    info = read_session_info(folder)
    assert info["status"] == "completed" and info["simulated"] is None
    # session 1.5: the lab records the time on the instructions, and the shared exclusion rules read it
    from analysis.exclusion_rules import ExclusionRules
    from analysis.exclusions import evaluate_session

    assert info["instructions_s"] > 0
    verdict = evaluate_session(df, info, ExclusionRules())
    assert verdict.measures["instructions_s"] == info["instructions_s"] and 0 < verdict.measures["session_minutes"] < 10
    assert "instructions" not in verdict.not_evaluated and "total_time" not in verdict.not_evaluated
    log = next((folder / "psychopy").glob("*.log")).read_text()
    assert "Keypress: escape" in log and "Keypress: n" in log and "Emulated" not in log


@pytest.mark.slow
def test_default_study_design_runs_end_to_end(tmp_path, display_env):
    """The real study design (80 trials, n up to 5, 4 blocks, breaks) with a set of 10 units per group (3 of
    them reserved for practice)."""
    from stimset_fixture import make_fixture_set

    stim = make_fixture_set(tmp_path / "set10", tmp_path / "coll", units_per_group=10, size=96)
    data = tmp_path / "data"
    args = ["--stimuli", str(stim), "--design", "default", "--experiment", "study", "--participant", "P03",
            "--simulate", "noisy:0.7", "--data-dir", str(data), "--no-dialog"]
    out = run_cli(args, display_env, timeout=600)
    assert out.returncode == 0, out.stderr
    df = read_trials(data / "study" / "sub-P03_ses-01")
    main = df[(df.is_practice == 0) & (df.is_catch == 0)]
    assert len(df) == 80 and len(main) == 72 and df.is_catch.sum() == 4 and df.is_practice.sum() == 4
    assert set(main.groupby(["trial_type", "layer_group", "n_images"]).size()) == {4}
    triplets = df[df.is_practice == 0].apply(lambda r: frozenset((r.unit_0, r.unit_1, r.unit_2)), axis=1)
    assert triplets.is_unique  # max_triplet_uses = 1
    practice_units = set(df.loc[df.is_practice == 1, ["unit_0", "unit_1", "unit_2"]].values.ravel())
    assert len(practice_units) == 9 and not practice_units & set().union(*triplets)  # reserved: never in main trials
    assert 0.55 < main.trial_correct.mean() < 0.85
