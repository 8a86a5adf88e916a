"""The per-unit diversity-weight search (bookkeeping only; the renderer runs the optimizations)."""

import pytest

from stimuli_gen import diversity_search as S


def run(passes_below: float, target: float = 2.0, n_vis: int = 3, rounds: int = 12):
    """Search against a unit whose FVs pass exactly when the weight is below ``passes_below``."""
    s = S.UnitSearch(target, S.first_weight(target, n_vis))
    for _ in range(rounds):
        w = S.next_weight(s, factor=4.0, ratio=1.5, floor=1 / 64)
        if w is None:
            break
        S.record(s, w, target + 1 if w < passes_below else target - 1)
    return s


def test_first_weight_is_scale_free():
    assert S.first_weight(2.0, 3) == pytest.approx(1.0)
    assert S.first_weight(2e-6, 3) == pytest.approx(1e-6)  # same relative weight on a tiny-activation unit


@pytest.mark.parametrize("limit", [0.07, 0.3, 1.0, 3.7, 50.0])
def test_finds_the_largest_passing_weight_within_the_ratio(limit):
    s = run(limit)
    assert s.status == S.PASSED
    assert s.lo < limit and s.hi >= limit and s.hi / s.lo <= 1.5
    ws = [w for w, _, _ in s.tries]
    assert ws[0] == 1.0 and len(ws) == len(set(ws))


def test_falls_back_to_no_diversity_and_reports_a_unit_that_never_passes():
    s = run(1e-9)  # only weight 0 passes
    assert s.status == S.PASSED and s.lo == 0.0 and s.tries[-1][0] == 0.0
    never = S.UnitSearch(2.0, 1.0)
    for _ in range(10):
        w = S.next_weight(never, 4.0, 1.5, 1 / 64)
        if w is None:
            break
        S.record(never, w, 1.0)
    assert never.status == S.FAILED and [w for w, _, _ in never.tries] == [1.0, 0.25, 1 / 16, 1 / 64, 0.0]


def test_a_tie_with_the_natural_exemplar_is_not_a_pass():
    s = S.UnitSearch(2.0, 1.0)
    assert S.record(s, 1.0, 2.0) is False and s.hi == 1.0
