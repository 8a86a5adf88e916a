"""The control comparison report (``make demo-control`` ends with it) on tiny simulated studies."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis import control_compare as CC
from analysis.simulate import SimulationSpec, write_sessions
from contracts.session import read_session_info, write_session_info

MANIPULATION = {"kind": "silent_units", "units": ["inception3a:1"], "statement": "MANIPULATED NETWORK (silent_units)"}


def _fake_set(root, groups=("early", "middle", "late"), normalised=0.8, flagged=()):
    """Only what the comparison reads of a set: path_similarity.csv, validation.csv, the figure."""
    root.mkdir(parents=True)
    rows = []
    for g in groups:
        for u in range(3):
            uid = f"{g}_u{u}"
            for layer, depth in (("inception3a", 0.3), ("inception4c", 0.6), ("logits", 1.0)):
                rows.append({"unit_id": uid, "group": g, "unit_layer": "inception4c", "layer": layer, "depth": depth,
                             "normalised": normalised if uid not in flagged else 0.0, "metric": "spearman"})
    t = pd.DataFrame(rows)
    t.to_csv(root / "path_similarity.csv", index=False)
    pd.DataFrame({"unit_id": sorted(set(t.unit_id)),
                  "path_similarity_flag": [u in flagged for u in sorted(set(t.unit_id))]}).to_csv(root / "validation.csv", index=False)
    from PIL import Image

    Image.new("RGB", (40, 20), "white").save(root / "path_similarity.png")
    return root


def _study(tmp_path, name, b_fv, manipulation=None):
    spec = SimulationSpec(n_participants=4, reps_per_cell=4, units_per_group=4, n_catch=2, b_feature_vis=b_fv,
                          b_fv_middle=0.0, b_fv_late=0.0, sd_unit=0.0, experiment=name, set_id=name)
    folders = write_sessions(tmp_path / "sessions", spec, seed=3)
    for f in folders:  # mark the manipulated study's set as session 1.3+ does
        info = read_session_info(f)
        if manipulation:
            info["stimulus_set"]["manipulation"] = manipulation
        write_session_info(f, {k: v for k, v in info.items() if k not in ("schema", "schema_version")})
    return tmp_path / "sessions" / name


def test_comparison_report_side_by_side(tmp_path):
    orig_set = _fake_set(tmp_path / "sets" / "orig")
    man_set = _fake_set(tmp_path / "sets" / "man", normalised=0.1, flagged=("early_u0", "late_u2"))
    orig = _study(tmp_path, "orig", b_fv=0.0)
    man = _study(tmp_path, "man", b_fv=-4.0, manipulation=MANIPULATION)
    out = tmp_path / "report"
    assert CC.main(["--original", str(orig), "--manipulated", str(man), "--out", str(out), "--n-boot", "200",
                    "--original-set", str(orig_set), "--manipulated-set", str(man_set)]) == 0
    table = pd.read_csv(out / "accuracy_comparison.csv")
    assert set(table.study) == {"original", "manipulated"} and set(table.layer_group) == {"early", "middle", "late", "all"}
    acc = table[(table.level == "row") & (table.layer_group == "all")].set_index(["study", "trial_type"]).accuracy
    # the simulated manipulation hits feature-visualization trials only
    assert acc["manipulated", "feature_vis"] < acc["original", "feature_vis"] - 0.2
    assert acc["manipulated", "exemplar"] == pytest.approx(acc["original", "exemplar"], abs=0.15)
    main_trials = CC.main_trials(pd.read_csv(orig / "sub-S01_ses-01" / "trials.csv"))
    assert len(main_trials) and not main_trials.is_catch.astype(bool).any()
    ps = pd.read_csv(out / "path_similarity_comparison.csv")
    assert ps.groupby("study").flagged.sum().to_dict() == {"manipulated": 2, "original": 0}
    md = (out / "report.md").read_text()
    for text in ("Accuracy by condition", "manipulated - original", "silent_units of units inception3a:1",
                 "figures/path_similarity_original.png", "figures/path_similarity_manipulated.png", "RANDOM WEIGHTS",
                 "Did the manipulation act on the visualizations?", "not measured: "):
        assert text in md, text
    side = CC.side_by_side(table)
    assert list(side.columns[:5]) == ["trial type", "layer group", "chance", "original", "manipulated"]
    assert list(side["trial type"]) == ["exemplar"] * 4 + ["feature_vis"] * 4
    assert (out / "figures" / "accuracy_comparison.png").is_file() and "data:image/png;base64" in (out / "report.html").read_text()


def test_comparison_refuses_swapped_or_unmanipulated_studies(tmp_path, capsys):
    orig = _study(tmp_path, "orig", b_fv=0.0)
    other = _study(tmp_path, "other", b_fv=0.0)
    man = _study(tmp_path, "man", b_fv=-4.0, manipulation=MANIPULATION)
    out = tmp_path / "r"
    assert CC.main(["--original", str(orig), "--manipulated", str(other), "--out", str(out)]) == 1
    assert "is not a manipulated network's" in capsys.readouterr().err
    assert CC.main(["--original", str(man), "--manipulated", str(orig), "--out", str(out)]) == 1
    assert "is itself manipulated" in capsys.readouterr().err and not out.exists()
