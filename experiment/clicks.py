"""Every mouse press, in order, with the time and place it happened.

PsychoPy's ``event.Mouse`` keeps only the state of each button and the time of its last press, so two
presses between two flips read as one, and ``getPos`` gives the position at poll time, not at the
press. ``ClickBuffer`` hooks PsychoPy's own pyglet press handler (``event._onPygletMousePress``, which
real presses and emulated ones both go through) and queues every left press with its time (the same
clock as ``Mouse.getPressed(getTime=True)``) and window position. Install it while a window is open;
``close`` restores the handler.
"""

from __future__ import annotations

from collections import deque


class ClickBuffer:
    """A queue of left presses: ``(time since the last clickReset in s, (x, y) in pix from the centre)``."""

    def __init__(self, win):
        from psychopy import event

        self._event, self._win = event, win
        self._queue: deque = deque()
        self._orig = event._onPygletMousePress

        def on_press(x, y, button, modifiers, emulated=False):
            self._orig(x, y, button, modifiers, emulated=emulated)
            if button & event.LEFT:
                self._queue.append((float(event.mouseTimes[0]), self._to_pix(x, y)))

        self._hook = on_press
        event._onPygletMousePress = on_press

    def _to_pix(self, x: float, y: float) -> tuple[float, float]:
        # pyglet window coordinates (origin bottom left, possibly scaled on HiDPI) -> pix from the centre
        scale = getattr(self._win, "getContentScaleFactor", lambda: 1.0)() or 1.0
        w, h = self._win.size
        return float(x) * scale - w / 2, float(y) * scale - h / 2

    def clear(self) -> None:
        self._queue.clear()

    def pop(self) -> tuple[float, tuple[float, float]] | None:
        """The oldest press not read yet, or None."""
        return self._queue.popleft() if self._queue else None

    def close(self) -> None:
        if self._event._onPygletMousePress is self._hook:
            self._event._onPygletMousePress = self._orig
