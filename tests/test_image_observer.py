"""The image-computable simulated observer: assignment from feature similarity, in the real window."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from experiment import image_observer as IO
from experiment.simulate import SimulatedParticipant, parse_policy
from test_experiment_session import display_env, run_cli, session_args  # noqa: F401  (display_env is a fixture)


def test_assignment_maximizes_total_similarity():
    sim = np.array([[0.1, 0.9, 0.0], [0.8, 0.85, 0.1], [0.0, 0.2, 0.3]])
    # greedy row by row would give row 1 -> column 1 (0.85); the optimum gives it column 0
    assert IO.assignment_from_similarity(sim) == [1, 0, 2]


def test_policy_strings():
    assert parse_policy("features") == "features" and IO.feature_layer("features") == "inception3b"
    assert IO.feature_layer(parse_policy("features:inception4a")) == "inception4a"
    with pytest.raises(ValueError, match="features\\[:LAYER\\]"):
        parse_policy("features:conv1")


def test_same_images_are_matched_from_the_images_alone(fixture_set):
    from contracts.stimulus_set import load_stimulus_set

    s = load_stimulus_set(fixture_set)
    units = list(s.units.unit_id[:3])
    rows = [tuple(s.unit_images(u, "natural_max").file[:2]) for u in units]
    perm = [2, 0, 1]  # candidate row j shows unit perm[j]
    sim = SimulatedParticipant("features", seed=0, stimset_root=s.root)

    class Trial:
        reference_files = rows
        candidate_files = [rows[p] for p in perm]

    assert sim.choose_assignment(tuple(perm), trial=Trial) == [perm.index(i) for i in range(3)]


@pytest.mark.display
def test_feature_observer_runs_a_session_and_is_recorded(fixture_set, tmp_path, display_env):
    from contracts.session import read_session_info
    data = tmp_path / "data"
    out = run_cli(session_args(fixture_set, data, "simfeat", "features"), display_env, timeout=600)
    assert out.returncode == 0, out.stderr
    folder = data / "demo" / "sub-simfeat_ses-01"
    info = read_session_info(folder)
    assert info["status"] == "completed" and info["simulated"] == "features"
    rec = info["simulated_observer"]  # which network answered (contract 1.5)
    assert rec["policy"] == "features" and rec["layer"] == "inception3b" and rec["network"] == "torchvision_googlenet"
    assert rec["weights"] == IO.observer_record("features")["weights"]
    trials = pd.read_csv(folder / "trials.csv")
    catch = trials[trials.is_catch.astype(str).isin(["1", "True", "true"])]
    assert len(catch) and catch.n_correct.eq(3).all()  # identical images on both sides: always right


def test_observer_record_names_the_network_and_hashes_its_weights():
    rec = IO.observer_record("features:inception4a")
    w = rec["weights"]
    assert rec["layer"] == "inception4a" and w["source"] in ("pretrained", "random")
    assert w["random"] == (w["source"] == "random") and len(w["state_sha256"]) == 64
    if w["random"]:
        assert "random" in w["identity"] and w["file_sha256"] is None
    # the hash follows the weights: one changed value gives another hash
    import copy

    import torch

    net = copy.deepcopy(IO._network("auto").net)
    assert IO.state_sha256(net) == w["state_sha256"]
    with torch.no_grad():
        next(net.parameters()).view(-1)[0] += 1.0
    assert IO.state_sha256(net) != w["state_sha256"]
