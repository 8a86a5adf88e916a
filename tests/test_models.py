"""The two GoogLeNets: layer names, channel counts, exact agreement with torchvision, weight loading."""

import warnings

import pytest
import torch

from stimuli_gen import models as M

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tv():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return M.load_model("torchvision_googlenet", "random", seed=1)


@pytest.fixture(scope="module")
def lucid():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return M.load_model("lucid_inceptionv1", "random", seed=1)


def x01(n=2, size=96, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_random_weights_warn_and_are_recorded():
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        m = M.load_model("torchvision_googlenet", "random", seed=3)
    assert m.random_weights and m.weights == {"source": "random", "identity": "random init, seed 3", "sha256": None, "seed": 3}
    assert not any(p.requires_grad for p in m.net.parameters())


def test_random_init_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = M.load_model("torchvision_googlenet", "random", seed=5).net.state_dict()
        b = M.load_model("torchvision_googlenet", "random", seed=5).net.state_dict()
    assert torch.rand(1) == before
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_torchvision_layers_match_torchvision_forward(tv):
    """Our re-implemented forward gives exactly torchvision's Inception outputs (post-ReLU)."""
    net = tv.net.net
    x = x01()
    captured = {}
    hooks = [getattr(net, n).register_forward_hook(lambda m, i, o, n=n: captured.__setitem__(n, o.clone()))
             for n in M.TorchvisionGoogLeNet.layer_names]
    with torch.no_grad():
        logits_ref = net(x * 2 - 1)
        ours = tv.net.forward_layers(x, M.TorchvisionGoogLeNet.layer_names, relu="post")
        logits = tv.net(x)
    for h in hooks:
        h.remove()
    for name in M.TorchvisionGoogLeNet.layer_names:
        assert ours[name].shape[1] == M.TorchvisionGoogLeNet.channels[name]
        torch.testing.assert_close(ours[name], captured[name])
    torch.testing.assert_close(logits, logits_ref)


def test_pre_relu_values_survive_in_place_relus(tv):
    """torchvision's BasicConv2d ReLU is in place; captured pre-ReLU maps must keep their negatives."""
    x = x01()
    with torch.no_grad():
        both = tv.net.forward_layers(x, ["inception4a", "inception4c"], relu="pre")
        post = tv.net.forward_layers(x, ["inception4a", "inception4c"], relu="post")
    for name in both:
        assert (both[name] < 0).any(), "pre-ReLU activations should contain negative values"
        torch.testing.assert_close(torch.relu(both[name]), post[name])


def test_forward_stops_at_deepest_layer(tv):
    calls = []
    h = tv.net.net.inception4b.register_forward_pre_hook(lambda *a: calls.append(1))
    tv.net.net.inception4b.branch1.conv.register_forward_pre_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        out = tv.net.forward_layers(x01(1), ["inception3b", "inception4a"])
    h.remove()
    assert set(out) == {"inception3b", "inception4a"} and not calls


def test_unknown_layer_and_channel(tv):
    with pytest.raises(KeyError, match="unknown layer"):
        tv.net.forward_layers(x01(1), ["mixed4a"])
    with pytest.raises(ValueError, match="channel 512 out of range for torchvision_googlenet inception4a"):
        tv.check_units([("inception4a", 511), ("inception4a", 512)])
    with pytest.raises(ValueError, match="unknown layer 'conv9'"):
        tv.check_units([("conv9", 0)])


def test_lucid_layout(lucid):
    assert lucid.net.layer_names == ("mixed3a", "mixed3b", "mixed4a", "mixed4b", "mixed4c", "mixed4d", "mixed4e", "mixed5a", "mixed5b")
    assert lucid.net.channels["mixed4a"] == 508
    assert [lucid.net.channels[n] for n in lucid.net.layer_names] == [256, 480, 508, 512, 512, 528, 832, 832, 1024]
    x = x01(1, 224)
    with torch.no_grad():
        acts = lucid.net.forward_layers(x, lucid.net.layer_names)
        logits = lucid.net(x)
    assert [tuple(acts[n].shape[2:]) for n in ("mixed3a", "mixed4a", "mixed5b")] == [(28, 28), (14, 14), (7, 7)]
    assert logits.shape == (1, 1008)
    torch.testing.assert_close(lucid.net.to_input(torch.tensor([0.0, 1.0])), torch.tensor([-117.0, 138.0]))
    assert "mixed4a_3x3_pre_relu_conv.weight" in lucid.net.state_dict()


def test_weights_from_local_file_round_trip(tmp_path, tv, lucid):
    for model in (tv, lucid):
        path = tmp_path / f"{model.name}.pth"
        state = model.net.net.state_dict() if model.name == "torchvision_googlenet" else model.net.state_dict()
        torch.save(state, path)
        again = M.load_model(model.name, str(path))
        assert again.weights["source"] == "file" and len(again.weights["sha256"]) == 64 and not again.random_weights
        x = x01(1)
        with torch.no_grad():
            torch.testing.assert_close(again.net(x), model.net(x))


def test_wrong_weights_file_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(M.WeightsUnavailable, match="other.pth: not a state dict for this model"):
        M.load_model("lucid_inceptionv1", str(path))
    with pytest.raises(M.WeightsUnavailable, match="weights file not found"):
        M.load_model("torchvision_googlenet", str(tmp_path / "nope.pth"))


def test_offline_pretrained_says_how_to_fix(tmp_path, monkeypatch):
    # No network here; an empty cache forces the download path, which must fail with a helpful message.
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    with pytest.raises(M.WeightsUnavailable) as e:
        M.load_model("torchvision_googlenet", "pretrained")
    msg = str(e.value)
    assert str(tmp_path / "hub" / "checkpoints" / M.TORCHVISION_WEIGHTS_FILE) in msg
    assert "--weights PATH" in msg and "--weights random" in msg


def test_channel_statistic():
    a = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    torch.testing.assert_close(M.channel_statistic(a, "mean"), a.mean((2, 3)))
    torch.testing.assert_close(M.channel_statistic(a, "max"), a[:, :, 1, 1])
    with pytest.raises(ValueError, match="'mean' or 'max'"):
        M.channel_statistic(a, "median")
