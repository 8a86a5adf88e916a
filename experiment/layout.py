"""Screen geometry of a matching trial, in degrees of visual angle (origin at the screen centre, y up).

Pure Python, no PsychoPy. Reference rows are right-aligned to the left of the centre, candidate
rows left-aligned to the right of it, so a pair's connecting line always spans the same middle gap
whatever n is. Images have the same size for every n, so n is not confounded with image size.
"""

from __future__ import annotations

from dataclasses import dataclass

SIDES = ("reference", "candidate")


@dataclass(frozen=True)
class Rect:
    x: float  # centre
    y: float
    w: float
    h: float

    def contains(self, px: float, py: float) -> bool:
        return abs(px - self.x) <= self.w / 2 and abs(py - self.y) <= self.h / 2

    @property
    def left(self) -> float:
        return self.x - self.w / 2

    @property
    def right(self) -> float:
        return self.x + self.w / 2


@dataclass(frozen=True)
class TrialLayout:
    n: int
    image_deg: float
    rows: dict  # side -> [Rect of row 0, 1, 2] (clickable frame, top to bottom)
    images: dict  # side -> [[(x, y) of image k] per row]
    confirm: Rect
    title_y: float
    progress_y: float
    width: float  # extent of everything drawn, degrees
    height: float
    reference_side: str = "left"  # screen side of the reference rows ("left" or "right")

    def inner_x(self, side: str, r: int) -> float:
        """x of the edge of row r of ``side`` that faces the middle gap (where pair lines start)."""
        rect = self.rows[side][r]
        on_left = (side == "reference") == (self.reference_side == "left")
        return rect.right if on_left else rect.left

    def on_left(self, side: str) -> bool:
        return (side == "reference") == (self.reference_side == "left")

    def hit(self, px: float, py: float) -> tuple[str, int | None] | None:
        """Which clickable thing is at (px, py): ("reference"|"candidate", row), ("confirm", None) or None."""
        for side in SIDES:
            for r, rect in enumerate(self.rows[side]):
                if rect.contains(px, py):
                    return side, r
        if self.confirm.contains(px, py):
            return "confirm", None
        return None


def trial_layout(n: int, display: dict, reference_side: str = "left") -> TrialLayout:
    """Positions of every image, row frame and button for a trial with n images per row, reference
    rows on ``reference_side`` of the screen (the candidate rows on the other).

    Everything drawn (title to progress line) is centred vertically on the screen.
    """
    if reference_side not in ("left", "right"):
        raise ValueError(f"reference_side must be 'left' or 'right', got {reference_side!r}")
    img, gap = float(display["image_deg"]), float(display["image_gap_deg"])
    row_gap, side_gap, pad = float(display["row_gap_deg"]), float(display["side_gap_deg"]), float(display["frame_deg"]) * 2
    text = float(display["text_deg"])
    row_w = n * img + (n - 1) * gap
    pitch = img + row_gap
    rows_top = pitch + img / 2 + pad
    title_y = rows_top + 1.6 * text
    confirm_y, confirm_h = -rows_top - 2.4 * text, 2.2 * text
    progress_y = confirm_y - confirm_h / 2 - 1.3 * text
    top, bottom = title_y + 1.5 * text, progress_y - text
    dy = -(top + bottom) / 2  # shift that centres the extent
    rows: dict = {}
    images: dict = {}
    ref_sign = -1 if reference_side == "left" else 1
    for side, sign in (("reference", ref_sign), ("candidate", -ref_sign)):
        inner = sign * side_gap / 2  # the row edge next to the centre
        x_c = inner + sign * row_w / 2
        rows[side] = [Rect(x_c, pitch * (1 - r) + dy, row_w + 2 * pad, img + 2 * pad) for r in range(3)]
        xs = [inner + sign * (img / 2 + k * (img + gap)) for k in range(n)]
        if sign < 0:
            xs = xs[::-1]  # left to right on screen
        images[side] = [[(x, pitch * (1 - r) + dy) for x in xs] for r in range(3)]
    confirm = Rect(0.0, confirm_y + dy, 8 * text, confirm_h)
    width = 2 * (side_gap / 2 + row_w + pad)
    return TrialLayout(n, img, rows, images, confirm, title_y + dy, progress_y + dy, width, top - bottom, reference_side)


def check_fits(layout: TrialLayout, screen_w_deg: float, screen_h_deg: float, margin_deg: float = 0.5) -> str | None:
    """None when the trial fits on the screen, else a message saying by how much it does not."""
    if layout.width + 2 * margin_deg > screen_w_deg or layout.height + 2 * margin_deg > screen_h_deg:
        return (f"a trial with n={layout.n} needs {layout.width:.1f} x {layout.height:.1f} deg but the screen is "
                f"{screen_w_deg:.1f} x {screen_h_deg:.1f} deg: reduce display.image_deg or the gaps, or check monitor.*")
    return None


def screen_size_deg(width_cm: float, distance_cm: float, resolution: list[int]) -> tuple[float, float]:
    """Screen width and height in degrees, as PsychoPy converts them (``deg2cm``: cm = deg * distance * 0.017455)."""
    cm_per_deg = distance_cm * 0.017455
    cm_per_px = width_cm / resolution[0]
    return resolution[0] * cm_per_px / cm_per_deg, resolution[1] * cm_per_px / cm_per_deg


def message_button_y(screen_h_deg: float, text_deg: float) -> float:
    """Vertical position of the button of a text screen (instructions, breaks): near the bottom."""
    return -screen_h_deg / 2 + 3.5 * text_deg


MIN_TEXT_SCALE = 0.6  # text is never shrunk below this fraction of display.text_deg to make it fit


def fitted_text_height(height: float, measured: float, available: float, text_deg: float) -> float | None:
    """The letter height at which a text block that is ``measured`` deg high at ``height`` fits into
    ``available`` deg: ``height`` when it already fits, else a proportionally smaller one (the wrap
    width stays, so a smaller text also takes fewer lines: proportional is on the safe side); None
    when that is below ``MIN_TEXT_SCALE * text_deg`` (the runner then refuses the design)."""
    if measured <= available:
        return height
    h = 0.98 * height * available / measured
    return h if h >= MIN_TEXT_SCALE * text_deg else None
