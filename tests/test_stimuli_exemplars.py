"""The exemplar pass: equals brute force, resume equals an uninterrupted run, two gloo processes
equal one, bf16 + fp32 re-scoring equals fp32, saved activations, near-duplicate skipping.

Light by design: random weights, 64 px crops, 30 images, 6 units.
"""

import os
import socket
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from stimuli_gen import models as M
from stimuli_gen.collection import Preprocess, list_collection, load_crop
from stimuli_gen.exemplars import (PassOptions, choose_exemplars, dhash, pick_distinct, rescore, run_pass)
from stimuli_gen.topk import brute_force
from stimuli_gen.units import parse_unit_list

torch.set_num_threads(1)
PP = Preprocess(resize=72, crop=64)
N_IMAGES = 30
UNITS = ["inception3a:5", "inception3a:200", "inception4a:7", "inception4c:511", "inception5b:1", "inception5b:900"]


@pytest.fixture(scope="module")
def model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return M.load_model("torchvision_googlenet", "random", seed=0)


@pytest.fixture(scope="module")
def setup(builtin_collection, model):
    paths, _ = list_collection(builtin_collection)
    paths = paths[:: len(paths) // N_IMAGES][:N_IMAGES]
    units = parse_unit_list(UNITS, model.layer_groups)
    return paths, units


def opts(**kw):
    base = dict(statistic="mean", relu="pre", precision="fp32", batch_size=7, workers=0, decoder="pil", keep=6,
                checkpoint_every_s=0.0, channels_last=False)
    return PassOptions(**{**base, **kw})


def all_values(model, paths, units, relu="pre", statistic="mean"):
    """Brute force: every image alone through the network."""
    rows = []
    with torch.no_grad():
        for p in paths:
            acts = model.net.forward_layers(load_crop(p, PP)[0][None].float() / 255, list(dict.fromkeys(units.layer)), relu)
            rows.append([float(M.channel_statistic(acts[l], statistic)[0, c]) for l, c in zip(units.layer, units.channel)])
    return torch.tensor(rows)


@pytest.fixture(scope="module")
def reference(model, setup):
    paths, units = setup
    return all_values(model, paths, units)


@pytest.fixture(scope="module")
def one_process(model, setup):
    paths, units = setup
    return run_pass(model.net, paths, list(range(len(paths))), units, PP, opts(), torch.device("cpu"), progress=False)


def test_pass_equals_brute_force(one_process, reference):
    res = one_process.lists.result()
    assert one_process.n_seen == N_IMAGES and not one_process.skipped
    for side, largest in (("max", True), ("min", False)):
        bv, bi = brute_force(reference, torch.arange(N_IMAGES), 6, largest)
        assert torch.equal(res[side][1], bi)
        torch.testing.assert_close(res[side][0], bv, rtol=1e-4, atol=1e-7)


def test_resume_equals_uninterrupted(model, setup, one_process, tmp_path):
    paths, units = setup
    ckpt = tmp_path / "pass.pt"

    class Stop(Exception):
        pass

    def stop_after_two_batches(n_seen):
        if n_seen >= 14:
            raise Stop

    with pytest.raises(Stop):
        run_pass(model.net, paths, list(range(len(paths))), units, PP, opts(), torch.device("cpu"),
                 checkpoint_path=ckpt, fingerprint="job-a", progress=False, on_batch=stop_after_two_batches)
    assert torch.load(ckpt, weights_only=True)["position"] == 14
    resumed = run_pass(model.net, paths, list(range(len(paths))), units, PP, opts(), torch.device("cpu"),
                       checkpoint_path=ckpt, resume=True, fingerprint="job-a", progress=False)
    assert resumed.n_seen == N_IMAGES
    for side in ("max", "min"):
        assert torch.equal(resumed.lists.result()[side][1], one_process.lists.result()[side][1])
        assert torch.equal(resumed.lists.result()[side][0], one_process.lists.result()[side][0])
    with pytest.raises(RuntimeError, match="belongs to a different job"):
        run_pass(model.net, paths, list(range(len(paths))), units, PP, opts(), torch.device("cpu"),
                 checkpoint_path=ckpt, resume=True, fingerprint="job-b", progress=False)


def _worker(rank, world, port, paths, units, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from stimuli_gen import distributed as D

    info, device = D.init_from_env("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = M.load_model("torchvision_googlenet", "random", seed=0)
    idx = D.shard(list(range(len(paths))), info)
    res = run_pass(model.net, paths, idx, units, PP, opts(batch_size=4), device, progress=False)
    merged = D.merge_across_ranks(res.lists, info)
    seen = D.gather_objects(res.n_seen, info)
    if info.is_main:
        torch.save({"lists": merged.state_dict(), "seen": seen}, out)
    D.shutdown(info)


def test_two_gloo_processes_equal_one(setup, one_process, tmp_path):
    paths, units = setup
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "merged.pt"
    # spawn, not fork: a fork after other tests used OpenMP threads can hang the children
    mp.start_processes(_worker, args=(2, port, paths, units, out), nprocs=2, join=True, start_method="spawn")
    got = torch.load(out, weights_only=True)
    assert got["seen"] == [15, 15]
    want = one_process.lists.state_dict()
    for part in ("top", "bottom"):
        assert torch.equal(got["lists"][part]["index"], want[part]["index"])
        torch.testing.assert_close(got["lists"][part]["keys"], want[part]["keys"], rtol=1e-5, atol=1e-8)


def test_bf16_pass_with_fp32_rescoring_picks_the_fp32_exemplars(model, setup, one_process, reference):
    """The CUDA recipe (bf16 autocast, channels_last, then fp32 re-scoring of k + margin candidates),
    run on the CPU: the chosen exemplars and recorded values equal those of an fp32 pass."""
    paths, units = setup
    k = 3
    bf = run_pass(model.net, paths, list(range(len(paths))), units, PP, opts(precision="bf16", channels_last=True),
                  torch.device("cpu"), progress=False)
    model.net.to(memory_format=torch.contiguous_format)
    cand = sorted({int(i) for side in bf.lists.result().values() for i in side[1].flatten()})
    values, hashes = rescore(model.net, paths, cand, units, PP, "mean", "pre", torch.device("cpu"))
    got = choose_exemplars(bf.lists, values, hashes, units, k)
    want = choose_exemplars(one_process.lists, None, {}, units, k)
    assert got.image_index.tolist() == want.image_index.tolist()
    torch.testing.assert_close(torch.tensor(got.activation.to_numpy()), torch.tensor(want.activation.to_numpy()),
                               rtol=1e-4, atol=1e-7)
    # bf16 alone is visibly less exact than fp32: that is why the candidates are re-scored
    assert (got.activation != got.pass_activation).any()


def test_saved_activations_hold_every_channel(model, setup, tmp_path):
    paths, units = setup
    sub = paths[:5]
    chans = {"inception3a": 256, "inception4a": 512}
    run_pass(model.net, sub, [0, 2, 4], units, PP, opts(), torch.device("cpu"), progress=False,
             activations_path=tmp_path / "a.npy", all_channels=chans)
    arr = np.load(tmp_path / "a.npy")
    assert arr.shape == (3, 768) and arr.dtype == np.float16
    with torch.no_grad():
        acts = model.net.forward_layers(load_crop(sub[2], PP)[0][None].float() / 255, list(chans), "pre")
    want = torch.cat([acts[l].mean((2, 3))[0] for l in chans]).to(torch.float16).numpy()
    np.testing.assert_allclose(arr[1].astype(np.float32), want.astype(np.float32), rtol=1e-2, atol=1e-6)


def test_near_duplicates_are_skipped():
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(3, 64, 64, generator=g) * 255).to(torch.uint8)
    b = (torch.rand(3, 64, 64, generator=g) * 255).to(torch.uint8)
    a2 = (a.int() + 2).clamp(0, 255).to(torch.uint8)  # same picture, slightly brighter
    h = dict(zip([10, 11, 12], dhash(torch.stack([a, a2, b]))))
    assert pick_distinct([10, 11, 12], h, 2, max_hamming=4) == [10, 12]
    assert pick_distinct([10, 11, 12], h, 2, max_hamming=-1) == [10, 11]


def test_too_few_usable_exemplars_is_a_clear_error(one_process, setup):
    _, units = setup
    with pytest.raises(ValueError, match="only 6 usable natural_max exemplars"):
        choose_exemplars(one_process.lists, None, {}, units, 7)


def test_torchvision_decoder_pass_with_rescoring_picks_the_pil_exemplars(model, setup, one_process):
    """The decoder used on GPUs (torchvision.io; here on the CPU) preselects candidates; the fp32
    re-scoring on the PIL crops then gives the exemplars of the all-PIL fp32 pass."""
    paths, units = setup
    tv = run_pass(model.net, paths, list(range(len(paths))), units, PP, opts(decoder="torchvision"),
                  torch.device("cpu"), progress=False)
    assert tv.n_seen == N_IMAGES and not tv.skipped
    cand = sorted({int(i) for side in tv.lists.result().values() for i in side[1].flatten()})
    values, hashes = rescore(model.net, paths, cand, units, PP, "mean", "pre", torch.device("cpu"))
    got = choose_exemplars(tv.lists, values, hashes, units, 3)
    want = choose_exemplars(one_process.lists, None, {}, units, 3)
    assert got.image_index.tolist() == want.image_index.tolist()


def test_duplicate_image_is_skipped_only_with_dedupe(model, setup, one_process):
    paths, units = setup
    best = int(one_process.lists.result()["max"][1][0, 0])  # unit 0's most activating image
    with_dup = paths + [paths[best]]  # index 30: the same file again
    res = run_pass(model.net, with_dup, list(range(len(with_dup))), units.iloc[:1], PP, opts(), torch.device("cpu"),
                   progress=False)
    cand = sorted({int(i) for side in res.lists.result().values() for i in side[1].flatten()})
    _, hashes = rescore(model.net, with_dup, cand, units.iloc[:1], PP, "mean", "pre", torch.device("cpu"),
                        with_values=False)
    plain = choose_exemplars(res.lists, None, hashes, units.iloc[:1], 3)
    dedup = choose_exemplars(res.lists, None, hashes, units.iloc[:1], 3, max_hamming=0)
    top = lambda df: df[df.kind == "natural_max"].image_index.tolist()  # noqa: E731
    assert top(plain)[:2] == [best, 30]  # a tie: the lower index first
    assert top(dedup)[0] == best and 30 not in top(dedup) and len(top(dedup)) == 3


def test_a_chosen_last_candidate_is_flagged():
    from stimuli_gen.topk import ExtremeLists

    units = pd.DataFrame({"unit_id": ["u"], "layer": ["l"], "channel": [0]})
    pass_values = torch.tensor([[3.0], [2.0], [1.0], [0.0]])  # 4 images, keep 3: image 3 is outside
    lists = ExtremeLists.empty(1, 3).update(pass_values, torch.arange(4))
    fp32 = {0: torch.tensor([3.0]), 1: torch.tensor([2.0]), 2: torch.tensor([1.0]), 3: torch.tensor([0.0])}
    assert choose_exemplars(lists, fp32, {}, units, 2).attrs["boundary"] == []
    fp32[2] = torch.tensor([2.5])  # re-scoring lifts the last candidate into the top 2
    assert choose_exemplars(lists, fp32, {}, units, 2).attrs["boundary"] == ["u natural_max", "u natural_min"]


def test_post_relu_ties_at_zero_are_broken_by_the_pre_relu_statistic(model, setup):
    """relu post: a sparse unit is exactly 0 on most images; those ties went to the first files in
    sorted order (issue 17). Now they are ranked by the pre-ReLU statistic, and counted."""
    from stimuli_gen.exemplars import post_key

    paths, units = setup
    # a synthetic check of the key: ranks by post, breaks ties at 0 by pre, gives post back when clamped
    post, pre = torch.tensor([0.0, 0.0, 0.3, 0.0]), torch.tensor([-0.5, -0.1, 0.2, -0.9])
    key = post_key(post, pre)
    assert torch.argsort(key).tolist() == [3, 0, 1, 2] and torch.equal(key.clamp(min=0), post)
    res = run_pass(model.net, paths, list(range(len(paths))), units, PP, opts(relu="post"), torch.device("cpu"),
                   progress=False)
    post_v = all_values(model, paths, units, relu="post")
    pre_v = all_values(model, paths, units, relu="pre")
    want_zero = (post_v == 0).sum(0)
    assert torch.equal(res.zero_counts, want_zero)
    sparse = int(torch.argmax(want_zero))
    assert want_zero[sparse] > 6, want_zero  # the test needs a unit that ties on more than its bottom list
    got = res.lists.result()["min"][1][sparse].tolist()
    order = sorted(range(len(paths)), key=lambda i: (float(post_key(post_v[i, sparse], pre_v[i, sparse])), i))
    assert got == order[:6] and got != sorted(i for i in range(len(paths)) if post_v[i, sparse] == 0)[:6]
