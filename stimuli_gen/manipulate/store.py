"""A manipulated model on disk, and loading it wherever fvmatch loads a model.

Layout of a manipulated-model folder (schema ``fvmatch.manipulated_model``)::

    manipulation.json   kind, base model and weights, every manipulated unit and its parameters,
                        the collection that set the biases, seeds, sha256 of weights.pt
    weights.pt          the full state dict of the manipulated network (base weights included)
    verification.json   the verification report (stimuli_gen.manipulate.verify), also .md and .png

``fvmatch-stimuli --weights DIR`` (or the path of its manipulation.json) loads it; the stimulus set's
manifest then says what was manipulated (``manipulation``), so it is never taken for the original.
A folder is written under a temporary name and renamed when complete: nothing half-written remains.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from contracts.common import sha256_file, write_json_atomic
from stimuli_gen.models import DEFAULT_LAYER_GROUPS, MODEL_NAMES, RANDOM_WEIGHTS_WARNING, LoadedModel, load_model

SCHEMA = "fvmatch.manipulated_model"
SCHEMA_VERSION = "1.0"
DESCRIPTION = "manipulation.json"
WEIGHTS = "weights.pt"
KINDS = ("silent_units", "fooling_circuit")


class ManipulationError(ValueError):
    """A manipulated-model folder is missing, incomplete or from another model; the message names it."""


@dataclass
class ManipulatedModel(LoadedModel):
    """A LoadedModel whose weights were manipulated; ``manipulation`` is its description."""

    manipulation: dict | None = None

    @property
    def random_weights(self) -> bool:
        return self.weights["source"] == "random"  # the base network's source


def is_manipulated(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p.is_dir() and (p / DESCRIPTION).is_file()) or (p.name == DESCRIPTION and p.is_file())


def folder_of(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.parent if p.name == DESCRIPTION else p


def summary(desc: dict, folder: Path) -> dict:
    """What a stimulus set's manifest records about the manipulation (``manifest.manipulation``)."""
    units = [f"{u['layer']}:{u['channel']}" for u in desc["units"]]
    return {"kind": desc["kind"], "units": units,
            "folder": str(folder.resolve()), "description_sha256": sha256_file(folder / DESCRIPTION),
            "weights_sha256": desc["weights_sha256"], "base_weights": desc["base_weights"],
            "parameters": desc.get("parameters", {}),
            "statement": f"MANIPULATED NETWORK ({desc['kind']} on {desc['base_model']}): feature visualizations of units "
                         f"{', '.join(units)} are designed to mislead; "
                         f"natural-image behaviour is unchanged. A control, not a study of the original network."}


def save(out: Path, net: torch.nn.Module, desc: dict, extra: Callable[[Path], None] | None = None,
         overwrite: bool = False) -> Path:
    """Write ``weights.pt`` and ``manipulation.json`` (and whatever ``extra(tmp_folder)`` writes, the
    verification report) into a temporary folder, then rename it to ``out``."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, tmp / WEIGHTS)
        desc = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **desc, "weights_file": WEIGHTS,
                "weights_sha256": sha256_file(tmp / WEIGHTS)}
        write_json_atomic(tmp / DESCRIPTION, desc)
        if extra is not None:
            extra(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_description(path: str | os.PathLike) -> dict:
    folder = folder_of(path)
    dpath = folder / DESCRIPTION
    if not dpath.is_file():
        raise ManipulationError(f"{folder}: not a manipulated-model folder (no {DESCRIPTION})")
    try:
        desc = json.loads(dpath.read_text())
    except json.JSONDecodeError as e:
        raise ManipulationError(f"{dpath}: not valid JSON ({e})") from e
    if desc.get("schema") != SCHEMA:
        raise ManipulationError(f"{dpath}: schema {desc.get('schema')!r}, expected {SCHEMA!r}")
    if int(str(desc.get("schema_version", "0")).split(".")[0]) != int(SCHEMA_VERSION.split(".")[0]):
        raise ManipulationError(f"{dpath}: schema_version {desc.get('schema_version')!r} is not supported "
                                f"(this fvmatch reads {SCHEMA_VERSION.split('.')[0]}.x)")
    for key in ("kind", "base_model", "base_weights", "units", "weights_sha256"):
        if key not in desc:
            raise ManipulationError(f"{dpath}: missing field {key!r}")
    if desc["kind"] not in KINDS:
        raise ManipulationError(f"{dpath}: field 'kind' must be one of {KINDS}, got {desc['kind']!r}")
    if desc["base_model"] not in MODEL_NAMES:
        raise ManipulationError(f"{dpath}: field 'base_model' must be one of {MODEL_NAMES}, got {desc['base_model']!r}")
    return desc


def load_manipulated(path: str | os.PathLike, name: str | None = None, device: str | torch.device = "cpu") -> ManipulatedModel:
    """Load a manipulated-model folder; ``name`` (the configured model) must be its base model."""
    folder = folder_of(path)
    desc = read_description(folder)
    dpath = folder / DESCRIPTION
    if name is not None and name != desc["base_model"]:
        raise ManipulationError(f"{dpath}: a manipulated {desc['base_model']}, but the model is {name} "
                                f"(pass --model {desc['base_model']})")
    wpath = folder / desc.get("weights_file", WEIGHTS)
    if not wpath.is_file():
        raise ManipulationError(f"{wpath}: weights file missing")
    sha = sha256_file(wpath)
    if sha != desc["weights_sha256"]:
        raise ManipulationError(f"{wpath}: sha256 {sha[:12]}... differs from {dpath} ({desc['weights_sha256'][:12]}...)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        skeleton = load_model(desc["base_model"], "random", seed=0)  # structure only: every weight is overwritten
    net = build(desc, skeleton.net)
    state = torch.load(wpath, map_location="cpu", weights_only=True)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ManipulationError(f"{wpath}: does not fit {dpath} (missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
    net = net.eval().to(device)
    for p in net.parameters():
        p.requires_grad_(False)
    base = desc["base_weights"]
    if base.get("source") == "random":
        warnings.warn(RANDOM_WEIGHTS_WARNING, stacklevel=2)
    weights = {"source": base.get("source", "file"), "identity": f"MANIPULATED ({desc['kind']}) {folder.resolve()} "
               f"from {desc['base_model']} {base.get('identity')}", "sha256": sha, "seed": base.get("seed"), "base": base}
    return ManipulatedModel(name=desc["base_model"], net=net, weights=weights,
                            layer_groups={k: list(v) for k, v in DEFAULT_LAYER_GROUPS[desc["base_model"]].items()},
                            manipulation=summary(desc, folder))


def build(desc: dict, base_net: torch.nn.Module) -> torch.nn.Module:
    """The network structure of a description (weights to be loaded into it)."""
    if desc["kind"] == "silent_units":
        from stimuli_gen.manipulate.silent import SilentUnit, build as build_silent

        return build_silent(base_net, [SilentUnit(**u) for u in desc["units"]])
    from stimuli_gen.manipulate.fooling import build_fooling

    return build_fooling(desc, base_net)


def load_any(name: str, weights: str, seed: int = 0, device: str | torch.device = "cpu") -> LoadedModel:
    """``load_model``, or ``load_manipulated`` when ``weights`` names a manipulated-model folder."""
    if is_manipulated(weights):
        return load_manipulated(weights, name, device)
    return load_model(name, weights, seed=seed, device=device)
