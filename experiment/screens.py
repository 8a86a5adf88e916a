"""Text screens and input for one PsychoPy window: instructions, messages with a button, Escape and its
question, clicks (every press, also two within one frame), simulated clicks, screenshots, text fitting.

The trial screen builds on this (``experiment.trial_screen.TrialUI``). PsychoPy is imported inside
the methods, so importing this module needs no display.
"""

from __future__ import annotations

from pathlib import Path

from experiment.clicks import ClickBuffer
from experiment.layout import MIN_TEXT_SCALE, fitted_text_height, message_button_y, screen_size_deg
from experiment.simulate import SimulatedParticipant


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


class SessionAborted(Exception):
    """The participant (or experimenter) confirmed Escape."""


def _hex_to_rgb(h: str) -> list[float]:
    return [int(h[i:i + 2], 16) / 127.5 - 1 for i in (1, 3, 5)]


class ScreenUI:
    """Drawing and input for one window: everything but the trial screen."""

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
