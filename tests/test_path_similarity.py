"""The path-similarity check (Geirhos et al. 2023): ground truth with a random network, the pure
functions, seeds, batch size, bad input, and the set's files (standalone and after generation)."""

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.report import Block
from contracts.stimulus_set import load_stimulus_set, write_stimulus_set
from stimuli_gen import cli
from stimuli_gen import path_similarity as PS
from stimuli_gen.collection import Preprocess, load_crop
from stimuli_gen.models import TorchvisionGoogLeNet, load_model
from stimuli_gen.path_similarity_run import CheckOptions, activation_vectors, make_plan, path_layers

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def net():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model("torchvision_googlenet", "random", seed=0)


@pytest.fixture(scope="module")
def vectors(net, builtin_collection):
    """Every stage's vectors of the 108 built-in crops at 64 px (about 2 s)."""
    paths = sorted(builtin_collection.glob("*/*.jpg"))
    crops = [load_crop(str(p), Preprocess(resize=72, crop=64))[0] for p in paths]
    return activation_vectors(net.net, net.name, crops, 64, "mean", 64), crops


def _ground_truth(V, layer, channel, fv_kind):
    """The unit's top 16 images split in two: 8 "top exemplars" and 8 held out; unrelated: a seeded sample."""
    order = np.argsort(-V[layer][:, channel])
    top, held = order[0:16:2], order[1:16:2]
    ids = np.arange(len(order))
    unrel = PS.choose_unrelated(ids, set(order[:16]), 20, 0)
    fv = held if fv_kind == "held-out" else PS.choose_unrelated(ids, set(order[:16]) | set(unrel), 8, 1)
    return PS.unit_table("u", V, fv, top, unrel, PS.layer_depths(list(V)))


@pytest.mark.parametrize("layer,channel", [("inception3a", 5), ("inception4c", 100), ("inception5b", 7)])
def test_held_out_top_exemplars_are_near_one_and_unrelated_images_near_zero(vectors, layer, channel):
    V, _ = vectors
    held = _ground_truth(V, layer, channel, "held-out").set_index("layer").normalised
    unrel = _ground_truth(V, layer, channel, "unrelated").set_index("layer").normalised
    inner = held.drop(index=["conv1_pool1", "logits"])  # the first stem stage separates little; see README
    assert 0.8 < inner.median() < 1.25 and (inner > 0.6).all(), held
    assert 0.7 < held[layer] < 1.4
    assert abs(unrel.drop(index=["conv1_pool1", "logits"]).median()) < 0.3, unrel
    assert unrel.drop(index=["conv1_pool1", "logits"]).median() < inner.median() - 0.6


def test_an_image_compared_with_itself_gives_raw_one(vectors):
    V, _ = vectors
    for metric in PS.METRICS:
        for layer, x in V.items():
            if layer == "logits":
                continue
            sim = PS.similarity_matrix(x[:5], x[:5], metric)
            assert np.allclose(np.diag(sim), 1.0, atol=1e-9), (metric, layer)


def test_metrics_against_scipy_and_ties():
    from scipy.stats import pearsonr, spearmanr

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 40)), rng.normal(size=(2, 40))
    a[0, :10] = 0.0  # ties, as after a ReLU
    s = PS.similarity_matrix(a, b, "spearman")
    p = PS.similarity_matrix(a, b, "pearson")
    c = PS.similarity_matrix(a, b, "cosine")
    for i in range(3):
        for j in range(2):
            assert s[i, j] == pytest.approx(spearmanr(a[i], b[j]).statistic, abs=1e-12)
            assert p[i, j] == pytest.approx(pearsonr(a[i], b[j]).statistic, abs=1e-12)
            assert c[i, j] == pytest.approx(a[i] @ b[j] / np.linalg.norm(a[i]) / np.linalg.norm(b[j]), abs=1e-12)
    assert np.isnan(PS.similarity_matrix(np.ones((1, 5)), b[:, :5], "pearson")).all()  # constant: undefined


