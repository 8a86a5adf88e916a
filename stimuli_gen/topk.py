"""Streaming top-k / bottom-k per unit with deterministic tie-breaking, and exact merging of shards.

Pure tensor code (no I/O); runs on whatever device its tensors are on, so the running lists stay on
the GPU during the exemplar pass. Every image carries its global index in the collection, so the
result does not depend on batch size, order of batches, or how the collection was sharded:

* top-k: highest value first; equal values -> lower image index first;
* bottom-k: lowest value first; equal values -> lower image index first.

Bottom-k is top-k of the negated values (negation is exact in floating point, so ties stay ties).
NaN activations never enter a list (they are ranked below every number).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EMPTY_INDEX = torch.iinfo(torch.int64).max  # an unfilled slot: loses every tie, sorts last


@dataclass
class TopK:
    """Running best-``k`` lists for ``U`` units: ``keys`` (U x k, float32, larger is better) and
    ``index`` (U x k, int64 global image index; EMPTY_INDEX where not yet filled)."""

    keys: torch.Tensor
    index: torch.Tensor

    @classmethod
    def empty(cls, n_units: int, k: int, device: torch.device | str = "cpu") -> "TopK":
        return cls(torch.full((n_units, k), float("-inf"), device=device),
                   torch.full((n_units, k), EMPTY_INDEX, dtype=torch.int64, device=device))

    @property
    def k(self) -> int:
        return self.keys.shape[1]

    def update(self, keys: torch.Tensor, index: torch.Tensor) -> "TopK":
        """Fold in a batch: ``keys`` B x U (larger is better), ``index`` B (global image indices)."""
        if keys.shape[0] == 0:
            return self
        keys = torch.nan_to_num(keys.float(), nan=float("-inf")).T  # U x B
        idx = index.to(self.index.device, torch.int64).unsqueeze(0).expand(keys.shape[0], -1)
        return _select(torch.cat([self.keys, keys], 1), torch.cat([self.index, idx], 1), self.k)

    def to(self, device: torch.device | str) -> "TopK":
        return TopK(self.keys.to(device), self.index.to(device))

    def state_dict(self) -> dict:
        return {"keys": self.keys.cpu(), "index": self.index.cpu()}

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device | str = "cpu") -> "TopK":
        return cls(state["keys"].to(device), state["index"].to(device))


def _select(keys: torch.Tensor, index: torch.Tensor, k: int) -> TopK:
    """Best ``k`` per row by (key descending, index ascending): sort by index, then stable sort by key."""
    order = torch.argsort(index, dim=1, stable=True)
    keys, index = keys.gather(1, order), index.gather(1, order)
    order = torch.argsort(keys, dim=1, descending=True, stable=True)[:, :k]
    return TopK(keys.gather(1, order), index.gather(1, order))


def merge(parts: list[TopK]) -> TopK:
    """Exact merge of lists kept over disjoint image sets (shards, or runs over parts of a collection)."""
    if not parts:
        raise ValueError("merge needs at least one part")
    dev = parts[0].keys.device
    k = parts[0].k
    return _select(torch.cat([p.keys.to(dev) for p in parts], 1), torch.cat([p.index.to(dev) for p in parts], 1), k)


@dataclass
class ExtremeLists:
    """Top-k and bottom-k together, updated from activations ``B x U``."""

    top: TopK
    bottom: TopK  # keys are negated activations

    @classmethod
    def empty(cls, n_units: int, k: int, device: torch.device | str = "cpu") -> "ExtremeLists":
        return cls(TopK.empty(n_units, k, device), TopK.empty(n_units, k, device))

    def update(self, values: torch.Tensor, index: torch.Tensor) -> "ExtremeLists":
        return ExtremeLists(self.top.update(values, index), self.bottom.update(-values.float(), index))

    def to(self, device: torch.device | str) -> "ExtremeLists":
        return ExtremeLists(self.top.to(device), self.bottom.to(device))

    def result(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{"max": (values, index), "min": (values, index)}``, U x k each, rank 0 first, on the CPU.
        Unfilled slots have index EMPTY_INDEX."""
        return {"max": (self.top.keys.cpu(), self.top.index.cpu()),
                "min": (-self.bottom.keys.cpu(), self.bottom.index.cpu())}

    def state_dict(self) -> dict:
        return {"top": self.top.state_dict(), "bottom": self.bottom.state_dict()}

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device | str = "cpu") -> "ExtremeLists":
        return cls(TopK.from_state_dict(state["top"], device), TopK.from_state_dict(state["bottom"], device))


def merge_extremes(parts: list[ExtremeLists]) -> ExtremeLists:
    return ExtremeLists(merge([p.top for p in parts]), merge([p.bottom for p in parts]))


def brute_force(values: torch.Tensor, index: torch.Tensor, k: int, largest: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: all ``N x U`` values at once, sorted in Python by the documented order (for tests)."""
    vals, idx = [], []
    for u in range(values.shape[1]):
        col = [(float(v), int(i)) for v, i in zip(values[:, u], index)]
        col.sort(key=lambda t: ((-t[0] if largest else t[0]), t[1]))
        col = col[:k]
        vals.append([v for v, _ in col])
        idx.append([i for _, i in col])
    return torch.tensor(vals), torch.tensor(idx)
