"""Silent units on both GoogLeNets: natural images give the original network bit for bit; visualizations do not."""

from __future__ import annotations

import warnings

import pytest
import torch

from stimuli_gen.collection import Preprocess, list_collection, load_crop
from stimuli_gen.manipulate import silent as S
from stimuli_gen.manipulate import verify as V
from stimuli_gen.models import load_model

# per network: units in every branch of one block and one in the next, and where each one must sit
UNITS = {
    "torchvision_googlenet": [("inception3a", 5), ("inception3a", 70), ("inception3a", 200), ("inception3a", 230),
                              ("inception3b", 100)],
    "lucid_inceptionv1": [("mixed3a", 5), ("mixed3a", 70), ("mixed3a", 200), ("mixed3a", 230), ("mixed3b", 100)],
}
PLACEMENT = {
    "torchvision_googlenet": [("branch1", 5), ("branch2", 6), ("branch3", 8), ("branch4", 6), ("branch1", 100)],
    "lucid_inceptionv1": [("1x1", 5), ("3x3", 6), ("5x5", 8), ("pool_reduce", 6), ("1x1", 100)],
}
PP = Preprocess(resize=72, crop=64)


@pytest.fixture(scope="module", params=list(UNITS))
def base(request):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(request.param, "random", seed=0)


@pytest.fixture(scope="module")
def images(builtin_collection):
    paths, _ = list_collection(builtin_collection)
    return torch.stack([load_crop(p, PP)[0] for p in paths[::6]]).float() / 255  # 18 images of all 9 photos


@pytest.fixture(scope="module")
def silent(base, images):
    net, specs = S.add_silent_filters(base.net, UNITS[base.name], seed=0)
    S.measure_maxima(net, specs, [images[:7], images[7:]])  # batches unlike the check's
    S.set_biases(net, specs)
    return net, specs


def test_placement_and_direction(base, silent):
    net, specs = silent
    assert [(s.branch, s.branch_channel) for s in specs] == PLACEMENT[base.name]
    for s in specs:
        m, k = S._module_and_slot(net, s)
        w = S.folded_filter(m, s.branch_channel)
        dw = m.silent.weight[k].double() / s.gain - w
        assert abs(float((dw.flatten() @ w.flatten()) / (dw.norm() * w.norm()))) < 1e-5  # orthogonal
        assert float(dw.norm() / w.norm()) == pytest.approx(s.lam, rel=1e-4)
        assert s.bias < -s.natural_max
    again, _ = S.add_silent_filters(base.net, UNITS[base.name], seed=0)
    other, _ = S.add_silent_filters(base.net, UNITS[base.name], seed=1)
    first = f"{specs[0].layer}.{specs[0].branch}"
    w0 = net.silent_modules()[first].silent.weight
    assert torch.equal(again.silent_modules()[first].silent.weight, w0)  # seeded
    assert not torch.equal(other.silent_modules()[first].silent.weight, w0)
    assert isinstance(net, type(base.net)) and net.silent_modules().keys() == {f"{s.layer}.{s.branch}" for s in specs}
    if base.name == "torchvision_googlenet":  # every key of the original: folders written before Lucid load as they did
        assert set(base.net.state_dict()) < set(net.state_dict())


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
    first = specs[0]
    m = net.silent_modules()[f"{first.layer}.{first.branch}"]
    x = images[:4].clone().requires_grad_(True)
    # climb the silent filter's own response by gradient ascent: an image outside the natural range
    for _ in range(30):
        g, = torch.autograd.grad(_silent_response(net, m, x)[:, 0].amax(dim=(1, 2)).sum(), x)
        with torch.no_grad():
            x += 0.02 * g.sign()
            x.clamp_(0, 1)
    with torch.no_grad():
        assert S.silent_trips(net, x).all()
        d = (net.forward_layers(x, [first.layer])[first.layer][:, first.channel]
             - base.net.forward_layers(x, [first.layer])[first.layer][:, first.channel])
        assert float(d.max()) > 0 and float(d.min()) == 0.0  # only adds, only where the filter is on


def _silent_response(net, m, x):
    """The silent filter's response (no ReLU) to ``x``, as the network computes it."""
    out = []
    hook = m.silent.register_forward_hook(lambda mod, inp, o: out.append(o))
    try:
        net.forward_layers(x, [m.layer])
    finally:
        hook.remove()
    return out[0]


def test_visualizations_differ_from_the_original(base, silent):
    from stimuli_gen.render import RenderConfig

    net, _ = silent
    units = UNITS[base.name][:1]
    cfg = RenderConfig.from_preset("lucid", n_vis=2, steps=12, size=32, out_size=32, seed=0)
    a, b = V.render_pair(base.net, net, units, cfg)
    corr = V.grey_correlation(a, b)
    # measured 2026-12-02 (random weights, 12 steps at 32 px): torchvision 0.01, 0.21 (mean abs. pixel
    # difference 0.060); Lucid 0.11, -0.16 (0.057); the silent filter's
    # redirected-ReLU gradient (first 17 steps) alone moves every image away from the original's.
    # The same seeds through the same network give the same images (test_render_fv), so this is the manipulation.
    assert float(corr.max()) < 0.9 and float((a - b).abs().mean()) > 0.01


def test_bad_units(base):
    name, first = base.name, base.net.layer_names[0]
    with pytest.raises(ValueError, match=f"channel 256 out of range for {name} {first} \\(0..255\\)"):
        S.add_silent_filters(base.net, [(first, 256)], seed=0)
    other = "mixed3a" if name == "torchvision_googlenet" else "inception3a"
    with pytest.raises(ValueError, match=f"unknown layer '{other}' for {name}; layers: \\['{first}'"):
        S.add_silent_filters(base.net, [(other, 1)], seed=0)
    with pytest.raises(ValueError, match="listed twice"):
        S.add_silent_filters(base.net, [(first, 1), (first, 1)], seed=0)