def test_normalise_and_references():
    assert PS.normalise(0.5, 0.9, 0.1) == pytest.approx(0.5)
    assert np.isnan(PS.normalise(0.5, 0.3, 0.3)) and np.isnan(PS.normalise(0.5, 0.2, 0.3))
    x = np.random.default_rng(1).normal(size=(6, 30))
    r = PS.unit_layer_similarity(x[:2], x[2:5], x[5:], "pearson")
    assert r["rho_related"].n_pairs == 3 and r["rho_fv"].n_pairs == 6 and r["rho_unrelated"].n_pairs == 3
    with pytest.raises(ValueError, match="at least 2 top exemplars"):
        PS.unit_layer_similarity(x[:2], x[2:3], x[5:])


def test_summary_flags_units_that_stay_at_the_unrelated_level():
    units = pd.DataFrame({"unit_id": ["a", "b", "c"], "layer": ["l2", "l2", "l2"], "group": ["g"] * 3})
    t = pd.DataFrame({"unit_id": ["a"] * 3 + ["b"] * 3 + ["c"] * 3, "layer": ["l1", "l2", "l3"] * 3,
                      "depth": [1 / 3, 2 / 3, 1.0] * 3,
                      "normalised": [0.1, 0.2, 0.9, 0.2, 0.7, 0.8, np.nan, np.nan, 0.9]})
    s = PS.unit_summary(t, units).set_index("unit_id")
    assert s.loc["a", "path_similarity_flag"] and "like unrelated natural images" in s.loc["a", "path_similarity_note"]
    assert s.loc["a", "path_similarity_first_depth"] == 1.0
    assert not s.loc["b", "path_similarity_flag"] and s.loc["b", "path_similarity_first_depth"] == pytest.approx(2 / 3)
    assert not s.loc["c", "path_similarity_flag"] and s.loc["c", "path_similarity_note"].startswith("not determined")


def test_batch_size_does_not_change_the_vectors(net, vectors):
    V, crops = vectors
    V1 = activation_vectors(net.net, net.name, crops[:9], 64, "mean", batch_size=1)
    V4 = activation_vectors(net.net, net.name, crops[:9], 64, "mean", batch_size=4)
    assert list(V1) == path_layers(net.name, net.net)
    for layer in V1:
        assert np.allclose(V1[layer], V4[layer], rtol=1e-4, atol=1e-6), layer
        assert np.allclose(V1[layer], V[layer][:9], rtol=1e-4, atol=1e-6), layer


@pytest.fixture
def small_set(tmp_path):
    from stimset_fixture import make_fixture_set

    return make_fixture_set(tmp_path / "ps-set", tmp_path / "coll", units_per_group=1, k=5, size=64)


def test_unrelated_choice_is_seeded_and_independent_of_the_other_units(small_set):
    s = load_stimulus_set(small_set)
    opts = CheckOptions(n_unrelated=6, seed=3)

    def picks(units, seed):
        plan = make_plan(units, s.images, small_set, CheckOptions(n_unrelated=6, seed=seed))
        return {u: sorted(str(plan.images[i]) for i in r["unrelated"]) for u, r in plan.rows.items()}

    a, b = picks(s.units, 3), picks(s.units, 3)
    assert a == b
    one = picks(s.units.iloc[[1]], 3)
    assert one[s.units.unit_id.iloc[1]] == a[s.units.unit_id.iloc[1]]
    assert picks(s.units, 4) != a
    for u, files in a.items():  # never the unit's own images
        assert not any(f"/{u}/" in f for f in files)
    assert opts.n_unrelated == 6


