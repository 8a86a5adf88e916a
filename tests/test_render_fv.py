"""Feature-visualization rendering on CPU with random weights and small images."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from contracts.stimulus_set import image_relpath, make_unit_id
from stimuli_gen import render as R
from stimuli_gen.objectives import BatchPlan, batch_loss, mean_pairwise

torch.set_num_threads(1)

SMALL = dict(size=36, out_size=40, steps=6, pad=4, jitter1=4, jitter2=2, batch_size=4)


@pytest.fixture(scope="module")
def lucid():
    # Untrained Lucid InceptionV1: activations O(1) in every layer (torchvision's untrained net shrinks
    # them ~10x per layer), so objectives move visibly in a few steps.
    from stimuli_gen.models import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model("lucid_inceptionv1", "random", seed=0)


def units(*pairs, group="early"):
    return pd.DataFrame([{"unit_id": make_unit_id(l, c), "layer": l, "channel": c, "group": group} for l, c in pairs])


def cfg(**kw):
    return R.RenderConfig.from_preset("lucid", **{**SMALL, **kw})


def seeds_for(uids, c):
    return [R.image_seed(c.seed, u, r) for u in uids for r in range(c.n_vis)]


def run_batch(net, layers, channels, uids, c):
    plan = BatchPlan(layers, channels, c.n_vis)
    return R.optimize_batch(net, plan, seeds_for(uids, c), c, R.Runtime.resolve(c, torch.device("cpu")))


# ---- config -----------------------------------------------------------------------------------------

def test_presets_overrides_and_manifest_dict():
    lucid = R.RenderConfig.from_preset("lucid")
    assert (lucid.steps, lucid.lr, lucid.decay_power, lucid.diversity_weight, lucid.n_vis) == (512, 0.05, 1.0, 100.0, 10)
    assert (lucid.pad, lucid.jitter1, lucid.jitter2) == (12, 8, 4) and lucid.scales[0] == pytest.approx(0.9)
    assert lucid.angles.count(0.0) == 6 and lucid.out_transform == "none"
    bor = R.RenderConfig.from_preset("borowski2021", steps=3)
    assert (bor.steps, bor.size, bor.out_size, bor.crop_to_out, bor.jitter1, bor.jitter2) == (3, 256, 224, True, 16, 8)
    assert bor.scales == (1.0, 0.975, 1.025, 0.95, 1.05) and bor.angles == tuple(float(a) for a in range(-5, 6))
    assert bor.out_transform == "center crop 256->224"
    d = json.loads(json.dumps(R.RenderConfig.from_preset("lucid", size=128).to_dict()))
    assert d["out_transform"] == "bilinear resize 128->224" and d["net_input_size"] == 140 and d["preset"] == "lucid"
    with pytest.raises(ValueError, match="unknown feature-visualization parameter"):
        R.RenderConfig.from_preset("lucid", stpes=3)
    with pytest.raises(ValueError, match="unknown feature-visualization preset"):
        R.RenderConfig.from_preset("olah")
    with pytest.raises(ValueError, match="relu must be"):
        R.RenderConfig.from_preset("lucid", relu="both")


# ---- the optimization -------------------------------------------------------------------------------

def test_a_few_steps_raise_each_units_objective(lucid):
    c = cfg(n_vis=1, steps=8, diversity_weight=0.0)
    pairs = [("mixed3a", 5), ("mixed4c", 7), ("mixed5b", 9)]
    res = run_batch(lucid.net, [l for l, _ in pairs], [ch for _, ch in pairs], [make_unit_id(*p) for p in pairs], c)
    assert res.curves.shape == (3, 8)
    assert (res.curves[:, -1] > res.curves[:, 0]).all(), res.curves
    assert res.images.shape == (3, 3, 36, 36) and 0 <= res.images.min() and res.images.max() <= 1


def test_batched_equals_single(lucid):
    """Same seeds: a unit's images are the same rendered alone or in a mixed-layer batch."""
    c = cfg(n_vis=2, steps=5)
    pairs = [("mixed3b", 1), ("mixed4a", 2), ("mixed4e", 3)]
    uids = [make_unit_id(*p) for p in pairs]
    batch = run_batch(lucid.net, [l for l, _ in pairs], [ch for _, ch in pairs], uids, c)
    for u, (layer, ch) in enumerate(pairs):
        alone = run_batch(lucid.net, [layer], [ch], [uids[u]], c)
        torch.testing.assert_close(batch.images[2 * u:2 * u + 2], alone.images, atol=2e-4, rtol=0)
        torch.testing.assert_close(batch.curves[2 * u:2 * u + 2], alone.curves, atol=1e-3, rtol=1e-4)
    assert not torch.allclose(batch.images[0], batch.images[1])  # different seeds, different images


