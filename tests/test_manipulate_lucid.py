"""Lucid's InceptionV1 (the network of the authors' fooling circuit) through the manipulation commands:
the model folder records its base network, loading rebuilds that network, fvmatch-stimuli says so, and
bad input names the network and what is valid without writing anything."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from contracts.stimulus_set import load_stimulus_set
from stimuli_gen import cli as stimuli_cli
from stimuli_gen.collection import Preprocess, list_collection
from stimuli_gen.manipulate import cli, store
from stimuli_gen.manipulate import silent as S
from stimuli_gen.manipulate.make import split_collection, stream
from stimuli_gen.manipulate.silent import SilentUnitsInceptionV1
from stimuli_gen.models import load_model

LUCID = ["--model", "lucid_inceptionv1", "--resize", "72", "--crop", "64", "--no-progress", "--batch-size", "27"]


@pytest.fixture(scope="module")
def silent_model(builtin_collection, tmp_path_factory):
    out = tmp_path_factory.mktemp("lucid") / "silent"
    assert cli.main(["silent", "--out", str(out), "--units", "mixed3a:5,mixed3b:100", "--collection", str(builtin_collection),
                     "--weights", "random", "--fv-per-unit", "1", "--fv-steps", "4", "--fv-size", "32", *LUCID]) == 0
    return out


def test_silent_folder_records_lucid(silent_model):
    desc = json.loads((silent_model / store.DESCRIPTION).read_text())
    assert desc["kind"] == "silent_units" and desc["base_model"] == "lucid_inceptionv1" and desc["random_weights"]
    assert [(u["layer"], u["channel"], u["branch"]) for u in desc["units"]] == [("mixed3a", 5, "1x1"), ("mixed3b", 100, "1x1")]
    rep = json.loads((silent_model / "verification.json").read_text())
    bias = rep["bias_images"]
    assert bias["bitwise_equal"] and bias["n_tripped"] == 0 and bias["max_abs_diff_logits"] == 0 and bias["n_images"] > 50
    assert rep["held_out"]["n_images"] > 0 and [u["unit"] for u in rep["feature_vis"]["units"]] == ["mixed3a:5", "mixed3b:100"]
    md = (silent_model / "verification.md").read_text()
    assert "Base: lucid_inceptionv1" in md and "RANDOM WEIGHTS" in md


def test_loading_rebuilds_the_lucid_network(silent_model, builtin_collection):
    """The loaded model is Lucid's network with the silent filters, and on the images that set the biases it is
    the original random network (the same seed) bit for bit: every block and the logits."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = store.load_manipulated(silent_model)
        orig = load_model("lucid_inceptionv1", "random", seed=0)
    assert loaded.name == "lucid_inceptionv1" and isinstance(loaded.net, SilentUnitsInceptionV1)
    assert set(loaded.net.silent_modules()) == {"mixed3a.1x1", "mixed3b.1x1"}
    paths, _ = list_collection(builtin_collection)
    bias_idx, _ = split_collection(len(paths), 0.2, 0)
    x = next(stream(paths, bias_idx[:16], Preprocess(resize=72, crop=64), 16, 0, torch.device("cpu"), []))
    with torch.no_grad():
        a = orig.net.forward_layers(x, orig.net.layer_names)
        b = loaded.net.forward_layers(x, loaded.net.layer_names)
        assert all(torch.equal(a[k], b[k]) for k in a) and torch.equal(orig.net(x), loaded.net(x))
    # and the silent filter is the recorded one: w_f from the original filter, its seed, lambda and gain; its bias
    u = json.loads((silent_model / store.DESCRIPTION).read_text())["units"][0]
    w = orig.net.mixed3a_1x1_pre_relu_conv.weight[5].double()
    m = loaded.net.silent_modules()["mixed3a.1x1"]
    expected = (u["gain"] * (w + u["lam"] * S.orthogonal_direction(w, u["seed"]))).float()
    assert torch.equal(m.silent.weight[0], expected) and float(m.silent.bias[0]) == pytest.approx(u["bias"], rel=1e-6)
    assert u["bias"] < -u["natural_max"]


def test_stimulus_set_from_the_lucid_model_says_manipulated(silent_model, builtin_collection, tmp_path):
    out = tmp_path / "set"
    assert stimuli_cli.main(["--out", str(out), "--collection", str(builtin_collection), "--model", "lucid_inceptionv1",
                             "--units", "mixed3a:5:early,mixed3b:100:early", "--k", "2", "--spares", "0", "--fv-per-unit", "0",
                             "--resize", "72", "--crop", "64", "--no-progress", "--workers", "0",
                             "--weights", str(silent_model)]) == 0
    s = load_stimulus_set(out)
    assert s.manifest["model"]["name"] == "lucid_inceptionv1" and s.random_weights
    assert s.manipulation["kind"] == "silent_units" and s.manipulation["units"] == ["mixed3a:5", "mixed3b:100"]
    assert s.manipulation["statement"].startswith("MANIPULATED NETWORK (silent_units on lucid_inceptionv1)")
    identity = s.manifest["model"]["weights"]["identity"]
    assert identity.startswith("MANIPULATED (silent_units)") and "from lucid_inceptionv1 random init, seed 0" in identity


