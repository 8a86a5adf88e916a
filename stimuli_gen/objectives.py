"""Objectives of a batch of feature visualizations: unit channel means, Gram diversity, redirected ReLU.

A batch holds whole units, each with ``n`` consecutive images (one per visualization), units of any
layers. The objective of image b is the spatial mean of its unit's channel in its unit's layer,
gathered per layer with one indexing op (no loop over images). Lucid's per-unit objective with a
diversity term is

    mean_i a_i  -  w * sum_{i != j} cos(G_i, G_j) / n

with ``G_i`` the Gram matrix (channels x channels) of image i's activations at the unit's layer and
cos the cosine similarity of flattened Grams (Lucid's ``objectives.diversity``; the sum over ordered
pairs divided by n equals ``(n - 1)`` times the mean pairwise similarity). The batch loss is minus the
sum over units, so each unit's gradient is the same alone or in any batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BatchPlan:
    """Which image of the batch optimizes what: ``n_vis`` consecutive images per unit."""

    layers: list[str]  # layer of each unit
    channels: list[int]  # channel of each unit
    n_vis: int
    device: torch.device | str = "cpu"

    def __post_init__(self) -> None:
        if len(self.layers) != len(self.channels):
            raise ValueError("layers and channels must have one entry per unit")
        if self.n_vis < 1:
            raise ValueError(f"n_vis must be >= 1, got {self.n_vis}")
        self.by_layer: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        n = self.n_vis
        for layer in dict.fromkeys(self.layers):  # first-seen order
            units = torch.tensor([u for u, lay in enumerate(self.layers) if lay == layer], dtype=torch.long)
            elems = (units[:, None] * n + torch.arange(n)[None, :]).reshape(-1)
            chans = torch.tensor([self.channels[u] for u in units.tolist()], dtype=torch.long).repeat_interleave(n)
            self.by_layer[layer] = (units.to(self.device), elems.to(self.device), chans.to(self.device))

    @property
    def n_units(self) -> int:
        return len(self.layers)

    @property
    def batch_size(self) -> int:
        return self.n_units * self.n_vis


def unit_activations(acts: dict[str, torch.Tensor], plan: BatchPlan, statistic: str = "mean") -> torch.Tensor:
    """Each image's activation of its own unit (``B``, float32): spatial mean (or max) of the channel."""
    first = next(iter(acts.values()))
    out = torch.zeros(plan.batch_size, device=first.device, dtype=torch.float32)
    for layer, (_, elems, chans) in plan.by_layer.items():
        maps = acts[layer][elems, chans].float()  # (n_layer_images, h, w)
        vals = maps.mean(dim=(1, 2)) if statistic == "mean" else maps.amax(dim=(1, 2))
        out = out.index_copy(0, elems, vals)
    return out


