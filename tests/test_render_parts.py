"""Feature-visualization building blocks on tiny tensors: parameterization, transforms, objectives."""

import math

import pytest
import torch

from stimuli_gen import objectives as O
from stimuli_gen import param as P
from stimuli_gen import transforms as T

torch.set_num_threads(1)


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


# ---- parameterization -----------------------------------------------------------------------------

@pytest.mark.parametrize("size", [1 + 6, 8, 33, 64])
def test_param_output_in_unit_interval_for_odd_and_even_sizes(size):
    img = P.FourierImage(gens(0, 1), size)
    with torch.no_grad():
        img.spectrum.mul_(1000)  # far beyond the init: the sigmoid must still bound it
        x = img()
    assert x.shape == (2, 3, size, size) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1 and x.std() > 0.1


def test_param_init_is_per_image_and_near_grey():
    a = P.FourierImage(gens(5, 6, 7), 16)
    b = P.FourierImage(gens(6), 16)
    torch.testing.assert_close(a.spectrum[1:2], b.spectrum, rtol=0, atol=0)
    with torch.no_grad():
        x = a()
    assert (x - 0.5).abs().max() < 0.1  # N(0, 0.01) spectrum starts close to grey


def test_spectrum_scale_and_colour_matrix():
    s = P.spectrum_scale(8, 8, decay_power=1.0)[..., 0]
    assert s.shape == (8, 5)
    assert s[0, 0] == pytest.approx(8.0)  # DC: 1 / (1 / max(h, w))
    assert s[0, 1] == pytest.approx(8.0)  # f = 1/8 equals the floor
    assert s[0, 4] == pytest.approx(2.0)  # f = 1/2
    assert s[4, 4] == pytest.approx(1 / math.sqrt(0.5))
    assert P.COLOR_CORRELATION_NORMALIZED.norm(dim=0).max() == pytest.approx(1.0)
    assert float(P._MAX_NORM) == pytest.approx(0.4620, abs=1e-4)