def test_vectorized_objective_equals_sum_of_single_unit_objectives(lucid):
    c = cfg(n_vis=2)
    layers, channels = ["mixed4a", "mixed3a", "mixed4a"], [3, 4, 5]
    x = torch.rand(6, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        acts = lucid.net.forward_layers(x, sorted(set(layers)))
        loss, act = batch_loss(acts, BatchPlan(layers, channels, 2), c.diversity_weight)
        single = 0.0
        for u in range(3):
            xu = x[2 * u:2 * u + 2]
            a = lucid.net.forward_layers(xu, [layers[u]])
            single += batch_loss(a, BatchPlan([layers[u]], [channels[u]], 2), c.diversity_weight)[0]
            torch.testing.assert_close(act[2 * u:2 * u + 2], a[layers[u]][:, channels[u]].mean((1, 2)), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(loss, single, atol=1e-3, rtol=1e-4)


def test_higher_diversity_weight_lowers_pairwise_gram_similarity(lucid):
    sims = []
    for w in (0.0, 1000.0):
        c = cfg(n_vis=3, steps=12, diversity_weight=w, lr=0.1)
        res = run_batch(lucid.net, ["mixed4a"], [11], ["u"], c)
        plan = BatchPlan(["mixed4a"], [11], 3)
        _, s = R.measure(lucid.net, plan, res.images, c, torch.device("cpu"))
        sims.append(mean_pairwise(s).item())
    assert sims[1] < sims[0] - 0.01, sims


def test_objective_follows_the_statistic(lucid):
    """--statistic max ranks exemplars by the spatial max: the FVs must maximise the max too (they
    maximised the mean whatever the statistic, issue 17 item 4)."""
    res = {}
    for stat in ("mean", "max"):
        c = cfg(n_vis=1, steps=8, diversity_weight=0.0, statistic=stat)
        res[stat] = run_batch(lucid.net, ["mixed3a"], [5], ["u"], c)
        assert res[stat].curves[0, -1] > res[stat].curves[0, 0]
    assert not torch.allclose(res["mean"].images, res["max"].images)
    plan = BatchPlan(["mixed3a"], [5], 1)
    c_max = cfg(n_vis=1, statistic="max")
    measured, _ = R.measure(lucid.net, plan, res["max"].images, c_max, torch.device("cpu"), grams=False)
    x = res["max"].images
    with torch.no_grad():
        direct = lucid.net.forward_layers(x, ["mixed3a"])["mixed3a"][0, 5].amax()
    torch.testing.assert_close(measured[0], direct)
    assert "spatial max" in c_max.to_dict()["objective"]


def test_plateau_stops_a_unit_and_keeps_its_images_whatever_the_batch(lucid):
    c = cfg(n_vis=1, steps=40, diversity_weight=0.0, plateau_window=4, plateau_tol=10.0, redirect_relu_steps=0)
    pairs = [("mixed3a", 5), ("mixed4c", 7)]
    uids = [make_unit_id(*p) for p in pairs]
    batch = run_batch(lucid.net, [l for l, _ in pairs], [ch for _, ch in pairs], uids, c)
    assert (batch.steps_run == 8).all()  # tolerance 10x: every unit "plateaus" at the first check
    alone = run_batch(lucid.net, ["mixed4c"], [7], [uids[1]], c)
    torch.testing.assert_close(batch.images[1:], alone.images, atol=2e-4, rtol=0)
    never = run_batch(lucid.net, ["mixed3a"], [5], [uids[0]], cfg(n_vis=1, steps=12, diversity_weight=0.0))
    assert never.steps_run.tolist() == [12] and len(batch.curve(0)) == len([s for s in batch.curve_steps if s < 8])
    assert torch.equal(R.plateaued(torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0], [0.0, 4.0]]), 2, 0.01),
                       torch.tensor([True, False]))


