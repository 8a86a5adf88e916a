"""The trial screen: image rows, pairing by clicks, Confirm, and practice feedback.

``TrialUI`` adds the trial to the text screens and input of ``experiment.screens.ScreenUI``; frame
statistics of a trial come from ``experiment.frame_timing``.
"""

from __future__ import annotations

from contracts.session import now_iso
from contracts.stimulus_set import StimulusSet
from experiment.design import TrialSpec, score
from experiment.frame_timing import trial_frame_stats
from experiment.layout import trial_layout
from experiment.matching import PairingState
from experiment.screens import ScreenUI, SessionAborted
from experiment.storage import SessionPlan, trial_row

RIGHT_RGB = [-0.6, 0.6, -0.6]
WRONG_RGB = [0.8, -0.7, -0.7]


class TrialUI(ScreenUI):
    """A session's window: text screens (``ScreenUI``) and trials."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._chrome_cache: dict[int, dict] = {}

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
        self.last_n_intervals = len(win.frameIntervals)
        frame_stats = trial_frame_stats(n_flips, win.frameIntervals, int(win.nDroppedFrames - dropped0))
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
