"""The generator end to end through the CLI: a valid stimulus set, provenance, clear early errors."""

import json
import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from contracts.stimulus_set import image_relpath, load_stimulus_set
from stimuli_gen import cli, exemplars
from stimuli_gen.collection import Preprocess, load_crop
from stimuli_gen.saved_activations import activation_range_problem

torch.set_num_threads(1)
SMALL = ["--resize", "72", "--crop", "64", "--weights", "random", "--no-progress", "--workers", "0", "--batch-size", "16"]


@pytest.fixture(scope="module")
def collection(builtin_collection, tmp_path_factory):
    """A text-file collection: 24 built-in photographs plus one broken file."""
    d = tmp_path_factory.mktemp("coll")
    paths = sorted(builtin_collection.glob("*/*.jpg"))[::4][:24]
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    lst = d / "list.txt"
    lst.write_text("\n".join([str(p) for p in paths] + ["broken.jpg"]) + "\n")
    return lst


@pytest.fixture(scope="module")
def made_set(collection, tmp_path_factory):
    out = tmp_path_factory.mktemp("sets") / "tiny-set"
    rc = cli.main(["--out", str(out), "--collection", str(collection), "--units-per-group", "1",
                   "--k", "3", "--spares", "1", "--fv-per-unit", "0", "--seed", "4", *SMALL])
    assert rc == 0
    return out


def test_set_is_valid_and_complete(made_set, collection):
    s = load_stimulus_set(made_set)
    assert s.verify_files() == []
    assert len(s.units) == 3 and set(s.units.group) == {"early", "middle", "late"}
    for u in s.units.unit_id:
        for kind in ("natural_max", "natural_min"):
            imgs = s.unit_images(u, kind)
            assert imgs["rank"].tolist() == [0, 1, 2, 3] and imgs.spare.tolist() == ["0", "0", "0", "1"]
            acts = imgs.activation.to_numpy()
            assert (np.diff(acts) <= 0).all() if kind == "natural_max" else (np.diff(acts) >= 0).all()
            assert imgs.file.tolist() == [image_relpath(u, kind, r) for r in range(4)]
    # the PNG is exactly the crop the network saw
    row = s.images.iloc[0]
    src = str(collection.parent / row.source) if not row.source.startswith("/") else row.source
    png = np.asarray(Image.open(s.path(row.file)))
    assert png.shape == (64, 64, 3)
    assert np.array_equal(png, load_crop(src, Preprocess(resize=72, crop=64))[0].permute(1, 2, 0).numpy())


def test_manifest_records_provenance_and_random_weights(made_set):
    m = json.loads((made_set / "manifest.json").read_text())
    assert m["random_weights"] is True and m["model"]["weights"]["source"] == "random"
    assert any("RANDOM WEIGHTS" in n for n in m["notes"])
    p = m["parameters"]
    assert p["collection"]["n_listed"] == 25 and p["collection"]["n_skipped"] == 1
    assert p["collection"]["preprocess"]["crop"] == 64 and p["exemplars"]["k"] == 3
    assert p["exemplars"]["statistic"] == "mean" and p["exemplars"]["relu"] == "pre"
    assert m["seeds"]["units"] == 4 and m["seeds"]["weights"] == 4
    # the random network is recalibrated (order-1 activations) and says so
    cal = m["model"]["weights"]["calibration"]
    assert cal["n_batchnorm"] > 0 and "re-estimated" in m["model"]["weights"]["identity"]
    assert all(0.3 < v < 3 for v in cal["activation_std_after"].values()), cal["activation_std_after"]
    assert p["sampling"]["method"] == "stratified" and "per_group // n_layers" in p["sampling"]["rule"]
    assert sum(p["sampling"]["units_per_layer"]["late"].values()) == 1
    assert {"torch", "torchvision", "pillow", "scikit-image"} <= set(m["software"])
    assert m["layer_groups"]["middle"] == ["inception4a", "inception4b", "inception4c"]
    skipped = pd.read_csv(made_set / "skipped_files.csv")
    assert skipped.source.tolist() == ["broken.jpg"] and "corrupt or truncated" in skipped.reason[0]
    assert "skipped_files.csv" in m["files"] and not (made_set / ".work").exists()


@pytest.fixture
def no_pass(monkeypatch):
    """Any check that should fail before work fails before the first image is decoded."""
    monkeypatch.setattr(exemplars, "run_pass", lambda *a, **k: pytest.fail("work started"))
    import stimuli_gen.pipeline as P

    monkeypatch.setattr(P, "run_pass", lambda *a, **k: pytest.fail("work started"))