def test_redirected_relu_revives_a_dead_unit(lucid):
    """Post-ReLU objective of a channel negative everywhere at init: no gradient without Lucid's
    redirected ReLU (the image never changes), a rising objective with it."""
    c0 = cfg(n_vis=1, steps=8, diversity_weight=0.0, relu="post", redirect_relu_steps=0)
    curves = {}
    for red in (0, 17):
        c = R.RenderConfig(**{**c0.__dict__, "redirect_relu_steps": red})
        curves[red] = run_batch(lucid.net, ["mixed4a"], [2], ["u"], c).curves[0]
    assert (curves[0] == 0).all()  # dead: post-ReLU activation 0 at every step
    assert curves[17][-1] > 0.01


def test_bf16_autocast_and_channels_last_run_on_cpu(lucid):
    """The CUDA settings (bf16 network, channels_last) exercised on CPU: finite images, objective rises."""
    c = cfg(n_vis=1, steps=6, diversity_weight=0.0, amp=True, channels_last=True)
    rt = R.Runtime.resolve(c, torch.device("cpu"))
    assert rt.amp and rt.channels_last and not rt.compile
    lucid.net.to(memory_format=torch.channels_last)
    try:
        res = R.optimize_batch(lucid.net, BatchPlan(["mixed4b"], [2], 1), [7], c, rt)
    finally:
        lucid.net.to(memory_format=torch.contiguous_format)
    assert torch.isfinite(res.images).all() and res.curves[0, -1] > res.curves[0, 0]


def test_folding_batchnorm_keeps_the_function():
    from stimuli_gen.models import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tv = load_model("torchvision_googlenet", "random", seed=2).net
    g = torch.Generator().manual_seed(0)
    for m in tv.modules():  # non-trivial statistics (an untrained net has mean 0, var 1)
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    folded = R.fold_batchnorm(tv)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in tv.modules())  # the original is untouched
    x = torch.rand(2, 3, 64, 64, generator=g)
    with torch.no_grad():
        a = tv.forward_layers(x, ["inception3a", "inception4c"])
        b = folded.forward_layers(x, ["inception3a", "inception4c"])
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-4 * a[k].abs().max().item())


def test_compiled_path_traces_and_matches_eager(lucid):
    """torch.compile of the network after the redirected-ReLU steps (dynamo's eager backend: the
    traced graph runs exactly the same ops, so the images are identical)."""
    c = cfg(n_vis=2, steps=5, redirect_relu_steps=2, compile=True, compile_backend="eager")
    rt = R.Runtime.resolve(c, torch.device("cpu"))
    plan, seeds = BatchPlan(["mixed4a", "mixed3b"], [11, 3], 2), [1, 2, 3, 4]
    compiled = R.optimize_batch(lucid.net, plan, seeds, c, rt)
    assert rt.describe()["compiled_up_to"] == ["mixed4a"]
    c_eager = R.RenderConfig(**{**c.__dict__, "compile": False})
    eager = R.optimize_batch(lucid.net, plan, seeds, c_eager, R.Runtime.resolve(c_eager, torch.device("cpu")))
    torch.testing.assert_close(compiled.images, eager.images)


# ---- rendering to a stimulus set ----------------------------------------------------------------------

