"""The per-unit search for the diversity weight (Zimmermann et al. 2023, "IMI"), as pure bookkeeping.

Lucid's fixed weight 100 is not scale-free: on units whose activations are O(1) the diversity term
outweighs the unit by two orders of magnitude and the FVs stop showing what the unit detects
(issue 17). The claim a study makes of its FVs is that they drive the unit harder than natural
images. So, per unit, search the largest diversity weight ``w`` for which the *weakest* of the
unit's FVs (as saved) still beats the unit's most activating natural exemplar:

1. first try ``w0 = search_start * |target| / (n_vis - 1)``: the diversity term is at most
   ``w (n_vis - 1)`` (Gram cosines of post-/pre-ReLU features lie in [0, 1]), so this is the weight
   at which diversity can cost as much as the target activation;
2. exponential phase: multiply by ``factor`` while it passes, divide while it fails; below
   ``floor * w0`` the next try is ``w = 0`` (no diversity), the last resort;
3. binary phase: geometric midpoint of the largest passing and the smallest failing weight, until
   they are within ``ratio`` of each other or the rounds are used up.

Each try is a whole optimization from the same seeds (only the weight differs). A unit whose FVs
fail even at ``w = 0`` is reported as ``failed``. The renderer runs one try per round for all
units of a batch at once, each with its own weight (``stimuli_gen.render``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

PASSED, FAILED, FIXED = "passed", "failed", "fixed"


@dataclass
class UnitSearch:
    """Search state of one unit. ``tries``: ``(weight, weakest FV activation, passed)`` in order."""

    target: float  # the best natural exemplar's activation
    w0: float
    lo: float | None = None  # largest weight that passed
    hi: float | None = None  # smallest weight that failed
    tries: list[tuple[float, float, bool]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return PASSED if self.lo is not None else FAILED


def first_weight(target: float, n_vis: int, start: float = 1.0) -> float:
    """Scale-free first try: diversity may cost ``start`` times the target activation."""
    return start * max(abs(target), 1e-12) / max(n_vis - 1, 1)


def next_weight(s: UnitSearch, factor: float, ratio: float, floor: float) -> float | None:
    """The next weight to try, or None when the search of this unit is finished."""
    if not s.tries:
        return s.w0
    if s.hi is None:  # only passes so far: go up
        return s.lo * factor
    if s.lo is None:  # only failures so far: go down, then no diversity at all
        if s.hi == 0.0:
            return None  # failed without diversity: nothing left to try
        w = s.hi / factor
        return w if w >= floor * s.w0 else 0.0
    if s.lo == 0.0:  # no diversity passes and the smallest weight above the floor failed: keep 0
        return None
    if s.hi / s.lo <= ratio:
        return None
    return math.sqrt(s.lo * s.hi)


def record(s: UnitSearch, weight: float, weakest: float) -> bool:
    """Book one try; returns whether it passed (weakest FV strictly above the target)."""
    passed = bool(weakest > s.target)
    s.tries.append((float(weight), float(weakest), passed))
    if passed:
        s.lo = weight if s.lo is None else max(s.lo, weight)
    else:
        s.hi = weight if s.hi is None else min(s.hi, weight)
    return passed