@pytest.mark.parametrize("extra, message", [
    (["--collection", "EMPTY"], "is empty"),
    (["--k", "30"], "has only 25 images"),
    (["--units", "inception9a:1:early"], "unknown layer 'inception9a'"),
    (["--units", "inception4a:512"], "channel 512 out of range for torchvision_googlenet inception4a"),
    (["--config", "BADSTAT"], "statistic must be 'mean' or 'max'"),  # a TOML value (the flag has choices)
    (["--model", "lucid_inceptionv1", "--weights", "pretrained"], "pass --weights PATH"),
    (["--device", "cuda"], "CUDA is not available here"),
])
def test_errors_before_any_work(extra, message, collection, tmp_path, capsys, no_pass, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a GPU machine
    (tmp_path / "empty").mkdir()
    args = ["--out", str(tmp_path / "x"), "--collection", str(collection), "--fv-per-unit", "0", *SMALL, *extra]
    (tmp_path / "bad.toml").write_text('[exemplars]\nstatistic = "median"\n')
    args = [str(tmp_path / "empty") if a == "EMPTY" else str(tmp_path / "bad.toml") if a == "BADSTAT" else a for a in args]
    if "pretrained" in extra:
        args.remove("random")
        args.remove("--weights")
    assert cli.main(args) == 1
    assert message in capsys.readouterr().err


def test_existing_output_needs_overwrite(made_set, collection, capsys, no_pass):
    assert cli.main(["--out", str(made_set), "--collection", str(collection), *SMALL]) == 1
    assert "pass --overwrite" in capsys.readouterr().err
    # a failing check never costs the old set, even with --overwrite
    assert cli.main(["--out", str(made_set), "--collection", str(collection), "--overwrite", "--units", "inception4a:999",
                     *SMALL]) == 1
    assert load_stimulus_set(made_set).verify_files() == []


def fake_renderer(monkeypatch, margin=lambda unit_id: 1.0) -> dict:
    """A stand-in renderer (the real one is stimuli_gen.render) writing small PNGs; ``margin(unit_id)``
    is each FV's activation minus the unit's best natural one. Returns what it was called with."""
    calls = {"rendered": []}

    class RenderConfig:
        def __init__(self, **kw):
            self.kw = kw

        @classmethod
        def from_preset(cls, name, **overrides):
            calls["preset"] = (name, overrides)
            return cls(preset=name, **overrides)

        def to_dict(self):
            return dict(self.kw)

    def render(model, units_df, cfg, set_root, device, checkpoint_dir, progress, resume, targets):
        calls["targets"] = targets
        calls["rendered"].append(list(units_df.unit_id))
        rows = []
        for u in units_df.unit_id:
            for r in range(cfg.kw["n_vis"]):
                rel = image_relpath(u, "feature_vis", r)
                (set_root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (64, 64), (r, 0, 0)).save(set_root / rel)
                rows.append({"unit_id": u, "kind": "feature_vis", "rank": r, "activation": 1.0, "file": rel,
                             "seed": 2**62 + r, "margin": margin(u), "search_status": "passed" if margin(u) > 0 else "failed"})
        return pd.DataFrame(rows)

    def validate(fv_rows, natural_rows):
        assert set(natural_rows.kind) == {"natural_max", "natural_min"}
        return pd.DataFrame({"unit_id": sorted(set(fv_rows.unit_id)), "ok": True})

    fake = types.ModuleType("stimuli_gen.render")
    fake.RenderConfig, fake.render_feature_visualizations, fake.validate_feature_vis = RenderConfig, render, validate
    monkeypatch.setitem(sys.modules, "stimuli_gen.render", fake)
    return calls


def test_feature_vis_step_is_wired_to_the_renderer(collection, tmp_path, monkeypatch):
    """With a stand-in renderer: its rows join the images table, its config goes into the manifest,
    validation.csv is written and hashed."""
    calls = fake_renderer(monkeypatch)
    out = tmp_path / "fv-set"
    assert cli.main(["--out", str(out), "--collection", str(collection), "--units", "inception4a:3,inception5b:7",
                     "--k", "2", "--spares", "0", "--fv-per-unit", "2", "--fv-steps", "8", "--fv-size", "64", *SMALL]) == 0
    s = load_stimulus_set(out)
    assert s.verify_files() == []
    assert calls["preset"] == ("fvmatch", {"n_vis": 2, "seed": 0, "relu": "pre", "statistic": "mean", "steps": 8, "size": 64})
    assert len(s.images[s.images.kind == "feature_vis"]) == 4
    best = s.images[s.images.kind == "natural_max"].groupby("unit_id").activation.max().to_dict()
    assert calls["targets"] == pytest.approx(best) and len(best) == 2  # the diversity search's targets
    assert s.manifest["parameters"]["feature_vis"]["steps"] == 8
    assert "validation.csv" in s.manifest["files"] and len(pd.read_csv(out / "validation.csv")) == 2
    fv = s.images[s.images.kind == "feature_vis"]
    assert fv.seed.tolist() == [str(2**62), str(2**62 + 1)] * 2  # 64-bit seeds survive next to natural rows
    assert s.images[s.images.kind == "natural_max"].image_index.str.isdigit().all()


def test_units_whose_visualizations_lose_are_replaced_by_reserves_of_their_layer(collection, tmp_path, monkeypatch):
    # inception4a's first unit and its first reserve lose to natural images; the second reserve wins
    losers = {"inception4a_c0003"}
    calls = fake_renderer(monkeypatch, margin=lambda u: -0.5 if u in losers or len(calls["rendered"]) == 2 else 1.0)
    out = tmp_path / "replaced-set"
    assert cli.main(["--out", str(out), "--collection", str(collection), "--units", "inception4a:3,inception5b:7",
                     "--reserve-units", "2", "--k", "2", "--spares", "0", "--fv-per-unit", "2", "--fv-steps", "8",
                     *SMALL]) == 0
    s = load_stimulus_set(out)
    assert s.verify_files() == []
    first, second, third = calls["rendered"]
    assert first == ["inception4a_c0003", "inception5b_c0007"] and len(second) == len(third) == 1
    assert second[0].startswith("inception4a_") and third[0].startswith("inception4a_") and second != third
    assert s.units.unit_id.tolist() == [third[0], "inception5b_c0007"]  # same position, same layer
    assert set(s.images.unit_id) == set(s.units.unit_id)  # no exemplars or FVs of the losers or unused reserves
    assert not (out / "images" / "inception4a_c0003").exists()
    replaced = s.manifest["parameters"]["sampling"]["replaced"]
    assert [(r["unit_id"], r["replaced_by"]) for r in replaced] == [("inception4a_c0003", second[0]),
                                                                    (second[0], third[0])]
    assert any("replaced by a reserve unit" in n for n in s.manifest["notes"])


def test_without_reserves_losing_units_are_kept_and_reported(collection, tmp_path, monkeypatch):
    calls = fake_renderer(monkeypatch, margin=lambda u: -0.5)
    out = tmp_path / "kept-set"
    assert cli.main(["--out", str(out), "--collection", str(collection), "--units", "inception4a:3",
                     "--k", "2", "--spares", "0", "--fv-per-unit", "1", *SMALL]) == 0
    assert calls["rendered"] == [["inception4a_c0003"]]
    assert load_stimulus_set(out).manifest["parameters"]["sampling"]["replaced"] == []


@pytest.mark.slow
def test_torchrun_two_processes_write_the_same_set(collection, tmp_path):
    """The real launcher: ``torchrun --nproc_per_node=2 -m stimuli_gen.cli`` (gloo on CPU) gives the
    same exemplars as one process."""
    import os
    import subprocess

    args = ["--collection", str(collection), "--units-per-group", "1", "--k", "3", "--fv-per-unit", "0", *SMALL]
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([torchrun, "--nproc_per_node=2", "-m", "stimuli_gen.cli", "--out", str(tmp_path / "two"), *args],
                   check=True, env=env, timeout=600)
    assert cli.main(["--out", str(tmp_path / "one"), *args]) == 0
    one, two = load_stimulus_set(tmp_path / "one"), load_stimulus_set(tmp_path / "two")
    cols = ["unit_id", "kind", "rank", "image_index", "source"]
    assert one.images[cols].equals(two.images[cols])
    assert two.manifest["parameters"]["distributed"]["world_size"] == 2
    assert (tmp_path / "one" / "skipped_files.csv").read_text() == (tmp_path / "two" / "skipped_files.csv").read_text()


def test_resume_after_a_crash_reuses_the_pass_and_saves_activations(collection, made_set, tmp_path, monkeypatch, capsys):
    import stimuli_gen.pipeline as P

    out = tmp_path / "tiny-set"
    args = ["--out", str(out), "--collection", str(collection), "--units-per-group", "1", "--k", "3", "--spares", "1",
            "--fv-per-unit", "0", "--seed", "4", "--save-activations", *SMALL]
    f16 = cli.main([*args[:1], str(tmp_path / "f16"), *args[2:]])
    assert f16 == 0
    notes = json.loads((tmp_path / "f16" / "manifest.json").read_text())["notes"]
    # the recalibrated random network's activations are O(1): float16 holds them
    assert not any("float16 cannot hold these activations" in n for n in notes)
    # an untrained network without recalibration underflowed float16 (~1e-8): say so, refuse to re-use
    saved = np.load(tmp_path / "f16" / "activations.npy")
    np.save(tmp_path / "f16" / "activations.npy", np.where(np.isnan(saved), saved, 0).astype(np.float16))
    assert "float16 cannot hold these activations" in activation_range_problem(tmp_path / "f16" / "activations.npy")
    capsys.readouterr()
    assert cli.main([*args[:1], str(tmp_path / "x"), *args[2:-len(SMALL)], *SMALL, "--activations-from", str(tmp_path / "f16")]) == 1
    assert "are constant or infinite" in capsys.readouterr().err
    args += ["--activations-dtype", "float32"]
    real_choose = P.choose_exemplars
    monkeypatch.setattr(P, "choose_exemplars", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        cli.main(args)
    assert (out / ".work" / "pass_rank0.pt").is_file()
    monkeypatch.setattr(P, "choose_exemplars", real_choose)
    monkeypatch.setattr(P, "run_pass", _no_new_images(P.run_pass))
    assert cli.main(args + ["--resume"]) == 0
    cols = ["unit_id", "kind", "rank", "activation", "source"]
    assert load_stimulus_set(out).images[cols].equals(load_stimulus_set(made_set).images[cols])
    act = np.load(out / "activations.npy")
    columns = pd.read_csv(out / "activations_columns.csv")
    assert act.shape == (25, 256 + 480 + 512 * 3 + 528 + 832 * 2 + 1024) and len(columns) == act.shape[1]
    assert act.dtype == np.float32
    assert np.isnan(act[24]).all() and not np.isnan(act[:24]).any()  # row 24 is the broken file
    assert "activations.npy" in json.loads((out / "manifest.json").read_text())["files"]

    # a later set picks its exemplars from these activations without a pass (float16 preselection,
    # then fp32 re-scoring): the same exemplars as the direct run
    again = tmp_path / "from-saved"
    base = [a for a in args if a not in ("--save-activations",)][:-2]
    base[base.index(str(out))] = str(again)
    assert cli.main(base + ["--activations-from", str(out)]) == 0
    got, want = load_stimulus_set(again).images, load_stimulus_set(made_set).images
    same = ["unit_id", "kind", "rank", "image_index", "source"]
    assert got[same].equals(want[same])
    np.testing.assert_allclose(got.activation, want.activation, rtol=1e-4)  # re-scored in other batches
    assert (again / "skipped_files.csv").read_text() == (made_set / "skipped_files.csv").read_text()
    capsys.readouterr()
    assert cli.main(base + ["--activations-from", str(out), "--statistic", "max", "--overwrite"]) == 1
    assert "made differently: statistic ('mean' there, 'max' here)" in capsys.readouterr().err


def _no_new_images(run_pass):
    """run_pass that fails if it decodes any image (the checkpoint says the pass is complete)."""
    import stimuli_gen.exemplars as E

    def wrapped(*a, **k):
        real = E.make_loader
        E.make_loader = lambda *x, **y: pytest.fail("the pass ran again")
        try:
            return run_pass(*a, **k)
        finally:
            E.make_loader = real

    return wrapped


def test_demo_path_builtin_collection_and_weights_auto(tmp_path, monkeypatch, capsys):
    """``--collection builtin --weights auto`` as the demo calls it; with an empty torch cache
    ``auto`` falls back to random weights and says so loudly in the log and the manifest."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-cache"))
    out = tmp_path / "demo"
    args = ["--out", str(out), "--collection", "builtin", "--builtin-dir", str(tmp_path / "builtin"), "--weights", "auto",
            "--units", "inception3a:1", "--k", "2", "--spares", "0", "--fv-per-unit", "0", "--seed", "0",
            *[a for a in SMALL if a not in ("--weights", "random")]]
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "RANDOM WEIGHTS" in err and "--weights auto fell back to RANDOM WEIGHTS" in err
    s = load_stimulus_set(out)
    assert s.random_weights and any("fell back" in n for n in s.manifest["notes"])
    assert len(list((tmp_path / "builtin").glob("*/*.jpg"))) == s.manifest["parameters"]["collection"]["n_listed"] == 108
    assert cli.main(args) == 1 and "pass --overwrite" in capsys.readouterr().err
    assert cli.main(args + ["--overwrite"]) == 0
