"""The per-unit search for the diversity weight (Zimmermann et al. 2023, "IMI"), as pure bookkeeping.

Lucid's fixed weight 100 is not scale-free: on units whose activations are O(1) the diversity term
outweighs the unit by two orders of magnitude and the FVs stop showing what the unit detects
(issue 17). The claim a study makes of its FVs is that they drive the unit harder than natural
images. So, per unit, as IMI's code does:

1. **no diversity first** (``w = 0``): if even the weakest of these FVs does not beat the unit's best
   natural exemplar, the optimization cannot make the claim true and the unit is reported
   ``failed`` at once (IMI skips such units; fvmatch can replace them, see ``stimuli_gen.units``);
2. otherwise search the largest ``w`` for which the weakest FV (as saved) still clears the
   *requirement* ``t + retain * (a0 - t)``, where ``t`` is the best natural exemplar and ``a0`` the
   weakest no-diversity FV: diverse FVs keep at least ``retain`` of the margin by which the
   unit's own optimum beats natural images. ``retain`` (0 = IMI's criterion) is fvmatch's addition: on a small collection the best natural
   image can be far below what the unit responds to, and FVs that barely beat it were measured to
   lose the unit's preferred orientation (the known-answer test, ``stimuli_gen.known_answer``);
3. the first diverse try is ``w0 = start * a0 / (n_vis - 1)`` (the diversity term is at most
   ``w (n_vis - 1)``: Gram cosines lie in [0, 1], so at ``w0`` diversity can cost ``start`` times
   what the unit reaches without it: scale-free); exponential phase: multiply by ``factor`` while it
   passes, divide while it fails, and below ``floor * w0`` keep ``w = 0``; binary phase: geometric
   midpoint of the largest passing and smallest failing weight until they are within ``ratio``.

Each try is a whole optimization from the same seeds (only the weight differs). The renderer runs
one try per round for all units of a batch at once, each with its own weight (``stimuli_gen.render``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

PASSED, FAILED, FIXED = "passed", "failed", "fixed"


@dataclass
class UnitSearch:
    """Search state of one unit. ``tries``: ``(weight, weakest FV activation, passed)`` in order."""

    target: float  # the best natural exemplar's activation
    retain: float = 0.0  # diverse FVs keep this fraction of the no-diversity FVs' margin over ``target``
    start: float = 1.0
    n_vis: int = 2
    anchor: float | None = None  # a0: the weakest FV at weight 0 (known after the first try)
    lo: float | None = None  # largest weight that passed
    hi: float | None = None  # smallest weight that failed
    tries: list[tuple[float, float, bool]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return PASSED if self.lo is not None else FAILED

    @property
    def requirement(self) -> float:
        """What the weakest FV must exceed: the best natural exemplar plus, for a diverse try, ``retain``
        times the no-diversity FVs' margin over it (sign-safe for pre-ReLU activations below 0)."""
        if self.anchor is None:
            return self.target
        return self.target + self.retain * max(self.anchor - self.target, 0.0)

    @property
    def w0(self) -> float:
        """The first diverse weight (known once the no-diversity try has passed)."""
        return first_weight(self.anchor if self.anchor is not None else self.target, self.n_vis, self.start)


def first_weight(scale: float, n_vis: int, start: float = 1.0) -> float:
    """Scale-free first diverse try: diversity may cost ``start`` times ``scale`` (the unit's activation)."""
    return start * max(abs(scale), 1e-12) / max(n_vis - 1, 1)


def next_weight(s: UnitSearch, factor: float, ratio: float, floor: float) -> float | None:
    """The next weight to try, or None when the search of this unit is finished."""
    if not s.tries:
        return 0.0  # no diversity first (IMI)
    if s.lo is None:  # even no diversity failed: the unit cannot pass
        return None
    if s.n_vis < 2:  # one image has no diversity term: weight 0 is the answer
        return None
    if s.hi is None:  # only passes so far: go up
        return s.w0 if s.lo == 0.0 else s.lo * factor
    if s.lo == 0.0:  # no diverse weight has passed yet: go down, below the floor keep 0
        w = s.hi / factor
        return w if w >= floor * s.w0 else None
    if s.hi / s.lo <= ratio:
        return None
    return math.sqrt(s.lo * s.hi)


def record(s: UnitSearch, weight: float, weakest: float) -> bool:
    """Book one try; returns whether it passed (weakest FV strictly above the requirement)."""
    if weight == 0.0 and s.anchor is None:
        s.anchor = float(weakest)
        passed = bool(weakest > s.target)
    else:
        passed = bool(weakest > s.requirement)
    s.tries.append((float(weight), float(weakest), passed))
    if passed:
        s.lo = weight if s.lo is None else max(s.lo, weight)
    else:
        s.hi = weight if s.hi is None else min(s.hi, weight)
    return passed
