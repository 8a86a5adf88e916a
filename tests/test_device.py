"""The stimulus generator on the test device, with that device's own settings, against the CPU reference.

``FVMATCH_TEST_DEVICE`` picks the device (default ``cpu``). ``make test`` runs these on the CPU, which checks the
tests themselves; ``tools/gpu-check.sh`` runs them with ``FVMATCH_TEST_DEVICE=cuda``, where they exercise what
only runs on a GPU: bf16 autocast and channels_last, pinned memory and the prefetch stream, batched nvjpeg
decoding, cuDNN, the memory probe that sizes render batches and torch.compile with inductor.
"""

import os
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from contracts.stimulus_set import make_unit_id
from stimuli_gen import models as M
from stimuli_gen import render as R
from stimuli_gen.collection import Preprocess, list_collection
from stimuli_gen.exemplars import PassOptions, choose_exemplars, rescore, run_pass
from stimuli_gen.objectives import BatchPlan
from stimuli_gen.units import parse_unit_list

DEVICE = torch.device(os.environ.get("FVMATCH_TEST_DEVICE", "cpu"))
if DEVICE.type == "cuda" and not torch.cuda.is_available():  # asked for a GPU: its absence is a failure, not a skip
    raise RuntimeError("FVMATCH_TEST_DEVICE=cuda but torch sees no CUDA device")
CUDA = DEVICE.type == "cuda"
PP = Preprocess(resize=128, crop=112)
UNITS = ["inception3a:5", "inception3b:100", "inception4a:7", "inception4c:311", "inception4e:20", "inception5b:900"]


