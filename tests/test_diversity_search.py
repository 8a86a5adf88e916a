"""The per-unit diversity-weight search (bookkeeping only; the renderer runs the optimizations)."""

import pytest

from stimuli_gen import diversity_search as S


def run(passes_below: float, target: float = 2.0, anchor: float = 4.0, n_vis: int = 3, retain: float = 0.0,
        rounds: int = 12):
    """Search against a unit whose FVs reach ``anchor`` without diversity and clear any requirement
    exactly when the weight is below ``passes_below`` (weakest FV just above it, else just below)."""
    s = S.UnitSearch(target, retain=retain, n_vis=n_vis)
    for _ in range(rounds):
        w = S.next_weight(s, factor=4.0, ratio=1.5, floor=1 / 64)
        if w is None:
            break
        S.record(s, w, anchor if w == 0 else (s.requirement + 0.1 if w < passes_below else s.requirement - 0.1))
    return s


def test_no_diversity_comes_first_and_sets_a_scale_free_first_weight():
    s = run(1.0)
    assert s.tries[0][0] == 0.0 and s.anchor == 4.0
    assert s.tries[1][0] == pytest.approx(2.0)  # a0 / (n_vis - 1)
    tiny = run(1.0, target=2e-6, anchor=4e-6)
    assert tiny.tries[1][0] == pytest.approx(2e-6)  # the same relative weight on a tiny-activation unit


@pytest.mark.parametrize("limit", [0.07, 0.3, 1.0, 3.7, 50.0])
def test_finds_the_largest_passing_weight_within_the_ratio(limit):
    s = run(limit)
    assert s.status == S.PASSED
    assert s.lo < limit and s.hi >= limit and s.hi / s.lo <= 1.5
    ws = [w for w, _, _ in s.tries]
    assert ws[:2] == [0.0, 2.0] and len(ws) == len(set(ws))


def test_keeps_no_diversity_when_no_diverse_weight_passes():
    s = run(1e-9)
    assert s.status == S.PASSED and s.lo == 0.0
    assert [w for w, _, _ in s.tries] == [0.0, 2.0, 0.5, 0.125, 2 / 64]  # down to the floor (w0 / 64), then stop


def test_a_unit_whose_undiverse_fvs_lose_to_natural_images_fails_at_once():
    s = S.UnitSearch(2.0, n_vis=3)
    assert S.next_weight(s, 4.0, 1.5, 1 / 64) == 0.0
    assert S.record(s, 0.0, 1.5) is False
    assert S.next_weight(s, 4.0, 1.5, 1 / 64) is None and s.status == S.FAILED


def test_retain_raises_the_requirement_to_part_of_the_undiverse_margin():
    s = S.UnitSearch(2.0, retain=0.5, n_vis=3)
    S.record(s, 0.0, 6.0)
    assert s.requirement == pytest.approx(4.0)  # 2 + 0.5 * (6 - 2)
    assert S.record(s, 3.0, 3.9) is False and S.record(s, 1.0, 4.1) is True
    imi = S.UnitSearch(2.0, retain=0.0, n_vis=3)
    S.record(imi, 0.0, 6.0)
    assert imi.requirement == 2.0 and S.record(imi, 3.0, 3.9) is True


def test_negative_activations_keep_the_requirement_between_natural_and_optimum():
    s = S.UnitSearch(-3.0, retain=0.5, n_vis=2)
    S.record(s, 0.0, -1.0)
    assert s.requirement == pytest.approx(-2.0)


def test_a_single_visualization_has_no_diversity_to_search():
    s = S.UnitSearch(2.0, n_vis=1)
    S.record(s, 0.0, 3.0)
    assert S.next_weight(s, 4.0, 1.5, 1 / 64) is None and s.status == S.PASSED


def test_a_tie_with_the_natural_exemplar_is_not_a_pass():
    s = S.UnitSearch(2.0)
    assert S.record(s, 0.0, 2.0) is False and s.hi == 0.0