def test_render_writes_pngs_and_rows(lucid, tmp_path):
    u = units(("mixed3a", 1), ("mixed5a", 2), ("mixed4d", 3))
    c = cfg(n_vis=2)
    rows = R.render_feature_visualizations(lucid, u, c, tmp_path, progress=False)
    assert list(rows.columns[:6]) == ["unit_id", "kind", "rank", "activation", "file", "seed"]
    assert list(rows.unit_id) == [uid for uid in u.unit_id for _ in range(2)] and list(rows["rank"]) == [0, 1] * 3
    assert (rows.kind == "feature_vis").all() and rows.seed.nunique() == 6
    for r in rows.itertuples():
        assert r.file == image_relpath(r.unit_id, "feature_vis", r.rank)
        im = Image.open(tmp_path / r.file)
        assert im.size == (40, 40) and im.mode == "RGB"
        curve = json.loads(r.activation_curve)
        assert [s for s, _ in curve] == list(range(6))
    # The recorded activation is that of the saved 8-bit image, untransformed, spatial mean pre-ReLU.
    r = rows.iloc[2]
    x = torch.from_numpy(np.array(Image.open(tmp_path / r.file))).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        a = lucid.net.forward_layers(x, ["mixed5a"])["mixed5a"][0, 2].mean().item()
    assert r.activation == pytest.approx(a, rel=1e-4, abs=1e-5)


def test_saved_images_do_not_depend_on_batch_size(lucid, tmp_path):
    u = units(("mixed3a", 4), ("mixed4e", 5), ("mixed3b", 6))
    out = {}
    for bs in (2, 6):  # one unit per batch vs all three units in one mixed-layer batch
        out[bs] = R.render_feature_visualizations(lucid, u, cfg(n_vis=2, steps=4, batch_size=bs), tmp_path / str(bs),
                                                  progress=False)
    pd.testing.assert_frame_equal(out[2].drop(columns="activation_curve"), out[6].drop(columns="activation_curve"),
                                  check_exact=False, atol=1e-3, rtol=1e-3)
    for f in out[2].file:
        a, b = (np.array(Image.open(tmp_path / str(bs) / f), dtype=int) for bs in (2, 6))
        assert np.abs(a - b).max() <= 1


def test_borowski_preset_renders_larger_and_crops(lucid, tmp_path):
    c = R.RenderConfig.from_preset("borowski2021", n_vis=1, steps=2, size=48, out_size=40, jitter1=4, jitter2=2)
    rows = R.render_feature_visualizations(lucid, units(("mixed4a", 0)), c, tmp_path, progress=False)
    assert Image.open(tmp_path / rows.file[0]).size == (40, 40) and rows.render_size[0] == 48


def test_bad_units_are_refused(lucid, tmp_path):
    with pytest.raises(ValueError, match="channel 999 out of range for mixed3a"):
        R.render_feature_visualizations(lucid, units(("mixed3a", 999)), cfg(), tmp_path, progress=False)
    with pytest.raises(ValueError, match="lacks column"):
        R.render_feature_visualizations(lucid, pd.DataFrame({"unit_id": ["x"]}), cfg(), tmp_path, progress=False)


# ---- checkpoints -----------------------------------------------------------------------------------

def test_resume_after_an_interrupted_batch_gives_the_same_images(lucid, tmp_path, monkeypatch):
    u = units(("mixed3a", 1), ("mixed3b", 2), ("mixed4a", 3), ("mixed4b", 4))
    c = cfg(n_vis=2, batch_size=4)  # two units per batch: two batches
    ref = R.render_feature_visualizations(lucid, u, c, tmp_path / "ref", progress=False)

    real, calls = R.optimize_batch, []

    def interrupted(net, plan, *a, **kw):
        calls.append(tuple(plan.layers))
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed during the second batch
        return real(net, plan, *a, **kw)

    monkeypatch.setattr(R, "optimize_batch", interrupted)
    ck = tmp_path / "ck"
    with pytest.raises(KeyboardInterrupt):
        R.render_feature_visualizations(lucid, u, c, tmp_path / "set", checkpoint_dir=ck, progress=False)
    assert len(list(ck.glob("batch-*.json"))) == 1

    calls.clear()
    monkeypatch.setattr(R, "optimize_batch", lambda net, plan, *a, **kw: calls.append(tuple(plan.layers)) or real(net, plan, *a, **kw))
    rows = R.render_feature_visualizations(lucid, u, c, tmp_path / "set", checkpoint_dir=ck, progress=False)
    assert calls == [("mixed4a", "mixed4b")]  # only the interrupted batch is redone
    pd.testing.assert_frame_equal(rows.drop(columns="activation_curve"), ref.drop(columns="activation_curve"),
                                  check_exact=False, atol=1e-4, rtol=1e-4)
    for f in rows.file:
        a = np.asarray(Image.open(tmp_path / "set" / f), dtype=int)
        b = np.asarray(Image.open(tmp_path / "ref" / f), dtype=int)
        assert np.abs(a - b).max() <= 1
    calls.clear()
    R.render_feature_visualizations(lucid, u, c, tmp_path / "set", checkpoint_dir=ck, progress=False)
    assert calls == []  # everything finished: nothing rendered again


