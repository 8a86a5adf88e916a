"""The generator's configuration: one TOML file (sections below) plus command-line overrides.

Every field ends up in the manifest (``GeneratorConfig.to_dict()``). Example::

    [model]
    name = "torchvision_googlenet"
    weights = "pretrained"          # pretrained | random | auto | PATH
    [model.layer_groups]            # optional; default per model in stimuli_gen.models
    early = ["inception3a", "inception3b"]
    [collection]
    source = "/data/imagenet/val"   # folder tree, flat folder, text file of paths, or "builtin"
    resize = 256
    crop = 224
    [units]
    per_group = 10
    # explicit = ["inception4a:17", "inception4b:3:middle"]
    [exemplars]
    k = 10
    spares = 2
    statistic = "mean"              # mean | max
    relu = "pre"                    # pre | post
    [feature_vis]
    per_unit = 5
    preset = "lucid"
    [feature_vis.overrides]         # passed to RenderConfig.from_preset
    steps = 512
    [path_similarity]               # the check after rendering; enabled = false skips it
    metric = "spearman"             # spearman | pearson | cosine
    [run]
    out = "data/stimuli/my-set"
    seed = 0
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ModelConfig:
    name: str = "torchvision_googlenet"
    weights: str = "pretrained"  # pretrained | random | auto | PATH
    layer_groups: dict[str, list[str]] | None = None  # None: the model's documented default


@dataclass
class CollectionConfig:
    source: str = "builtin"
    builtin_dir: str = "data/collections/builtin"
    resize: int = 256
    crop: int = 224
    min_side: int = 32
    background: list[int] = field(default_factory=lambda: [255, 255, 255])
    decoder: str = "auto"  # auto (torchvision/nvjpeg on CUDA, pil on CPU) | pil | torchvision
    workers: int = -1  # -1: min(CPU cores - 1, 16)
    batch_size: int = 128


@dataclass
class UnitsConfig:
    per_group: int = 10
    explicit: list[str] | None = None  # ["layer:channel[:group]", ...]
    file: str | None = None  # CSV (layer, channel[, group]) or text of layer:channel[:group]
    seed: int | None = None  # None: run.seed


@dataclass
class ExemplarConfig:
    k: int = 10
    spares: int = 2
    margin: int | None = None  # extra candidates re-scored in fp32; None: k
    statistic: str = "mean"
    relu: str = "pre"
    precision: str = "auto"  # auto (bf16 on CUDA) | fp32 | bf16
    channels_last: bool = True
    dedupe_hamming: int = -1  # skip exemplars within this many dhash bits of a better one; -1: off
    save_activations: bool = False  # all channels of the group layers, float16, into the set
    activations_dtype: str = "float16"  # float16 (compact; range 6e-8..65504) | float32
    activations_from: str | None = None  # an earlier set saved with save_activations: no pass, re-use them
    checkpoint_every_s: float = 60.0


@dataclass
class FeatureVisConfig:
    per_unit: int = 5
    preset: str = "lucid"  # lucid | borowski2021 (stimuli_gen.render)
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class PathSimilarityConfig:
    """The path-similarity check after rendering (stimuli_gen.path_similarity; Geirhos et al. 2023)."""

    enabled: bool = True
    metric: str = "spearman"  # spearman | pearson | cosine
    pooling: str = "mean"  # mean (spatially averaged channel vectors) | flat (flattened maps)
    n_unrelated: int = 20  # unrelated natural images per unit (seeded with run.seed)


@dataclass
class RunConfig:
    out: str = ""
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    progress: bool = True


@dataclass
class GeneratorConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    collection: CollectionConfig = field(default_factory=CollectionConfig)
    units: UnitsConfig = field(default_factory=UnitsConfig)
    exemplars: ExemplarConfig = field(default_factory=ExemplarConfig)
    feature_vis: FeatureVisConfig = field(default_factory=FeatureVisConfig)
    path_similarity: PathSimilarityConfig = field(default_factory=PathSimilarityConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "GeneratorConfig":
        cfg = cls()
        for section, values in d.items():
            if section not in {f.name for f in dataclasses.fields(cls)}:
                raise ValueError(f"{where}: unknown section [{section}]; sections: "
                                 f"{[f.name for f in dataclasses.fields(cls)]}")
            if not isinstance(values, dict):
                raise ValueError(f"{where}: [{section}] must be a table")
            for key, value in values.items():
                cfg.set(f"{section}.{key}", value, where)
        return cfg

    @classmethod
    def from_toml(cls, path: str | Path) -> "GeneratorConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML ({e})") from e
        return cls.from_dict(data, str(path))

    def set(self, dotted: str, value: Any, where: str = "override") -> None:
        """Set ``section.key`` with a type check against the default (a CLI override or a TOML entry)."""
        section, _, key = dotted.partition(".")
        obj = getattr(self, section, None)
        if obj is None or key not in {f.name for f in dataclasses.fields(obj)}:
            names = [f.name for f in dataclasses.fields(obj)] if obj is not None else []
            raise ValueError(f"{where}: unknown setting {dotted!r}" + (f"; [{section}] has {names}" if names else ""))
        current = getattr(obj, key)
        if isinstance(current, bool) and not isinstance(value, bool):
            raise ValueError(f"{where}: {dotted} must be true or false, got {value!r}")
        if isinstance(current, int) and not isinstance(current, bool) and (not isinstance(value, int) or isinstance(value, bool)):
            raise ValueError(f"{where}: {dotted} must be an integer, got {value!r}")
        if isinstance(current, float) and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise ValueError(f"{where}: {dotted} must be a number, got {value!r}")
        setattr(obj, key, value)
