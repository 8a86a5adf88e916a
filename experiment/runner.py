"""The PsychoPy session: window, instructions, practice with feedback, blocks with breaks, trials.

PsychoPy's ``visual`` needs a display, so it is imported inside ``run_session`` only. Data safety:
every finished trial is appended to trials.csv and fsync'd (``contracts.session.TrialLog``) before
the next trial starts; session.json is rewritten atomically after each trial; PsychoPy's
``ExperimentHandler`` wide CSV (``psychopy/``) is rewritten after each trial with collision method
'overwrite' and never autosaved (no ``_1.csv`` duplicates), and gets only fields without quotes.

Simulated participants (``--simulate``) press the real (emulated) pyglet mouse button at the
screen position of the row they choose; the same polling code then reads the click as for a person.
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

from contracts.session import PSYCHOPY_DIR, TRIALS_FILE, TrialLog, now_iso
from contracts.stimulus_set import StimulusSet
from experiment.clicks import ClickBuffer
from experiment.design import TrialSpec, score
from experiment.layout import MIN_TEXT_SCALE, fitted_text_height, message_button_y, screen_size_deg, trial_layout
from experiment.matching import PairingState
from experiment.monitor import measure_refresh, open_monitor, runtime_info
from experiment.simulate import SimulatedParticipant
from experiment.storage import SessionPlan, save_info, trial_row

# Handler columns: scalars only (saveAsWideText does not escape quotes, so no JSON here).
HANDLER_FIELDS = ("experiment", "participant", "session", "trial_index", "block", "is_practice", "is_catch",
                  "trial_type", "layer_group", "n_images", "unit_0", "unit_1", "unit_2", "candidate_units",
                  "assignment", "correct_0", "correct_1", "correct_2", "n_correct", "trial_correct",
                  "rt_first_click", "rt_confirm", "paused_s", "frames", "frames_dropped", "onset")

def instructions(reference_side: str = "left") -> str:
    """The instruction text for reference rows on ``reference_side`` (candidate rows on the other)."""
    ref, cand = ("LEFT", "RIGHT") if reference_side == "left" else ("RIGHT", "LEFT")
    return (
        "Welcome, and thank you for taking part.\n\n"
        f"On each screen you see three rows of images on the {ref}. Each row shows what one unit of an "
        "artificial neural network responds to most strongly.\n\n"
        f"On the {cand} are three more rows, one for each of the same three units, in shuffled order. "
        "They show either other photographs or synthetic images made to excite the unit.\n\n"
        f"Your task: pair every row on the {cand.lower()} with the row on the {ref.lower()} that shows the same unit. "
        f"Click a row on the {cand.lower()}, then the row on the {ref.lower()} that belongs to it. Matching colours "
        "and a line show each pair; click again to change a pair. When all three rows are paired, click Confirm.\n\n"
        "Take the time you need; accuracy matters more than speed. You can end the session at any time "
        "with the Escape key."
    )


INSTRUCTIONS = instructions("left")


RIGHT_RGB = [-0.6, 0.6, -0.6]
WRONG_RGB = [0.8, -0.7, -0.7]


class SessionAborted(Exception):
    """The participant (or experimenter) confirmed Escape."""


def _hex_to_rgb(h: str) -> list[float]:
    return [int(h[i:i + 2], 16) / 127.5 - 1 for i in (1, 3, 5)]


def run_session(plan: SessionPlan, stimset: StimulusSet, sim: SimulatedParticipant | None = None,
                screenshot_dir: Path | None = None, sim_escape_after: int | None = None,
                max_trials: int | None = None, sim_hang_after: int | None = None, check_timing: bool = True) -> str:
    """Run the remaining trials of ``plan``; returns the final status (completed | aborted | running).

    ``max_trials`` stops after that many trials in this run, leaving the session 'running' (for tests
    of resume); ``sim_escape_after`` makes the simulated participant press Escape and confirm after that
    many trials of this run (for tests of the abort path); ``sim_hang_after`` makes it stop clicking
    after that many trials (the window keeps running: for tests that kill the process mid-session).
    """
    from psychopy import core, data, event, logging, monitors, visual  # noqa: F401  (needs a display)

    design = plan.design
    mon_cfg, disp = design["monitor"], design["display"]
    mon, monitor_center = open_monitor(mon_cfg, design.path)  # ValueError before anything is written
    psydir = plan.folder / PSYCHOPY_DIR
    psydir.mkdir(parents=True, exist_ok=True)
    participant, experiment = plan.info["participant"], plan.info["experiment"]
    stem = f"{participant}_{experiment}_{data.getDateStr(format='%Y-%m-%d_%H%M%S')}"
    logfile = logging.LogFile(str(psydir / f"{stem}.log"), level=logging.EXP, filemode="w")
    # A simulated session runs unpaced, so PsychoPy's dropped-frame warnings are meaningless there.
    logging.console.setLevel(logging.ERROR if sim is not None else logging.WARNING)

    run_record = {"started": now_iso(), "ended": None, "start_index": plan.start_index, "status": "running",
                  "psychopy_files": stem, "simulated": sim.policy if sim else None}
    plan.info.setdefault("runs", []).append(run_record)
    plan.info["status"] = "running"
    save_info(plan)

    run_record["monitor_center"] = monitor_center
    if not monitor_center["loaded"] and sim is None:
        print(f"fvmatch-session: note: {monitor_center['note']} (see README: Monitor Center)", file=sys.stderr)
    # The refresh rate is measured below (measure_refresh), against the design's monitor.refresh_hz.
    win = visual.Window(size=list(mon_cfg["resolution"]), monitor=mon, units="deg", fullscr=mon_cfg["fullscreen"],
                        screen=mon_cfg["screen"], color=disp["background"], colorSpace="rgb", allowGUI=False,
                        checkTiming=False, waitBlanking=sim is None)
    if [int(v) for v in win.size] != [int(v) for v in mon_cfg["resolution"]]:
        # Sizes in degrees are computed from monitor.resolution: a different real size would distort them.
        size = [int(v) for v in win.size]
        win.close()
        raise ValueError(f"{design.path}: monitor.resolution is {mon_cfg['resolution']} but the window opened at "
                         f"{size} px (fullscreen uses the screen's own resolution): set monitor.resolution to it")
    run_record["window_px"] = [int(v) for v in win.size]
    why_not = ("simulated participant (runs unpaced)" if sim is not None else
               "--no-timing-check" if not check_timing else "")
    refresh, warning = measure_refresh(win, mon_cfg["refresh_hz"], attempt=check_timing and sim is None, why_not=why_not)
    if warning:
        print(f"fvmatch-session: WARNING: {warning}", file=sys.stderr)
    run_record["refresh"] = refresh
    run_record["frame_period_ms"] = refresh["frame_period_ms"]  # the period dropped frames are judged against
    run_record["refresh_measured"] = refresh["measured_hz"] is not None
    run_record["runtime_info"] = runtime_info(win)
    exp = data.ExperimentHandler(name=experiment, dataFileName=str(psydir / stem), savePickle=False, saveWideText=False, autoLog=False)
    log = TrialLog(plan.folder / TRIALS_FILE)
    ui = _UI(win, mon, disp, sim, screenshot_dir, sim_escape_after,
             reference_side=plan.info["design"].get("reference_side", "left"))
    ui.sim_hang_after = sim_hang_after
    ui.sim_idle = sim_hang_after is not None and sim_hang_after <= 0  # 0: idle from the first trial on
    status = "running"
    totals = {"trials": 0, "frames": 0, "frames_dropped": 0, "intervals": 0, "intervals_ms_sum": 0.0}  # this run
    try:
        status = _run_trials(plan, stimset, ui, log, exp, psydir / f"{stem}.csv", totals, max_trials)
    except SessionAborted:
        status = "aborted"
        if ui.aborted_trial is not None:
            run_record["aborted_trial"] = ui.aborted_trial  # the clicks of the trial that Escape ended
    finally:
        log.close()
        if exp.entries:
            _save_handler(exp, psydir / f"{stem}.csv")
        exp.abort()  # nothing left to autosave at exit
        plan.info["frame_stats"] = _merge_frame_stats(plan.info.get("frame_stats") or {}, totals)
        plan.info["status"] = status
        plan.info["ended"] = now_iso() if status != "running" else None
        run_record.update(ended=now_iso(), status=status, end_index=plan.start_index + totals["trials"])
        save_info(plan)
        if status == "completed" or status == "aborted":
            try:
                ui.message(("Thank you! The session is over." if status == "completed" else "The session was ended.")
                           + "\n\nPlease let the experimenter know.", button="Close", min_s=1.0)
            except SessionAborted:
                pass
        ui.clicks.close()
        win.close()
        logging.flush()
        logging.root.removeTarget(logfile)
    return status


def _merge_frame_stats(old: dict, totals: dict) -> dict:
    """Session-wide frame statistics over all runs (trials only, not instruction or break screens)."""
    frames = old.get("frames", 0) + totals["frames"]
    dropped = old.get("frames_dropped", 0) + totals["frames_dropped"]
    n_int = old.get("frame_intervals", 0) + totals["intervals"]
    sum_ms = old.get("frame_interval_sum_ms", 0.0) + totals["intervals_ms_sum"]
    return {"frames": frames, "frames_dropped": dropped, "frame_intervals": n_int, "frame_interval_sum_ms": round(sum_ms, 3),
            "frame_interval_mean_ms": round(sum_ms / n_int, 3) if n_int else None}


def _run_trials(plan: SessionPlan, stimset: StimulusSet, ui: "_UI", log: TrialLog, exp, handler_csv: Path,
                totals: dict, max_trials: int | None) -> str:
    trials = plan.trials
    n_total = len(trials)
    n_blocks = max(t.block for t in trials)
    if plan.start_index == 0:
        ui.message(instructions(ui.reference_side), button="Start", screenshot="instructions")
        if trials and trials[0].is_practice:
            ui.message(f"First, {sum(t.is_practice for t in trials)} practice trials. After each one you see which "
                       "pairs were right (green) and which were wrong (red).", button="Start practice")
    else:
        ui.message(f"Welcome back. The session continues with trial {plan.start_index + 1} of {n_total}.\n\n"
                   f"Reminder: click a row on the {ui.candidate_side}, then the row on the {ui.reference_side} that shows "
                   "the same unit; "
                   "click Confirm when all three rows are paired.", button="Continue")
    prev_block = trials[plan.start_index - 1].block if plan.start_index > 0 else None
    done_this_run = 0
    for t in trials[plan.start_index:]:
        if max_trials is not None and done_this_run >= max_trials:
            return "running"
        if prev_block is not None and t.block != prev_block:
            if prev_block == 0:
                ui.message("Practice is over; there is no more feedback from now on.\n\n"
                           f"The experiment has {n_blocks} blocks with a break after each.", button="Start")
            else:
                started = now_iso()
                took = ui.message(f"Block {prev_block} of {n_blocks} done: {t.trial_index} of {n_total} trials finished.\n\n"
                                  "Take a short break. Continue when you are ready.", button="Continue",
                                  min_s=plan.design["timing"]["min_break_s"], screenshot="break")
                plan.info.setdefault("breaks", []).append({"after_block": prev_block, "before_trial": t.trial_index,
                                                           "started": started, "duration_s": round(took, 3)})
        prev_block = t.block
        row = ui.run_trial(t, stimset, plan, progress=f"Trial {t.trial_index + 1} of {n_total}")
        row["_n_intervals"] = ui.last_n_intervals
        log.append({k: v for k, v in row.items() if not k.startswith("_")})  # flushed and fsync'd before anything else happens
        done_this_run += 1
        totals["trials"] = done_this_run
        plan.info["n_trials_completed"] = t.trial_index + 1
        save_info(plan)
        for k in HANDLER_FIELDS:
            v = row[k]
            exp.addData(k, ";".join(map(str, v)) if isinstance(v, list) else int(v) if isinstance(v, bool) else v)
        exp.nextEntry()
        _save_handler(exp, handler_csv)
        totals["frames"] += row["frames"]
        totals["frames_dropped"] += row["frames_dropped"]
        totals["intervals"] += row["_n_intervals"]
        totals["intervals_ms_sum"] += (row["frame_interval_mean_ms"] or 0.0) * row["_n_intervals"]
        if ui.sim_hang_after is not None and done_this_run >= ui.sim_hang_after:
            ui.sim_idle = True
        if ui.sim_escape_after is not None and done_this_run >= ui.sim_escape_after:
            ui.sim_press_escape()
    return "completed"


def _save_handler(exp, path: Path) -> None:
    """Rewrite the handler's wide CSV: written to a new file, then renamed over the old one (atomic, and
    no 'Data file ... will be overwritten' warning, which PsychoPy logs for any existing target)."""
    tmp = path.with_name(path.stem + ".partial.csv")
    if tmp.exists():
        tmp.unlink()  # left by a kill mid-write
    exp.saveAsWideText(str(tmp), delim=",", fileCollisionMethod="overwrite")
    os.replace(tmp, path)


class _UI:
    """Drawing and input for one window."""

    def __init__(self, win, mon, disp: dict, sim: SimulatedParticipant | None, screenshot_dir: Path | None,
                 sim_escape_after: int | None, reference_side: str = "left"):
        from psychopy import event, visual

        self.visual, self.event = visual, event
        self.reference_side = reference_side
        self.candidate_side = "right" if reference_side == "left" else "left"
        self.win, self.mon, self.disp, self.sim = win, mon, disp, sim
        self.screenshot_dir = Path(screenshot_dir) if screenshot_dir else None
        self.shots_taken: set[str] = set()
        self.sim_escape_after = sim_escape_after
        self._pending_keys: list[str] = []
        self._chrome_cache: dict[int, dict] = {}
        self.sim_hang_after: int | None = None
        self.sim_idle = False  # a simulated participant that stopped clicking (tests)
        self.last_n_intervals = 0
        self.last_feedback_s: float | None = None  # how long the last practice feedback was up
        self.aborted_trial: dict | None = None  # what was clicked in a trial that Escape ended
        self.paused_s = 0.0  # total time on the Escape confirmation screen this session
        self.mouse = event.Mouse(win=win, visible=True)
        self.clicks = ClickBuffer(win)  # every press in order (two presses within one frame are two clicks)
        self.colors = [_hex_to_rgb(c) for c in disp["pair_colors"]]
        self.text_h = disp["text_deg"]
        self.time_scale = 0.0 if sim else 1.0  # simulated participants run at full speed
        from psychopy import core

        self.core = core
        self.w_deg, self.h_deg = screen_size_deg(mon.getWidth(), mon.getDistance(), list(mon.getSizePix()))
        self.wrap = min(32.0, self.w_deg * 0.8)

    # --- input ------------------------------------------------------------------------------
    def _deg_to_pyglet(self, x: float, y: float) -> tuple[int, int]:
        from psychopy.tools.monitorunittools import deg2pix

        sx, sy = self.win.size
        scale = getattr(self.mouse, "_winScaleFactor", 1.0) or 1.0
        return (int(round((deg2pix(x, self.mon) + sx / 2) / scale)), int(round((deg2pix(y, self.mon) + sy / 2) / scale)))

    def sim_click(self, x: float, y: float) -> None:
        """An emulated left click at (x, y) deg, through pyglet's mouse handlers (as a real press)."""
        import pyglet

        px, py = self._deg_to_pyglet(x, y)
        handle = self.win.winHandle
        handle._mouse_x, handle._mouse_y = px, py
        self.event._onPygletMousePress(px, py, pyglet.window.mouse.LEFT, 0, emulated=True)
        self.event._onPygletMouseRelease(px, py, pyglet.window.mouse.LEFT, 0, emulated=True)

    def sim_press_escape(self) -> None:
        self._pending_keys += ["escape", "y"]

    def _sim_keys(self) -> None:
        if self._pending_keys:
            self.event._onPygletKey(self._pending_keys.pop(0), 0, emulated=True)

    def _new_click(self, last_time: float = 0.0) -> tuple[float, tuple[float, float]] | None:
        """The oldest press not read yet: (time since the last click reset, (x, y) deg where it was pressed)."""
        from psychopy.tools.monitorunittools import pix2deg

        press = self.clicks.pop()
        if press is None:
            return None
        t, (px, py) = press
        return t, (float(pix2deg(px, self.mon)), float(pix2deg(py, self.mon)))

    def _reset_clicks(self) -> None:
        """Clock zero for click times, and forget presses before it (called on a flip)."""
        self.mouse.clickReset()
        self.clicks.clear()

    @staticmethod
    def _flush_log() -> None:
        from psychopy import logging

        logging.flush()

    def _check_escape(self) -> None:
        self._sim_keys()
        if self.event.getKeys(keyList=["escape"]):
            self._confirm_quit()

    def _confirm_quit(self) -> None:
        """Ask whether to end; the time this screen is up is added to ``paused_s`` (taken out of RTs)."""
        shown = self.core.getTime()
        recording = self.win.recordFrameIntervals
        self.win.recordFrameIntervals = False  # flips of this screen are neither trial frames nor drops
        try:
            self._ask_quit()
        finally:
            self.win.recordFrameIntervals = recording
            self.paused_s += self.core.getTime() - shown

    def _ask_quit(self) -> None:
        text = self.visual.TextStim(self.win, text="End the session now?\n\nEverything finished so far is saved.\n\n"
                                    "Press Y to end, N to continue.", height=self.text_h, wrapWidth=self.wrap, color="white",
                                    autoLog=False)
        self.event.clearEvents("keyboard")
        while True:
            self._sim_keys()
            keys = self.event.getKeys(keyList=["y", "n", "escape"])
            if "y" in keys:
                raise SessionAborted()
            if "n" in keys or "escape" in keys:
                self.event.clearEvents()
                return
            text.draw()
            self.win.flip()

    # --- screens ------------------------------------------------------------------------------
    def _shot(self, name: str) -> None:
        if self.screenshot_dir is None or name in self.shots_taken:
            return
        self.shots_taken.add(name)
        self.screenshot_dir.mkdir(parents=True, exist_ok=True)
        im = self.win.getMovieFrame(buffer="back")
        self.win.movieFrames = []
        im.save(self.screenshot_dir / f"{name}.png")

    def _text_height_deg(self, stim) -> float:
        from psychopy.tools.monitorunittools import pix2deg

        if stim._needSetText:  # the layout (and so boundingBox) is otherwise rebuilt only at the next draw
            stim._setTextShaders(stim.text)
        return float(pix2deg(stim.boundingBox[1], self.mon))

    def fit_text(self, stim, available_deg: float, what: str) -> None:
        """Shrink ``stim`` (a TextStim, wrapped at its wrapWidth) until it is at most ``available_deg`` high;
        refuse (ValueError naming the design keys) when that would take it below ``MIN_TEXT_SCALE``."""
        for _ in range(6):
            measured = self._text_height_deg(stim)
            h = fitted_text_height(stim.height, measured, available_deg, self.text_h)
            if h is None:
                raise ValueError(
                    f"the {what} text needs {measured:.1f} deg of height at {stim.height:.2f} deg per line but only "
                    f"{available_deg:.1f} deg are free on a {self.w_deg:.1f} x {self.h_deg:.1f} deg screen, even at "
                    f"{MIN_TEXT_SCALE:.0%} of display.text_deg = {self.text_h}: lower display.text_deg, or check monitor.*")
            if h == stim.height:
                return
            stim.height = h

    def _button(self, label: str, x: float, y: float, w: float | None = None, h: float | None = None):
        th = self.text_h
        rect = self.visual.Rect(self.win, width=w or max(8.0, 0.7 * len(label) + 3) * th, height=h or 2.2 * th,
                                pos=(x, y), fillColor=[-0.4, 0.1, -0.4], lineColor="white", lineWidth=2, autoLog=False)
        return rect, self.visual.TextStim(self.win, text=label, height=th, pos=(x, y), color="white", autoLog=False)

    def message(self, text: str, button: str | None = "Continue", min_s: float = 0.0, screenshot: str | None = None) -> float:
        """A text screen; continues on a click on the button (or Space) once ``min_s`` has passed. Text that
        does not fit above the button is made smaller (or refused, see ``fit_text``)."""
        top = self.h_deg / 2 - 2 * self.text_h
        body = self.visual.TextStim(self.win, text=text, height=self.text_h, wrapWidth=self.wrap, color="white",
                                    pos=(0, top), anchorVert="top", alignText="left", autoLog=False)
        btn = None
        bottom = -self.h_deg / 2 + self.text_h
        if button:
            btn = self._button(button, 0, message_button_y(self.h_deg, self.text_h))
            bottom = btn[0].pos[1] + btn[0].height / 2 + self.text_h
        self.fit_text(body, top - bottom, f"screen '{text.splitlines()[0][:40]}...'")
        self.win.logOnFlip(f"screen shown: {text.splitlines()[0][:60]}", level=22)  # 22 = logging.EXP
        return self._wait_for_button(body.draw, btn, min_s, screenshot)

    def _wait_for_button(self, draw, btn, min_s: float, screenshot: str | None) -> float:
        """Draw a screen until its button (rect, label) is clicked, or Space is pressed, once ``min_s`` has
        passed (the button is dimmed before). Without a button the screen ends after ``min_s``. Returns the
        seconds the screen was up."""
        clock = self.core.Clock()
        min_s *= self.time_scale
        self.event.clearEvents()
        self._reset_clicks()
        sim_clicked = False
        first = True
        while True:
            self._check_escape()
            ready = clock.getTime() >= min_s
            draw()
            if btn is not None:
                btn[0].opacity = btn[1].opacity = 1.0 if ready else 0.35
                btn[0].draw()
                btn[1].draw()
            if screenshot:
                self._shot(screenshot)
            if btn is None:
                self.win.flip()
                if ready:
                    return clock.getTime()
                continue  # (no button: a timed screen)
            if self.sim is not None and ready and not sim_clicked:
                self.sim_click(btn[0].pos[0], btn[0].pos[1])
                sim_clicked = True
            self.win.flip()
            if first:
                self._flush_log()
                first = False
            while (click := self._new_click()) is not None:
                if ready and btn[0].contains(*click[1]):
                    return clock.getTime()
            if ready and self.event.getKeys(keyList=["space"]):
                return clock.getTime()

    # --- a trial ------------------------------------------------------------------------------
    def _chrome(self, n: int) -> dict:
        """Row frames, labels, lines, pair markers and buttons for trials with n images (built once per n)."""
        if n in self._chrome_cache:
            return self._chrome_cache[n]
        visual, win, th = self.visual, self.win, self.text_h
        lay = trial_layout(n, self.disp, self.reference_side)
        grey = [0.3, 0.3, 0.3]
        c = lay.confirm
        ref0, cand0 = lay.rows["reference"][0], lay.rows["candidate"][0]
        chrome = {
            "layout": lay,
            "frames": {side: [visual.Rect(win, width=r.w, height=r.h, pos=(r.x, r.y), fillColor=None, lineColor=grey,
                                          lineWidth=2, autoLog=False) for r in lay.rows[side]]
                       for side in ("reference", "candidate")},
            "lines": [visual.Line(win, start=(0, 0), end=(1, 0), lineColor=self.colors[i], lineWidth=6, autoLog=False)
                      for i in range(3)],
            "dots": {side: [visual.Circle(win, radius=0.35 * th, edges=24, fillColor="white", lineColor=None, autoLog=False)
                            for _ in range(3)] for side in ("reference", "candidate")},
            "texts": [
                visual.TextStim(win, text=f"Click a row on the {self.candidate_side}, then the row on the "
                                f"{self.reference_side} that shows the same unit.",
                                height=th, pos=(0, lay.title_y), color="white", wrapWidth=0.95 * self.w_deg, autoLog=False),
                # labels grow outwards from the middle gap, so they never meet even for n = 1
                *[visual.TextStim(win, text=label, height=0.7 * th, color=[0.5, 0.5, 0.5], autoLog=False,
                                  pos=(lay.inner_x(side, 0), r0.y + r0.h / 2 + 0.6 * th),
                                  anchorHoriz="right" if lay.on_left(side) else "left",
                                  alignText="right" if lay.on_left(side) else "left")
                  for side, label, r0 in (("reference", "reference rows", ref0), ("candidate", "rows to match", cand0))],
            ],
            "confirm": visual.Rect(win, width=c.w, height=c.h, pos=(c.x, c.y), fillColor=[-0.4, 0.1, -0.4],
                                   lineColor="white", lineWidth=2, autoLog=False),
            "confirm_text": visual.TextStim(win, text="Confirm", height=th, pos=(c.x, c.y), color="white", autoLog=False),
            "progress": visual.TextStim(win, text="", height=0.7 * th, pos=(0, lay.progress_y), color=[0.4, 0.4, 0.4],
                                        autoLog=False),
            "feedback": visual.TextStim(win, text="", height=th, pos=(0, c.y), color="white", wrapWidth=0.95 * self.w_deg,
                                        autoLog=False),
            "answer_lines": [visual.Line(win, start=(0, 0), end=(1, 0), lineColor="white", lineWidth=2, autoLog=False)
                             for _ in range(3)],
        }
        self._chrome_cache[n] = chrome
        return chrome

    def run_trial(self, t: TrialSpec, stimset: StimulusSet, plan: SessionPlan, progress: str) -> dict:
        visual, core, win = self.visual, self.core, self.win
        iti = core.Clock()
        win.flip()  # blank inter-trial screen while this trial's stimuli are built
        ch = self._chrome(t.n_images)
        lay = ch["layout"]
        size = lay.image_deg
        images, stimuli = [], []
        for side, rows in (("reference", t.reference_files), ("candidate", t.candidate_files)):
            for r, files in enumerate(rows):
                unit = t.units[r] if side == "reference" else t.units[t.candidate_units[r]]
                for k, rel in enumerate(files):
                    x, y = lay.images[side][r][k]
                    images.append(visual.ImageStim(win, image=str(stimset.path(rel)), pos=(x, y), size=(size, size),
                                                   interpolate=True, units="deg", autoLog=False))
                    stimuli.append({"side": side, "row": r, "unit": unit, "file": rel, "x": round(x, 3), "y": round(y, 3),
                                    "size": size})
        ch["progress"].text = progress + ("  (practice)" if t.is_practice else "")
        statics = images + ch["texts"] + [ch["progress"]]
        for s in images:  # upload textures now (not at the first draw after onset)
            s.draw()
        win.clearBuffer()
        while True:
            self._check_escape()
            win.flip()
            if iti.getTime() >= self.disp_iti(plan):
                break

        state = PairingState()
        clicks: list = []
        sim_plan = None
        if self.sim is not None and not self.sim_idle:
            sim_plan = self.sim.click_plan(self.sim.choose_assignment(t.candidate_units, t.is_catch, trial=t))
        self.event.clearEvents()
        win.recordFrameIntervals = True
        win.frameIntervals = []
        dropped0 = win.nDroppedFrames
        onset: dict = {}
        win.callOnFlip(self._reset_clicks)
        win.callOnFlip(onset.update, iso=now_iso())
        win.logOnFlip(f"trial {t.trial_index} onset ({t.trial_type}, {t.layer_group}, n={t.n_images})", level=22)  # logging.EXP
        try:
            self._trial_loop(t, state, clicks, statics, ch, sim_plan)
        except SessionAborted:
            win.recordFrameIntervals = False
            self.aborted_trial = {"trial_index": t.trial_index, "onset": onset.get("iso"), "clicks": clicks,
                                  "paused_s": round(self.paused_s - self._paused_at_onset, 4)}
            raise
        n_flips, paused_at_onset = self._n_flips, self._paused_at_onset
        win.recordFrameIntervals = False
        intervals = [1000 * x for x in win.frameIntervals]
        self.last_n_intervals = len(intervals)
        frame_stats = {"frames": n_flips, "frames_dropped": int(win.nDroppedFrames - dropped0),
                       "frame_interval_mean_ms": round(statistics.fmean(intervals), 3) if intervals else None,
                       "frame_interval_sd_ms": round(statistics.stdev(intervals), 3) if len(intervals) > 1 else None}
        assignment = state.assignment()
        row = trial_row(plan, t, stimuli, clicks, assignment, onset.get("iso", now_iso()), frame_stats,
                        paused_s=self.paused_s - paused_at_onset)
        if t.is_practice:
            self._feedback(t, state, statics, ch, plan)
        return row

    def _trial_loop(self, t: TrialSpec, state: PairingState, clicks: list, statics, ch: dict, sim_plan) -> None:
        """Draw the trial and read clicks until Confirm is clicked with all rows paired. Sets ``_n_flips``
        (frames of the trial) and ``_paused_at_onset`` as it goes, so an Escape mid-trial leaves them right."""
        win, lay = self.win, ch["layout"]
        btn, btn_text = ch["confirm"], ch["confirm_text"]
        self._n_flips = 0
        self._paused_at_onset = self.paused_s
        while True:
            self._check_escape()
            if self._n_flips == 0:  # a pause before onset is not part of the response time
                self._paused_at_onset = self.paused_s
            for s in statics:
                s.draw()
            self._draw_pairs(state, ch)
            btn.opacity = 1.0 if state.complete else 0.3
            btn_text.opacity = 1.0 if state.complete else 0.4
            btn.draw()
            btn_text.draw()
            if state.complete:
                self._shot(f"trial_{'catch' if t.is_catch else t.trial_type}")
            if sim_plan and self._n_flips > 0:  # one simulated click per frame, after onset
                kind, row = sim_plan.pop(0)
                target = lay.confirm if kind == "confirm" else lay.rows[kind][row]
                self.sim_click(target.x, target.y)
            win.flip()
            self._n_flips += 1
            if self._n_flips == 1:
                self._flush_log()  # the onset line reaches the log file now, not at exit
            confirmed = False
            while not confirmed and (click := self._new_click()) is not None:  # every press since the last flip
                hit = lay.hit(*click[1])
                if hit is None:
                    continue
                kind, row = hit
                t_click = round(click[0] - (self.paused_s - self._paused_at_onset), 4)  # time on the screen, pauses excluded
                if kind == "confirm":
                    if state.complete:
                        clicks.append([t_click, "confirm", None])
                        confirmed = True
                    continue
                clicks.append([t_click, kind, row])
                state.click(kind, row)
            if confirmed:
                break

    def disp_iti(self, plan: SessionPlan) -> float:
        return plan.design["timing"]["iti_s"] * self.time_scale

    def _draw_pairs(self, state: PairingState, ch: dict, verdict: list[bool] | None = None) -> None:
        lay, frames, lines, dots = ch["layout"], ch["frames"], ch["lines"], ch["dots"]
        grey = [0.3, 0.3, 0.3]
        for side in ("reference", "candidate"):
            for fr in frames[side]:
                fr.lineColor, fr.lineWidth = grey, 2
        for ref, cand in state.pairs.items():
            color = self.colors[ref] if verdict is None else (RIGHT_RGB if verdict[ref] else WRONG_RGB)
            for side, r in (("reference", ref), ("candidate", cand)):
                frames[side][r].lineColor, frames[side][r].lineWidth = color, 6
            a, b = lay.rows["reference"][ref], lay.rows["candidate"][cand]
            ax, bx = lay.inner_x("reference", ref), lay.inner_x("candidate", cand)
            lines[ref].start, lines[ref].end = (ax, a.y), (bx, b.y)
            lines[ref].lineColor = color
            lines[ref].draw()
            for side, x, rect in (("reference", ax, a), ("candidate", bx, b)):
                d = dots[side][ref]
                d.pos = (x, rect.y)
                d.fillColor = color
                d.draw()
        if state.selected is not None:
            side, r = state.selected
            frames[side][r].lineColor, frames[side][r].lineWidth = [1, 1, 1], 6
        for side in ("reference", "candidate"):
            for fr in frames[side]:
                fr.draw()

    def _feedback(self, t: TrialSpec, state: PairingState, statics, ch: dict, plan: SessionPlan) -> None:
        """Practice feedback: the participant's pairs in green (right) or red (wrong), the right pairs as
        thin white lines where they differ, and a sentence that does not rely on colour."""
        verdict = score(t.candidate_units, state.assignment())
        n = sum(verdict)
        ch["feedback"].text = ("All three pairs are right!" if n == 3 else
                               f"{n} of 3 pairs right. Green: right, red: wrong; thin white lines show the right pairs.")
        lay = ch["layout"]
        answer = []
        for i, cand in enumerate(t.candidate_units.index(i) for i in range(3)):
            if not verdict[i]:
                a, b = lay.rows["reference"][i], lay.rows["candidate"][cand]
                ln = ch["answer_lines"][i]
                ln.start, ln.end = (lay.inner_x("reference", i), a.y + 0.3), (lay.inner_x("candidate", cand), b.y + 0.3)
                answer.append(ln)
        c = lay.confirm
        btn = self._button("Continue", c.x, c.y, c.w, c.h)  # where Confirm was: the same click moves on
        text = ch["feedback"]
        text.height = self.text_h
        text.pos, text.anchorVert = (0, lay.title_y - 0.75 * self.text_h), "bottom"  # replaces the title line
        self.fit_text(text, self.h_deg / 2 - text.pos[1] - 0.2 * self.text_h, "practice feedback")

        def draw() -> None:
            for s in statics:
                if s is not ch["texts"][0]:  # the feedback sentence takes the title's place
                    s.draw()
            self._draw_pairs(state, ch, verdict=verdict)
            for ln in answer:
                ln.draw()
            text.draw()

        # Stays until Continue is clicked (enabled after timing.feedback_s), so the verdict is read.
        self.last_feedback_s = self._wait_for_button(draw, btn, plan.design["timing"]["feedback_s"], "practice_feedback")