def test_out_of_memory_splits_the_batch(lucid, tmp_path, monkeypatch):
    u = units(("mixed3a", 1), ("mixed3b", 2), ("mixed4a", 3))
    c = cfg(n_vis=2, steps=3, batch_size=6)
    real, sizes = R.optimize_batch, []

    def small_memory(net, plan, *a, **kw):
        sizes.append(plan.batch_size)
        if plan.batch_size > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(net, plan, *a, **kw)

    monkeypatch.setattr(R, "optimize_batch", small_memory)
    rows = R.render_feature_visualizations(lucid, u, c, tmp_path, progress=False)
    assert sizes == [6, 2, 4, 2, 2] and len(rows) == 6 and rows.unit_id.nunique() == 3


def test_corrupt_missing_or_foreign_checkpoint_gives_clear_error(lucid, tmp_path):
    u = units(("mixed3a", 1))
    c = cfg(n_vis=1, steps=2)
    ck = tmp_path / "ck"
    with pytest.raises(R.CheckpointError, match="no render checkpoint to resume from"):
        R.render_feature_visualizations(lucid, u, c, tmp_path, checkpoint_dir=ck, resume=True, progress=False)
    R.render_feature_visualizations(lucid, u, c, tmp_path, checkpoint_dir=ck, progress=False)
    (batch,) = ck.glob("batch-*.json")
    text = batch.read_text()

    with pytest.raises(R.CheckpointError, match="other feature-visualization settings"):
        R.render_feature_visualizations(lucid, u, cfg(n_vis=1, steps=3), tmp_path, checkpoint_dir=ck, progress=False)

    batch.write_text(text[: len(text) // 2])
    with pytest.raises(R.CheckpointError, match=f"{batch.name}: corrupt checkpoint batch file"):
        R.render_feature_visualizations(lucid, u, c, tmp_path, checkpoint_dir=ck, progress=False)

    batch.write_text(text)
    (tmp_path / image_relpath(u.unit_id[0], "feature_vis", 0)).unlink()
    with pytest.raises(R.CheckpointError, match="missing or changed"):
        R.render_feature_visualizations(lucid, u, c, tmp_path, checkpoint_dir=ck, progress=False)

    (ck / R.CHECKPOINT_STATE).write_text("{not json")
    with pytest.raises(R.CheckpointError, match="corrupt render checkpoint"):
        R.render_feature_visualizations(lucid, u, c, tmp_path, checkpoint_dir=ck, progress=False)

    (ck / R.CHECKPOINT_STATE).unlink()
    with pytest.raises(R.CheckpointError, match="missing, but"):
        R.render_feature_visualizations(lucid, u, c, tmp_path, checkpoint_dir=ck, progress=False)

    rows = R.render_feature_visualizations(lucid, u, c, tmp_path, checkpoint_dir=ck, resume=False, progress=False)
    assert len(rows) == 1 and (tmp_path / rows.file[0]).is_file()


# ---- validation ------------------------------------------------------------------------------------

def test_validation_table_and_summary():
    curve = lambda a, b: json.dumps([[0, a], [5, b]])  # noqa: E731
    fv = pd.DataFrame([
        {"unit_id": "u1", "kind": "feature_vis", "rank": 0, "activation": 5.0, "pixel_std": 0.2, "gram_similarity": 0.3, "activation_curve": curve(0.1, 5.0)},
        {"unit_id": "u1", "kind": "feature_vis", "rank": 1, "activation": 3.0, "pixel_std": 0.2, "gram_similarity": 0.5, "activation_curve": curve(0.1, 3.0)},
        {"unit_id": "u2", "kind": "feature_vis", "rank": 0, "activation": 1.0, "pixel_std": 0.001, "gram_similarity": 0.9, "activation_curve": curve(0.2, 1.0)},
        {"unit_id": "u2", "kind": "feature_vis", "rank": 1, "activation": 1.0, "pixel_std": 0.005, "gram_similarity": 0.9, "activation_curve": curve(0.2, 1.0)},
        {"unit_id": "u3", "kind": "feature_vis", "rank": 0, "activation": 0.0, "pixel_std": 0.1, "gram_similarity": np.nan, "activation_curve": curve(0.0, 0.0)},
    ])
    nat = pd.DataFrame([
        {"unit_id": "u1", "kind": "natural_max", "rank": 0, "activation": 2.5},
        {"unit_id": "u1", "kind": "natural_min", "rank": 0, "activation": -9.0},
        {"unit_id": "u2", "kind": "natural_max", "rank": 0, "activation": 4.0},
    ])
    val = R.validate_feature_vis(fv, nat).set_index("unit_id")
    assert val.loc["u1", "fv_activation_max"] == 5.0 and val.loc["u1", "fv_activation_mean"] == 4.0
    assert val.loc["u1", "natural_max_activation"] == 2.5 and val.loc["u1", "ratio"] == 2.0
    assert val.loc["u1", "fv_exceeds_natural"] and not val.loc["u2", "fv_exceeds_natural"]
    assert val.loc["u1", "diversity"] == pytest.approx(0.4)
    assert list(val.flat) == [False, True, True]  # u2 grey images, u3 activation never moved
    assert np.isnan(val.loc["u3", "natural_max_activation"])
    text = R.summarize_validation(val.reset_index())
    assert "1/2 units" in text and "flat (grey or dead) units: 2: u2, u3" in text


# ---- torch.distributed ------------------------------------------------------------------------------

def _dist_worker(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from stimuli_gen.models import load_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = load_model("lucid_inceptionv1", "random", seed=0)
        calls = []
        real = R.optimize_batch

        def counting(net, plan, *a, **kw):
            calls.extend(plan.layers)
            return real(net, plan, *a, **kw)

        R.optimize_batch = counting
        u = units(("mixed3a", 1), ("mixed4a", 2), ("mixed3b", 3))
        rows = R.render_feature_visualizations(model, u, cfg(n_vis=1, steps=2), out, progress=False)
        rows.drop(columns="activation_curve").to_csv(f"{out}/rows_{rank}.csv", index=False)
        with open(f"{out}/calls_{rank}.json", "w") as f:
            json.dump(calls, f)
    finally:
        dist.destroy_process_group()


def test_distributed_ranks_share_units_and_gather_the_table(tmp_path):
    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'rendezvous'}"
    mp.start_processes(_dist_worker, args=(2, init, str(tmp_path)), nprocs=2, start_method="spawn", join=True)
    calls = [json.loads((tmp_path / f"calls_{r}.json").read_text()) for r in range(2)]
    # Units sorted by depth (3a, 3b, 4a) and dealt round-robin: rank 0 gets 3a and 4a, rank 1 gets 3b.
    assert sorted(calls[0]) == ["mixed3a", "mixed4a"] and calls[1] == ["mixed3b"]
    t0, t1 = (pd.read_csv(tmp_path / f"rows_{r}.csv") for r in range(2))
    pd.testing.assert_frame_equal(t0, t1)
    assert list(t0.unit_id) == ["mixed3a_c0001", "mixed4a_c0002", "mixed3b_c0003"]  # caller's order
    assert all((tmp_path / f).is_file() for f in t0.file)