def _model(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return M.load_model(name, "random", seed=0)


@pytest.fixture(scope="module")
def exemplar_setup(builtin_collection):
    paths, _ = list_collection(builtin_collection)
    paths = paths[:48]
    model = _model("torchvision_googlenet")
    return model, paths, parse_unit_list(UNITS, model.layer_groups)


def test_exemplar_pass_with_device_settings_picks_the_cpu_fp32_exemplars(exemplar_setup):
    """The pass as the pipeline runs it on this device (precision auto: bf16 on CUDA; the torchvision decoder:
    nvjpeg on CUDA; channels_last; worker processes; then fp32 re-scoring of the candidates on the device)
    chooses the same exemplars, with the same activations, as an fp32 pass on the CPU with PIL decoding."""
    model, paths, units = exemplar_setup
    idx = list(range(len(paths)))
    k = 3
    ref = run_pass(model.net, paths, idx, units, PP, PassOptions(precision="fp32", channels_last=False, batch_size=16,
                   decoder="pil", keep=k, checkpoint_every_s=1e9), torch.device("cpu"), progress=False)
    want = choose_exemplars(ref.lists, None, {}, units, k)
    try:
        dev = run_pass(model.net, paths, idx, units, PP, PassOptions(precision="auto", channels_last=True, batch_size=16,
                       workers=2, decoder="torchvision", keep=8, checkpoint_every_s=1e9), DEVICE, progress=False)
        assert dev.n_seen == len(paths) and not dev.skipped
        model.net.to(memory_format=torch.contiguous_format)
        cand = sorted({int(i) for side in dev.lists.result().values() for i in side[1].flatten()})
        values, hashes = rescore(model.net, paths, cand, units, PP, "mean", "pre", DEVICE)
    finally:
        model.net.to("cpu", memory_format=torch.contiguous_format)
    got = choose_exemplars(dev.lists, values, hashes, units, k)
    assert got.image_index.tolist() == want.image_index.tolist()
    scale = want.groupby("unit_id").activation.transform(lambda a: a.abs().max()).to_numpy()
    np.testing.assert_allclose(got.activation.to_numpy() / scale, want.activation.to_numpy() / scale, atol=1e-4)


@pytest.fixture(scope="module")
def lucid():
    # Untrained Lucid InceptionV1: activations O(1) in every layer, so objectives move in a few steps.
    m = _model("lucid_inceptionv1")
    m.net.to(DEVICE)
    yield m
    m.net.to("cpu")


def _cfg(**kw):
    base = dict(size=64, out_size=64, steps=8, pad=4, jitter1=4, jitter2=2, n_vis=2, diversity_weight=0.0)
    return R.RenderConfig.from_preset("lucid", **{**base, **kw})


def _render(net, pairs, cfg, rt):
    uids = [make_unit_id(l, c) for l, c in pairs]
    plan = BatchPlan([l for l, _ in pairs], [c for _, c in pairs], cfg.n_vis, DEVICE)
    seeds = [R.image_seed(cfg.seed, u, r) for u in uids for r in range(cfg.n_vis)]
    if rt.channels_last:
        net.to(memory_format=torch.channels_last)
    try:
        return R.optimize_batch(net, plan, seeds, cfg, rt)
    finally:
        net.to(memory_format=torch.contiguous_format)


# The last unit takes the network to its deepest layer; with random weights such deep units barely move in a
# few steps (changes ~1e-4, below bf16 rounding), so the objective check covers the first three.
PAIRS = [("mixed3a", 5), ("mixed4a", 2), ("mixed4c", 7), ("mixed5b", 9)]
MOVING = slice(0, 3 * 2)  # their images (n_vis = 2)


def test_render_with_device_settings_raises_every_objective_and_batching_does_not_change_images(lucid):
    """Units of four layers in one batch with this device's settings (bf16 + channels_last on CUDA): every
    image finite and in [0, 1], the objectives up; each unit's images equal those it gets rendered alone
    (exactly on the CPU; within bf16 rounding on CUDA)."""
    cfg = _cfg()
    rt = R.Runtime.resolve(cfg, DEVICE)
    assert rt.amp == CUDA and rt.channels_last == CUDA
    both = _render(lucid.net, PAIRS, cfg, rt)
    assert torch.isfinite(both.images).all() and both.images.min() >= 0 and both.images.max() <= 1
    assert (both.curves[MOVING, -1] > both.curves[MOVING, 0]).all(), both.curves[:, [0, -1]]
    for u, pair in enumerate(PAIRS):
        alone = _render(lucid.net, [pair], cfg, rt)
        rows = slice(u * cfg.n_vis, (u + 1) * cfg.n_vis)
        diff = (both.images[rows] - alone.images).abs()
        if CUDA:
            assert diff.mean() < 0.01 and diff.max() < 0.1, (pair, float(diff.mean()), float(diff.max()))
        else:
            torch.testing.assert_close(both.images[rows], alone.images, rtol=1e-4, atol=1e-5)


def test_compiled_render_matches_eager_on_the_device(lucid):
    """torch.compile (inductor on CUDA, dynamo's eager backend on the CPU, where no compiler is assumed) after the
    redirected-ReLU steps gives the eager images."""
    cfg = _cfg(redirect_relu_steps=2, compile=True, compile_backend="inductor" if CUDA else "eager")
    rt = R.Runtime.resolve(cfg, DEVICE)
    compiled = _render(lucid.net, PAIRS[:2], cfg, rt)
    assert rt.describe()["compiled_up_to"] == ["mixed4a"]
    eager_cfg = R.RenderConfig(**{**cfg.__dict__, "compile": False})
    eager = _render(lucid.net, PAIRS[:2], eager_cfg, R.Runtime.resolve(eager_cfg, DEVICE))
    diff = (compiled.images - eager.images).abs()
    assert diff.mean() < (0.01 if CUDA else 1e-6) and diff.max() < (0.1 if CUDA else 1e-4), float(diff.max())


def test_render_batch_size_fits_the_device(lucid):
    """On CUDA the batch size comes from a one-step memory probe and the free memory; on the CPU it is 16."""
    cfg = R.RenderConfig.from_preset("lucid", n_vis=5)
    rt = R.Runtime.resolve(cfg, DEVICE)
    n = R.auto_batch_size(lucid.net, cfg, rt, "mixed5b")
    if CUDA:
        free, total = torch.cuda.mem_get_info(DEVICE)
        assert cfg.n_vis <= n <= cfg.max_batch_size
        print(f"\nauto batch size at 224 px up to mixed5b: {n} images ({free / 2**30:.1f} of {total / 2**30:.1f} GiB free)")
    else:
        assert n == min(cfg.max_batch_size, 16)