def gram_cosine(feats: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Cosine similarity of Gram matrices within groups: ``feats`` ``U x n x C x HW`` -> ``U x n x n``.

    ``<G_i, G_j> = ||F_i^T F_j||^2``, so the inner products are computed through whichever is smaller,
    the ``C x C`` Grams or the ``HW x HW`` cross products (late layers: C 1024, HW 49).
    """
    feats = feats.float()
    u, n, c, hw = feats.shape
    # Cosine similarity ignores each image's feature scale; normalising first keeps tiny activations
    # (e.g. deep layers of an untrained net) from falling under ``eps``.
    feats = feats / feats.flatten(2).norm(dim=2).clamp_min(1e-30)[:, :, None, None]
    if n * c * c <= n * n * hw * hw:
        grams = torch.einsum("unci,undi->uncd", feats, feats).reshape(u, n, c * c)
        k = torch.einsum("unk,umk->unm", grams, grams)
    else:
        cross = torch.einsum("unci,umcj->unmij", feats, feats)
        k = cross.pow(2).sum(dim=(-2, -1))
    norms = torch.sqrt(torch.clamp(torch.diagonal(k, dim1=1, dim2=2), min=eps))
    return k / (norms[:, :, None] * norms[:, None, :])


def unit_gram_similarity(acts: dict[str, torch.Tensor], plan: BatchPlan) -> torch.Tensor:
    """``U x n x n`` Gram cosine similarities of each unit's images (unit order of the plan)."""
    first = next(iter(acts.values()))
    out = torch.zeros(plan.n_units, plan.n_vis, plan.n_vis, device=first.device)
    for layer, (units, elems, _) in plan.by_layer.items():
        a = acts[layer][elems]
        feats = a.reshape(len(units), plan.n_vis, a.shape[1], -1)
        out = out.index_copy(0, units, gram_cosine(feats))
    return out


def lucid_diversity(sim: torch.Tensor) -> torch.Tensor:
    """Lucid's diversity per unit from ``U x n x n`` similarities: sum over ordered pairs i != j, / n."""
    n = sim.shape[-1]
    off = sim.sum(dim=(1, 2)) - torch.diagonal(sim, dim1=1, dim2=2).sum(-1)
    return off / n


def mean_pairwise(sim: torch.Tensor) -> torch.Tensor:
    """Mean similarity over unordered pairs per unit (NaN when a unit has one image)."""
    n = sim.shape[-1]
    if n < 2:
        return torch.full(sim.shape[:1], float("nan"), device=sim.device)
    iu = torch.triu_indices(n, n, offset=1, device=sim.device)
    return sim[:, iu[0], iu[1]].mean(-1)


def unit_objectives(acts: dict[str, torch.Tensor], plan: BatchPlan, diversity_weight: float | torch.Tensor,
                    statistic: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """Each unit's objective (``U``, to maximise) and each image's activation (``B``, detached).

    ``diversity_weight``: one weight for every unit, or a ``U`` tensor (a weight per unit, as the
    diversity search uses). ``statistic``: the activation the images maximise, the spatial ``mean``
    (Lucid) or ``max`` of the channel, the same statistic that ranks the natural exemplars.
    """
    a = unit_activations(acts, plan, statistic)
    per_unit = a.reshape(plan.n_units, plan.n_vis).mean(1)
    w = diversity_weight
    weighted = bool((w != 0).any()) if isinstance(w, torch.Tensor) else bool(w)
    if weighted and plan.n_vis > 1:
        if isinstance(w, torch.Tensor):
            w = w.to(per_unit.device, per_unit.dtype)
        per_unit = per_unit - w * lucid_diversity(unit_gram_similarity(acts, plan))
    return per_unit, a.detach()


def batch_loss(acts: dict[str, torch.Tensor], plan: BatchPlan, diversity_weight: float | torch.Tensor,
               statistic: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """Loss to minimise (minus the sum of the per-unit Lucid objectives) and each image's activation."""
    per_unit, a = unit_objectives(acts, plan, diversity_weight, statistic)
    return -per_unit.sum(), a


class _RedirectedReLU(torch.autograd.Function):
    """ReLU whose backward is Lucid's ``redirected_relu_grad``.

    The ordinary gradient is kept for every image whose ReLU gradient is not all zero; for an image
    whose whole ReLU gradient would vanish (dead unit), the gradient passes through the ReLU except
    where it would push an already-negative input further down. Decided per image, so batching
    does not change it.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.relu(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        neg = x < 0
        relu_grad = torch.where(neg, torch.zeros_like(grad), grad)
        # ``grad`` is d(loss)/d(out) for a loss being minimised: grad > 0 pushes x lower.
        redirected = torch.where(neg & (grad > 0), torch.zeros_like(grad), grad)
        alive = relu_grad.flatten(1).float().norm(dim=1) > 0
        alive = alive.view(-1, *([1] * (grad.dim() - 1)))
        return torch.where(alive, relu_grad, redirected)


def redirected_relu(x: torch.Tensor) -> torch.Tensor:
    """Forward: ReLU. Backward: Lucid's redirected ReLU gradient (use for the first steps only)."""
    return _RedirectedReLU.apply(x)