def _snapshot(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_set_without_feature_visualizations_is_refused_and_untouched(small_set, tmp_path):
    s = load_stimulus_set(small_set)
    root = tmp_path / "no-fv"
    shutil.copytree(small_set, root)
    write_stimulus_set(root, {k: v for k, v in s.manifest.items() if k not in ("created",)}, s.units,
                       s.images[s.images.kind != "feature_vis"])
    before = _snapshot(root)
    assert cli.main(["--path-similarity", str(root), "--no-progress", "--device", "cpu"]) == 1
    assert _snapshot(root) == before


def test_too_few_exemplars_is_refused_with_the_units_named(small_set, capsys):
    s = load_stimulus_set(small_set)
    images = s.images[~((s.images.kind == "natural_max") & (s.images["rank"] > 0))]
    with pytest.raises(ValueError, match=r"too few images.*natural|1 top exemplar"):
        make_plan(s.units, images, small_set, CheckOptions(n_unrelated=4))
    before = _snapshot(small_set)
    assert cli.main(["--path-similarity", str(small_set), "--similarity-unrelated", "500", "--no-progress",
                     "--device", "cpu"]) == 1
    assert "500 requested" in capsys.readouterr().err
    assert _snapshot(small_set) == before


def test_standalone_check_writes_its_files_and_keeps_the_set_valid(small_set):
    assert cli.main(["--path-similarity", str(small_set), "--similarity-unrelated", "6", "--no-progress",
                     "--device", "cpu", "--seed", "2"]) == 0
    s = load_stimulus_set(small_set)
    assert s.verify_files() == [] and s.manifest["schema_version"] == "1.1"
    for f in ("path_similarity.csv", "path_similarity.png", "path_similarity.md", "validation.csv"):
        assert f in s.manifest["files"], f
    t = pd.read_csv(small_set / "path_similarity.csv")
    layers = path_layers("torchvision_googlenet", TorchvisionGoogLeNet)
    assert len(t) == len(s.units) * len(layers) and list(t.layer[: len(layers)]) == layers
    assert t.depth.between(0, 1).all() and (t.groupby("unit_id").depth.apply(lambda d: d.is_monotonic_increasing)).all()
    val = pd.read_csv(small_set / "validation.csv")
    assert {"path_similarity_first_depth", "path_similarity_flag"} <= set(val.columns)
    p = s.manifest["parameters"]["path_similarity"]
    assert p["seed"] == 2 and p["random_weights"] is True and p["unrelated_source"] == "other units' exemplars"
    assert "RANDOM WEIGHTS" in (small_set / "path_similarity.md").read_text()


def test_standalone_check_with_out_leaves_the_set_byte_identical(small_set, tmp_path, capsys):
    before = _snapshot(small_set)
    out = tmp_path / "ps-out"
    argv = ["--path-similarity", str(small_set), "--similarity-unrelated", "6", "--no-progress", "--device", "cpu",
            "--out", str(out)]
    assert cli.main(argv) == 0
    assert _snapshot(small_set) == before  # nothing in the set changed, not even its manifest
    s = load_stimulus_set(small_set)
    rec = json.loads((out / "path_similarity.json").read_text())
    assert rec["stimulus_set"]["set_id"] == s.set_id
    assert rec["stimulus_set"]["manifest_content_sha256"] == s.manifest["content_sha256"]
    assert rec["path_similarity"]["random_weights"] is True and set(rec["files"]) >= {"path_similarity.csv", "path_similarity.md"}
    t = pd.read_csv(out / "path_similarity.csv")
    assert set(t.unit_id) == set(s.units.unit_id) and t.rho_fv.notna().all()
    assert "path_similarity_flag" in pd.read_csv(out / "validation.csv").columns
    assert "`path_similarity.json`" in (out / "path_similarity.md").read_text()
    assert "was not changed" in capsys.readouterr().out
    # the same numbers as the check recorded in (a copy of) the set
    copy = tmp_path / "copy"
    shutil.copytree(small_set, copy)
    assert cli.main(argv[:1] + [str(copy)] + argv[2:7]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(copy / "path_similarity.csv"), t)
    # a second run does not replace the first without --overwrite; --out inside the set is refused
    assert cli.main(argv) == 1 and "--overwrite" in capsys.readouterr().err
    assert cli.main(argv + ["--overwrite"]) == 0
    assert cli.main(argv[:-1] + [str(small_set / "ps")]) == 1 and "inside the stimulus set" in capsys.readouterr().err
    assert _snapshot(small_set) == before


def test_generation_runs_the_check_after_rendering(builtin_collection, tmp_path):
    out = tmp_path / "gen-set"
    paths = sorted(builtin_collection.glob("*/*.jpg"))[::2]
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(map(str, paths)) + "\n")
    rc = cli.main(["--out", str(out), "--collection", str(lst), "--units", "inception3a:3,inception4c:9,inception5b:1",
                   "--k", "3", "--spares", "0", "--fv-per-unit", "2", "--fv-steps", "2", "--fv-size", "48",
                   "--resize", "72", "--crop", "64", "--weights", "random", "--no-progress", "--workers", "0",
                   "--batch-size", "32", "--similarity-unrelated", "5"])
    assert rc == 0
    s = load_stimulus_set(out)
    assert s.verify_files() == [] and "path_similarity.csv" in s.manifest["files"]
    p = s.manifest["parameters"]["path_similarity"]
    assert p["unrelated_source"] == "collection" and p["size"] == 64 and p["seed"] == 0
    t = pd.read_csv(out / "path_similarity.csv")
    assert set(t.unit_id) == set(s.units.unit_id) and t.rho_fv.notna().all()
    assert "path_similarity_flag" in pd.read_csv(out / "validation.csv").columns
    assert json.loads((out / "manifest.json").read_text())["parameters"]["config"]["path_similarity"]["n_unrelated"] == 5
    # the standalone check sees the network generation used (random weights recalibrated on the same images):
    # it reproduces the table written at generation (up to the saved PNGs' 8-bit rounding of the visualizations)
    assert cli.main(["--path-similarity", str(out), "--similarity-unrelated", "5", "--no-progress", "--device", "cpu"]) == 0
    again = pd.read_csv(out / "path_similarity.csv")
    pd.testing.assert_frame_equal(again, t, check_exact=False, atol=1e-3, rtol=0)