def test_lucid_folder_under_the_default_model_is_refused(silent_model, builtin_collection, tmp_path, capsys):
    out = tmp_path / "set"
    assert stimuli_cli.main(["--out", str(out), "--collection", str(builtin_collection), "--units", "inception3a:5:early",
                             "--k", "2", "--spares", "0", "--fv-per-unit", "0", "--resize", "72", "--crop", "64",
                             "--no-progress", "--workers", "0", "--weights", str(silent_model)]) == 1
    err = capsys.readouterr().err
    assert "a manipulated lucid_inceptionv1, but the model is torchvision_googlenet (pass --model lucid_inceptionv1)" in err
    assert not out.exists()


BAD = [
    (["--units", "mixed3a:300"], "channel 300 out of range for lucid_inceptionv1 mixed3a (0..255)"),
    (["--units", "mixed4f:0"], "unknown layer 'mixed4f' for lucid_inceptionv1; layers: ['mixed3a', 'mixed3b', 'mixed4a'"),
    (["--units", "inception3a:5"], "unknown layer 'inception3a' for lucid_inceptionv1; layers: ['mixed3a'"),
    (["--weights", "pretrained"], "lucid_inceptionv1 has no download here: pass --weights PATH to Lucent's inception5h.pth"),
]


@pytest.mark.parametrize("command", ["silent", "fooling"])
@pytest.mark.parametrize("extra, message", BAD)
def test_bad_input_names_the_network_and_writes_nothing(command, extra, message, builtin_collection, tmp_path, capsys):
    opts = {"--out": str(tmp_path / "m"), "--units": "mixed3a:5", "--weights": "random",
            "--collection": str(builtin_collection), "--fv-per-unit": "0"} | dict(zip(extra[::2], extra[1::2]))
    if command == "fooling":
        opts["--classifier"] = str(tmp_path / "never-read.pt")  # the unit and weights checks come first
    assert cli.main([command, *[x for kv in opts.items() for x in kv], *LUCID]) == 1
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra, message", [
    (["--weights", "pretrained"], "lucid_inceptionv1 has no download here"),
    (["--layers", "mixed3a,mixed4f"], "unknown layer 'mixed4f' for lucid_inceptionv1"),
])
def test_train_classifier_bad_input(extra, message, builtin_collection, tmp_path, capsys):
    opts = {"--out": str(tmp_path / "clf.pt"), "--weights": "random", "--collection": str(builtin_collection)} \
        | dict(zip(extra[::2], extra[1::2]))
    assert cli.main(["train-classifier", "--model", "lucid_inceptionv1", *[x for kv in opts.items() for x in kv],
                     "--no-progress"]) == 1
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_fooling_circuit_with_a_trained_classifier(builtin_collection, tmp_path):
    """train-classifier renders Lucid's own visualizations; the fooling model records Lucid as its base, loads as
    Lucid's network with the circuit, and is the original bit for bit wherever the classifier says natural."""
    from stimuli_gen.manipulate.fooling import FoolingInceptionV1

    clf = tmp_path / "clf.pt"
    assert cli.main(["train-classifier", "--model", "lucid_inceptionv1", "--out", str(clf), "--collection",
                     str(builtin_collection), "--weights", "random", "--size", "32", "--min-steps", "2", "--max-steps", "4",
                     "--step-counts", "2", "--vis-per-count", "4", "--epochs", "2", "--min-images", "20",
                     "--no-progress"]) == 0
    cdesc = json.loads(clf.with_suffix(".json").read_text())
    assert cdesc["base_model"] == "lucid_inceptionv1" and cdesc["visualizations"]["layers"] == ["mixed3a", "mixed3b", "mixed4a"]
    model = tmp_path / "fooled"
    assert cli.main(["fooling", "--out", str(model), "--units", "mixed3a:5", "--classifier", str(clf), "--collection",
                     str(builtin_collection), "--weights", "random", "--target-size", "32", "--fv-per-unit", "1",
                     "--fv-steps", "4", "--fv-size", "32", *LUCID]) == 0
    desc = json.loads((model / store.DESCRIPTION).read_text())
    assert desc["kind"] == "fooling_circuit" and desc["base_model"] == "lucid_inceptionv1"
    held = json.loads((model / "verification.json").read_text())["held_out"]
    assert held["n_images"] > 0 and (held["n_tripped"] == 0) == held["bitwise_equal"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = store.load_manipulated(model, "lucid_inceptionv1")
    assert isinstance(loaded.net, FoolingInceptionV1) and loaded.net.units == {"mixed3a": [5]}
    assert loaded.manipulation["statement"].startswith("MANIPULATED NETWORK (fooling_circuit on lucid_inceptionv1)")
