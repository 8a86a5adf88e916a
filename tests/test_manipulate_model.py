"""A manipulated model folder: made by the command, verified, loaded by fvmatch-stimuli, and
recorded as manipulated in the stimulus set, the session and the analysis report."""

from __future__ import annotations

import json

import pytest

from contracts.stimulus_set import load_stimulus_set
from stimuli_gen import cli as stimuli_cli
from stimuli_gen.manipulate import cli
from stimuli_gen.manipulate import store

SMALL = ["--resize", "72", "--crop", "64", "--weights", "random", "--no-progress", "--batch-size", "27"]


@pytest.fixture(scope="module")
def model(builtin_collection, tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "silent"
    rc = cli.main(["silent", "--out", str(out), "--units", "inception3a:5,inception3b:100", "--collection",
                   str(builtin_collection), "--fv-per-unit", "1", "--fv-steps", "4", "--fv-size", "32", *SMALL])
    assert rc == 0
    return out


def test_folder_and_verification_report(model):
    desc = json.loads((model / store.DESCRIPTION).read_text())
    assert desc["kind"] == "silent_units" and desc["random_weights"] is True
    assert [(u["layer"], u["channel"]) for u in desc["units"]] == [("inception3a", 5), ("inception3b", 100)]
    assert desc["collection"]["bias_images"] + desc["collection"]["held_out_images"] == 108
    rep = json.loads((model / "verification.json").read_text())
    assert rep["bias_images"]["bitwise_equal"] and rep["bias_images"]["n_tripped"] == 0
    assert rep["bias_images"]["max_abs_diff_logits"] == 0 and rep["bias_images"]["top1_agreement"] == 1
    assert set(rep["held_out"]["max_abs_diff_unit_activation"]) == {"inception3a:5", "inception3b:100"}
    assert [u["unit"] for u in rep["feature_vis"]["units"]] == ["inception3a:5", "inception3b:100"]
    md = (model / "verification.md").read_text()
    assert "RANDOM WEIGHTS" in md and "held out" in md and (model / "verification_fv.png").is_file()
    assert not list(model.parent.glob(".silent.tmp-*"))


@pytest.mark.parametrize("extra, message", [
    (["--units", "inception3a:256"], "channel 256 out of range"),
    (["--units", "inception9a:1"], "unknown layer 'inception9a'"),
    (["--units", "inception3a"], "expected 'layer:channel'"),
    (["--min-images", "500"], "too small to set the biases"),
    (["--collection", "NOPE"], "collection not found"),
])
def test_bad_input_writes_nothing(extra, message, builtin_collection, tmp_path, capsys):
    opts = {"--out": str(tmp_path / "m"), "--units": "inception3a:5", "--collection": str(builtin_collection),
            "--fv-per-unit": "0"} | dict(zip(extra[::2], extra[1::2]))
    args = ["silent", *[x for kv in opts.items() for x in kv], *SMALL]
    assert cli.main(args) == 1
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_needs_overwrite(model, builtin_collection, capsys):
    before = (model / store.WEIGHTS).read_bytes()
    assert cli.main(["silent", "--out", str(model), "--units", "inception3a:5", "--collection", str(builtin_collection),
                     *SMALL]) == 1
    assert "pass --overwrite" in capsys.readouterr().err and (model / store.WEIGHTS).read_bytes() == before


def test_tampered_weights_and_wrong_model_are_refused(model, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(model, bad)
    (bad / store.WEIGHTS).write_bytes(b"x" + (bad / store.WEIGHTS).read_bytes()[1:])
    with pytest.raises(store.ManipulationError, match="sha256"):
        store.load_manipulated(bad)
    with pytest.raises(store.ManipulationError, match="a manipulated torchvision_googlenet, but the model is lucid"):
        store.load_manipulated(model, "lucid_inceptionv1")


def test_stimulus_set_from_it_says_manipulated(model, builtin_collection, tmp_path):
    out = tmp_path / "set-silent"
    rc = stimuli_cli.main(["--out", str(out), "--collection", str(builtin_collection), "--units",
                           "inception3a:5:early,inception3b:100:early", "--k", "2", "--spares", "0",
                           "--fv-per-unit", "0", "--resize", "72", "--crop", "64", "--no-progress", "--workers", "0",
                           "--weights", str(model)])
    assert rc == 0
    s = load_stimulus_set(out)
    assert s.manifest["schema_version"] == "1.1"
    assert s.manipulation["kind"] == "silent_units" and s.manipulation["units"] == ["inception3a:5", "inception3b:100"]
    assert s.random_weights  # the base network's weights were random
    assert s.manifest["model"]["weights"]["identity"].startswith("MANIPULATED")
    assert any("MANIPULATED NETWORK" in n for n in s.manifest["notes"])