def test_report_stimulus_section_shows_the_check(small_set, tmp_path):
    from analysis.report import to_html, to_markdown
    from analysis.stimuli_section import HEADING, insert_before, stimulus_blocks

    info = lambda p: {"stimulus_set": {"set_id": p.name, "path": str(p), "random_weights": True}}  # noqa: E731
    blocks, files = stimulus_blocks([info(small_set), info(tmp_path / "gone")], tmp_path / "report")
    text = to_markdown(blocks)
    assert "no path-similarity check in the set" in text and "not found at" in text and not files
    assert cli.main(["--path-similarity", str(small_set), "--similarity-unrelated", "6", "--no-progress",
                     "--device", "cpu"]) == 0
    out = tmp_path / "report"
    blocks, files = stimulus_blocks([info(small_set), info(small_set)], out)
    kinds = [b.kind for b in blocks]
    assert kinds.count("figure") == 1 and "table" in kinds and "alert" in kinds and files[0].is_file()
    assert "median at own layer" in to_html(blocks, out, "t") and "data:image/png;base64" in to_html(blocks, out, "t")
    merged = insert_before([Block("h2", "A"), Block("h2", "Exclusions")], "Exclusions", blocks)
    assert merged[1].content == HEADING and merged[-1].content == "Exclusions"


def test_report_says_how_many_units_pass_and_which_were_replaced(tmp_path):
    from analysis.report import to_markdown
    from analysis.stimuli_section import stimulus_blocks

    root = tmp_path / "set-a"
    root.mkdir()
    pd.DataFrame({"unit_id": ["u1", "u2", "u3"], "all_fv_exceed_natural": [True, True, False]}).to_csv(
        root / "validation.csv", index=False)
    (root / "manifest.json").write_text(json.dumps({
        "notes": ["RANDOM WEIGHTS: the network is untrained.", "ties at the bottom of u2",
                  "1 unit(s) replaced by a reserve unit of the same layer ..."],
        "parameters": {"sampling": {"replaced": [{"unit_id": "u0", "replaced_by": "u3"}]}}}))
    blocks, _ = stimulus_blocks([{"stimulus_set": {"set_id": "set-a", "path": str(root)}}], tmp_path / "report")
    text = to_markdown(blocks)
    assert "for 2 of 3 units (not: u3)" in text and "u0 by u3" in text and "ties at the bottom of u2" in text
    assert "RANDOM WEIGHTS: the network" not in text and text.count("replaced by a reserve") == 1


# ---- class units (the paper's version) ----------------------------------------------------------

