"""Silent units: natural images give the original network bit for bit; visualizations do not."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from stimuli_gen.collection import Preprocess, list_collection, load_crop
from stimuli_gen.manipulate import silent as S
from stimuli_gen.manipulate import store
from stimuli_gen.manipulate import verify as V
from stimuli_gen.models import load_model

UNITS = [("inception3a", 5), ("inception3a", 70), ("inception3a", 200), ("inception3a", 230), ("inception3b", 100)]  # branches 1-4; two blocks
PP = Preprocess(resize=72, crop=64)


@pytest.fixture(scope="module")
def base():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model("torchvision_googlenet", "random", seed=0)


@pytest.fixture(scope="module")
def images(builtin_collection):
    paths, _ = list_collection(builtin_collection)
    return torch.stack([load_crop(p, PP)[0] for p in paths[::6]]).float() / 255  # 18 images of all 9 photos


@pytest.fixture(scope="module")
def silent(base, images):
    net, specs = S.add_silent_filters(base.net, UNITS, seed=0)
    S.measure_maxima(net, specs, [images[:7], images[7:]])  # batches unlike the check's
    S.set_biases(net, specs)
    return net, specs


def test_placement_and_direction(base, silent):
    net, specs = silent
    assert [(s.branch, s.branch_channel) for s in specs] == [("branch1", 5), ("branch2", 6), ("branch3", 8), ("branch4", 6), ("branch1", 100)]
    for s in specs:
        m, k = S._module_and_slot(net.net, s)
        w = S.folded_filter(m, s.branch_channel)
        dw = m.silent.weight[k].double() / s.gain - w
        assert abs(float((dw.flatten() @ w.flatten()) / (dw.norm() * w.norm()))) < 1e-5  # orthogonal
        assert float(dw.norm() / w.norm()) == pytest.approx(s.lam, rel=1e-4)
        assert s.bias < -s.natural_max
    again, _ = S.add_silent_filters(base.net, UNITS, seed=0)
    other, _ = S.add_silent_filters(base.net, UNITS, seed=1)
    w0 = net.silent_modules()["inception3a.branch1"].silent.weight
    assert torch.equal(again.silent_modules()["inception3a.branch1"].silent.weight, w0)  # seeded
    assert not torch.equal(other.silent_modules()["inception3a.branch1"].silent.weight, w0)


def test_bias_images_give_the_original_network_exactly(base, silent, images):
    net, _ = silent
    with torch.no_grad():
        for x in (images, images[3:8]):
            a = base.net.forward_layers(x, base.net.layer_names, relu="pre")
            b = net.forward_layers(x, net.layer_names, relu="pre")
            for layer in base.net.layer_names:
                assert torch.equal(a[layer], b[layer]), layer
            post_a = base.net.forward_layers(x, base.net.layer_names, relu="post")
            post_b = net.forward_layers(x, net.layer_names, relu="post")
            assert all(torch.equal(post_a[k], post_b[k]) for k in post_a)
            assert torch.equal(base.net(x), net(x))
            assert not S.silent_trips(net, x).any()


def test_out_of_range_input_trips_and_changes_the_unit(base, silent, images):
    net, specs = silent
    m = net.silent_modules()["inception3a.branch1"]
    x = images[:4].clone().requires_grad_(True)
    # climb the silent filter's own response by gradient ascent: an image outside the natural range
    for _ in range(30):
        g, = torch.autograd.grad(m.silent(_branch_input(net, x))[:, 0].amax(dim=(1, 2)).sum(), x)
        with torch.no_grad():
            x += 0.02 * g.sign()
            x.clamp_(0, 1)
    with torch.no_grad():
        assert S.silent_trips(net, x).all()
        d = (net.forward_layers(x, ["inception3a"])["inception3a"][:, 5]
             - base.net.forward_layers(x, ["inception3a"])["inception3a"][:, 5])
        assert float(d.max()) > 0 and float(d.min()) == 0.0  # only adds, only where the filter is on


def _branch_input(net, x):
    """Input of inception3a (what its branch1 conv sees)."""
    n = net.net
    h = n.maxpool1(torch.relu(net._conv(n.conv1, net.to_input(x))))
    return n.maxpool2(torch.relu(net._conv(n.conv3, torch.relu(net._conv(n.conv2, h)))))


def test_visualizations_differ_from_the_original(base, silent):
    from stimuli_gen.render import RenderConfig

    net, _ = silent
    units = [("inception3a", 5)]
    cfg = RenderConfig.from_preset("lucid", n_vis=2, steps=12, size=32, out_size=32, seed=0)
    a, b = V.render_pair(base.net, net, units, cfg)
    corr = V.grey_correlation(a, b)
    # measured 2026-12-02 (random weights, 12 steps at 32 px): 0.01, 0.21; the silent filter's
    # redirected-ReLU gradient (first 17 steps) alone moves every image away from the original's.
    # The same seeds through the same network give the same images (test_render_fv), so this is the manipulation.
    assert float(corr.max()) < 0.9 and float((a - b).abs().mean()) > 0.01


def test_bad_units(base):
    with pytest.raises(ValueError, match="channel 256 out of range for torchvision_googlenet inception3a"):
        S.add_silent_filters(base.net, [("inception3a", 256)], seed=0)
    with pytest.raises(ValueError, match="unknown layer 'mixed3a'"):
        S.add_silent_filters(base.net, [("mixed3a", 1)], seed=0)
    with pytest.raises(ValueError, match="listed twice"):
        S.add_silent_filters(base.net, [("inception3a", 1), ("inception3a", 1)], seed=0)