def test_fft_is_orthonormal_and_divided_by_four():
    size = 6
    spec = torch.zeros(1, 3, size, size // 2 + 1, 2)
    spec[0, :, 0, 0, 0] = 1.0  # DC only, scale 1
    img = P.spectrum_to_image(spec, torch.ones(size, size // 2 + 1, 1), size)
    torch.testing.assert_close(img, torch.full((1, 3, size, size), 1 / size / 4))


# ---- transforms -----------------------------------------------------------------------------------

X = torch.arange(16.0).reshape(1, 1, 4, 4)


@pytest.mark.parametrize("dx,dy", [(0, 0), (2, 1), (1, 2)])
def test_jitter_is_an_exact_integer_crop(dx, dy):
    spec = T.TransformSpec(pad=0, jitter1=2, scales=(1.0,), angles=(0.0,), jitter2=0)
    out = T.transform_batch(X, torch.tensor([[dx, dy, 1, 0, 0, 0.0]]), spec)
    torch.testing.assert_close(out[0, 0], X[0, 0, dy:dy + 2, dx:dx + 2])


def test_pad_reads_pad_value_and_rotation_by_90_degrees_is_exact():
    spec = T.TransformSpec(pad=1, pad_value=0.5, jitter1=0, scales=(1.0,), angles=(90.0,), jitter2=0)
    out = T.transform_batch(X, torch.tensor([[0, 0, 1, 90, 0, 0.0]]), spec)[0, 0]
    assert out.shape == (6, 6)
    border = torch.cat([out[0], out[-1], out[:, 0], out[:, -1]])
    torch.testing.assert_close(border, torch.full_like(border, 0.5))
    inner = out[1:5, 1:5]
    rotated = [torch.rot90(X[0, 0], k) for k in (1, -1)]
    assert any(torch.allclose(inner, r, atol=1e-5) for r in rotated)


def test_scale_zooms_about_the_centre():
    spec = T.TransformSpec(pad=0, jitter1=0, scales=(2.0,), angles=(0.0,), jitter2=0)
    out = T.transform_batch(X, torch.tensor([[0, 0, 2, 0, 0, 0.0]]), spec)[0, 0]
    # Output pixel centres at +-0.25, +-0.75 px from the centre read the input bilinearly.
    expected = torch.tensor([3.75, 4.25, 4.75, 5.25])[None, :] + torch.tensor([0.0, 2, 4, 6])[:, None]
    torch.testing.assert_close(out, expected)


def test_composed_transform_matches_separate_steps():
    """Pad, jitter, jitter at scale 1 without rotation equals padding then cropping by hand."""
    spec = T.TransformSpec(pad=2, pad_value=0.5, jitter1=2, scales=(1.0,), angles=(0.0,), jitter2=1)
    p = torch.tensor([[1, 2, 1, 0, 1, 0.0]])
    out = T.transform_batch(X, p, spec)[0, 0]
    padded = torch.nn.functional.pad(X[0, 0], (2, 2, 2, 2), value=0.5)
    step1 = padded[2:2 + 6, 1:1 + 6]  # jitter1 offsets (dx=1, dy=2), size 8-2
    step2 = step1[0:5, 1:6]  # jitter2 offsets (dx=1, dy=0), size 6-1
    torch.testing.assert_close(out, step2)


def test_net_size_resamples_the_same_field_of_view():
    spec = T.TransformSpec(pad=0, jitter1=0, scales=(1.0,), angles=(0.0,), jitter2=0)
    x = torch.rand(1, 3, 8, 8)
    out = T.transform_batch(x, T.identity_params(1, spec), spec, out_size=16)
    ref = torch.nn.functional.interpolate(x, size=16, mode="bilinear", align_corners=False)
    # Interior equal; the outermost output pixels lie beyond the last input pixel centre and blend
    # with the pad value (interpolate clamps there instead).
    torch.testing.assert_close(out[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=1e-5, rtol=0)


def test_draw_params_ranges_and_seeding():
    spec = T.TransformSpec()
    a = T.draw_params(spec, 500, torch.Generator().manual_seed(1))
    b = T.draw_params(spec, 500, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a.shape == (500, 6)
    assert a[:, :2].min() == 0 and a[:, :2].max() == 8 and a[:, 4:].max() == 4
    f32 = lambda v: set(torch.as_tensor(v, dtype=torch.float32).tolist())  # noqa: E731
    assert f32(a[:, 2]) == f32(spec.scales) and f32(a[:, 3]) == f32(spec.angles)
    assert (a[:, 3] == 0).float().mean() > 3 / 26 - 0.05  # zero angle drawn with weight 6/26
    assert not torch.equal(a, T.draw_params(spec, 500, torch.Generator().manual_seed(2)))


def test_transforms_are_per_image():
    spec = T.TransformSpec(pad=2, jitter1=2, scales=(0.9, 1.1), angles=(-10.0, 10.0), jitter2=2)
    x = torch.rand(3, 3, 10, 10)
    p = torch.stack([T.draw_params(spec, 1, g)[0] for g in gens(1, 2, 3)])
    batch = T.transform_batch(x, p, spec)
    for i in range(3):
        torch.testing.assert_close(batch[i:i + 1], T.transform_batch(x[i:i + 1], p[i:i + 1], spec))


# ---- objectives -----------------------------------------------------------------------------------

def test_unit_activations_gather_each_images_channel():
    acts = {"a": torch.randn(4, 5, 3, 3), "b": torch.randn(4, 7, 2, 2)}
    plan = O.BatchPlan(["b", "a"], [6, 2], n_vis=2)  # images 0,1 -> b:6, images 2,3 -> a:2
    out = O.unit_activations(acts, plan)
    ref = torch.stack([acts["b"][0, 6].mean(), acts["b"][1, 6].mean(), acts["a"][2, 2].mean(), acts["a"][3, 2].mean()])
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(O.unit_activations(acts, plan, "max")[2], acts["a"][2, 2].max())


def explicit_gram_cos(f):  # f: n x C x HW
    g = torch.stack([fi @ fi.T for fi in f]).flatten(1)
    g = g / g.norm(dim=1, keepdim=True)
    return g @ g.T


@pytest.mark.parametrize("c,hw", [(3, 16), (16, 3)])  # Gram route and cross-product route
def test_gram_cosine_matches_explicit_grams(c, hw):
    f = torch.randn(2, 4, c, hw, dtype=torch.float64)
    out = O.gram_cosine(f)
    for u in range(2):
        torch.testing.assert_close(out[u].double(), explicit_gram_cos(f[u]), rtol=1e-5, atol=1e-6)


def test_gram_cosine_is_scale_free_for_tiny_activations():
    f = torch.randn(1, 3, 4, 9)
    torch.testing.assert_close(O.gram_cosine(f * 1e-12), O.gram_cosine(f), rtol=1e-4, atol=1e-5)


def test_lucid_diversity_and_mean_pairwise():
    sim = torch.tensor([[[1.0, 0.2, 0.4], [0.2, 1.0, 0.6], [0.4, 0.6, 1.0]]])
    assert O.lucid_diversity(sim).item() == pytest.approx(2 * (0.2 + 0.4 + 0.6) / 3)
    assert O.mean_pairwise(sim).item() == pytest.approx(0.4)
    assert math.isnan(O.mean_pairwise(torch.ones(1, 1, 1)).item())


def test_redirected_relu_gradient():
    x = torch.tensor([[-1.0, -2.0, 3.0], [-1.0, -2.0, -3.0]], requires_grad=True)
    grad_out = torch.tensor([[0.5, -0.5, 1.0], [0.5, -0.5, 1.0]])
    y = O.redirected_relu(x)
    torch.testing.assert_close(y, torch.relu(x))
    (g,) = torch.autograd.grad(y, x, grad_out)
    # Row 0 has a live ReLU gradient: ordinary ReLU gradient. Row 1 is dead everywhere: gradient
    # passes except where it would push a negative input lower (grad > 0 for a minimised loss).
    torch.testing.assert_close(g, torch.tensor([[0.0, 0.0, 1.0], [0.0, -0.5, 0.0]]))