def test_class_labels_from_folders_and_from_a_labels_file(builtin_collection, tmp_path):
    from stimuli_gen.path_similarity_classes import class_indices, labelled_collection

    by_folder = labelled_collection(str(builtin_collection), None)
    assert by_folder.label.nunique() == 9 and (by_folder.groupby("label").size() == 12).all()
    f = tmp_path / "labels.csv"
    rel = [os.path.relpath(p, tmp_path) for p in by_folder.path]
    pd.DataFrame({"path": rel, "label": by_folder.label}).to_csv(f, index=False)
    by_file = labelled_collection(None, str(f))
    assert [Path(p).resolve() for p in by_file.path] == [Path(p).resolve() for p in by_folder.path]
    assert list(by_file.label) == list(by_folder.label)
    m = class_indices(sorted(set(by_folder.label)), None, "torchvision_googlenet", 1000)
    assert m["astronaut"] == 0 and sorted(m.values()) == list(range(9))
    with pytest.raises(ValueError, match="class-index"):
        class_indices(["a"], None, "lucid_inceptionv1", 1008)
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(by_folder.path.iloc[0], flat / "x.jpg")
    with pytest.raises(ValueError, match="not in a class folder"):
        labelled_collection(str(flat), None)


def test_logit_view_renders_and_reads_the_class_logit(net):
    from stimuli_gen.path_similarity_classes import WithLogits

    view = WithLogits(net.net, 1000)
    x = torch.rand(2, 3, 64, 64)
    z = view.forward_layers(x, ["logits"], relu="post")["logits"]
    assert z.shape == (2, 1000, 1, 1)
    assert torch.allclose(z[:, :, 0, 0], net.net(x), atol=1e-5)


def test_class_mode_on_a_tiny_labelled_collection(builtin_collection, tmp_path, capsys):
    from stimuli_gen.path_similarity_classes import main

    out = tmp_path / "classes"
    argv = ["--collection", str(builtin_collection), "--classes", "astronaut,coffee", "--out", str(out),
            "--weights", "random", "--n-related", "4", "--n-unrelated", "5", "--fv-per-unit", "1", "--fv-steps", "2",
            "--fv-size", "32", "--resize", "56", "--crop", "48", "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    t = pd.read_csv(out / "path_similarity.csv")
    assert set(t.label) == {"astronaut", "coffee"} and len(t) == 2 * 12
    assert (t.unit_layer == "logits").all() and (t.unrelated_source == "other classes").all()
    assert t.rho_related_pairs.iloc[0] == 6 and t.rho_unrelated_pairs.iloc[0] == 20 and t.rho_fv_pairs.iloc[0] == 4
    assert (out / "path_similarity.png").is_file() and (out / "classes.csv").is_file()
    assert "RANDOM WEIGHTS" in capsys.readouterr().err
    # too few images of a class: refused before rendering, nothing written
    bad = tmp_path / "bad"
    assert main([*argv[:5], str(bad), *argv[6:8], "--n-related", "13"]) == 1
    assert "too few images" in capsys.readouterr().err and not bad.exists()


@pytest.mark.parametrize("name", ["torchvision_googlenet", "lucid_inceptionv1"])
def test_stages_are_the_networks_own_outputs_in_order(name):
    from stimuli_gen.path_similarity_run import STEM_STAGES, stage_vectors

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = load_model(name, "random", seed=1)
    x = torch.rand(2, 3, 64, 64)
    v = stage_vectors(m.net, name, x, "mean")
    assert list(v) == list(STEM_STAGES[name].values()) + list(m.net.layer_names) + ["logits"]
    blocks = m.net.forward_layers(x, m.net.layer_names, relu="post")
    for layer, maps in blocks.items():
        assert torch.allclose(v[layer], maps.mean(dim=(2, 3)), atol=1e-5), layer
    assert torch.allclose(v["logits"], m.net(x), atol=1e-4)
    flat = stage_vectors(m.net, name, x, "flat")
    last = m.net.layer_names[-1]
    assert flat[last].shape[1] == blocks[last][0].numel()


@pytest.mark.parametrize("spare", [[0, 0, 0, 1, 1], [0.0, 0.0, 0.0, 1.0, 1.0], ["0", "0", "0", "1", "1"]])
def test_spare_exemplars_are_not_top_exemplars_however_the_table_was_read(small_set, spare):
    s = load_stimulus_set(small_set)
    images = s.images.copy()
    nat = images.kind == "natural_max"
    images.loc[nat, "spare"] = pd.Series(spare * (int(nat.sum()) // 5), index=images.index[nat]).astype(object)
    plan = make_plan(s.units, images, small_set, CheckOptions(n_unrelated=4))
    for u, r in plan.rows.items():
        assert [Path(plan.images[i]).name for i in r["top"]] == [f"natural_max_{k:02d}.png" for k in range(3)]
