"""psa.Config and the YAML presets.

Config mirrors the C++ psa::Config (include/psa/config.h) field for field and validates on
construction through the library's own validate_config, so an invalid value raises ValueError
naming the field ("config.block_n must be a power of two in [16, 256], got 48").
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Dict, List, Optional, Tuple

from psa import _C

MODES = ("topk", "thresholdbound")
TEXT_POSITIONS = ("start", "end")
REARRANGE_METHODS = ("none", "gilbert", "tiles")


def _as_int(name: str, value, low: int = -2**31, high: int = 2**31) -> int:
    """value as an int in [low, high): by default the range of the C++ field, an int32."""
    # bool is an int subclass; a bool where a count is expected is almost certainly a mistake.
    if isinstance(value, bool) or not (isinstance(value, int) or hasattr(value, "__index__")):
        raise ValueError(f"config.{name} must be an int, got {type(value).__name__} {value!r}")
    result = int(value.__index__())
    if not low <= result < high:
        raise ValueError(f"config.{name} must be in [{low}, {high}), got {result}")
    return result


def _as_float(name: str, value) -> float:
    if isinstance(value, bool):
        raise ValueError(f"config.{name} must be a number, got bool {value!r}")
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"config.{name} must be a number, got {type(value).__name__} "
                         f"{value!r}") from None
    if not math.isfinite(result):
        raise ValueError(f"config.{name} must be finite, got {value!r}")
    return result


def _as_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"config.{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def _as_floats(name: str, value, count: int) -> Tuple[float, ...]:
    try:
        items = tuple(value)
    except TypeError:
        raise ValueError(f"config.{name} must be a sequence of {count} numbers, got "
                         f"{value!r}") from None
    if len(items) != count:
        raise ValueError(f"config.{name} must have {count} entries, got {len(items)}: {value!r}")
    return tuple(_as_float(f"{name}[{i}]", x) for i, x in enumerate(items))


def _as_choice(name: str, value, choices: Tuple[str, ...]) -> str:
    text = value.lower() if isinstance(value, str) else None
    if text not in choices:
        raise ValueError(f"config.{name} must be one of {', '.join(choices)}, got {value!r}")
    return text


@dataclasses.dataclass(frozen=True)
class Config:
    """The configuration of Pyramid Sparse Attention (SPEC.md sections 1 to 5).

    ends are the cumulative interval ends of levels 1, 2, 4, 8 (e1 <= e2 <= e4 <= e8 <= 1); the rest
    of a row is skipped. sim_thresholds are for pool factors 2, 4, 8. softmax_scale 0 selects
    1/sqrt(head_dim); samples_m / samples_n 0 select 16 / 8 (at most the block). deterministic (backward only):
    bitwise reproducible gradients; False allows a faster order-dependent accumulation.
    head_offset: global index of the first query head when a call holds a slice of the heads
    (sequence parallelism), so that the estimator draws what a call over all heads would.
    """

    block_m: int = 128
    block_n: int = 64
    tile_n: int = 32
    mode: str = "topk"
    ends: Tuple[float, float, float, float] = (0.10, 0.15, 0.15, 0.35)
    min_full_ratio: float = 0.06
    samples_m: int = 0
    samples_n: int = 0
    seed: int = 0
    head_offset: int = 0
    text_len: int = 0
    text_position: str = "end"
    sim_cap: bool = False
    sim_thresholds: Tuple[float, float, float] = (0.7, 0.65, 0.6)
    causal: bool = False
    keep_first_block: bool = False
    softmax_scale: float = 0.0
    deterministic: bool = True

    def __post_init__(self):
        normalised = {
            "block_m": _as_int("block_m", self.block_m),
            "block_n": _as_int("block_n", self.block_n),
            "tile_n": _as_int("tile_n", self.tile_n),
            "mode": _as_choice("mode", self.mode, MODES),
            "ends": _as_floats("ends", self.ends, 4),
            "min_full_ratio": _as_float("min_full_ratio", self.min_full_ratio),
            "samples_m": _as_int("samples_m", self.samples_m),
            "samples_n": _as_int("samples_n", self.samples_n),
            "seed": _as_int("seed", self.seed, 0, 2**64),
            "head_offset": _as_int("head_offset", self.head_offset, 0, 2**63),
            "text_len": _as_int("text_len", self.text_len, -2**63, 2**63),
            "text_position": _as_choice("text_position", self.text_position, TEXT_POSITIONS),
            "sim_cap": _as_bool("sim_cap", self.sim_cap),
            "sim_thresholds": _as_floats("sim_thresholds", self.sim_thresholds, 3),
            "causal": _as_bool("causal", self.causal),
            "keep_first_block": _as_bool("keep_first_block", self.keep_first_block),
            "softmax_scale": _as_float("softmax_scale", self.softmax_scale),
            "deterministic": _as_bool("deterministic", self.deterministic),
        }
        for name, value in normalised.items():
            object.__setattr__(self, name, value)
        # The C++ check is the one every backend uses; its messages name the field.
        _C.validate_config(self.to_native())
        # The canonical text of this config: the argument the custom ops take (a str is a constant
        # to torch.compile), computed once here so that traced code only reads an attribute.
        object.__setattr__(self, "_key", json.dumps(dataclasses.asdict(self), sort_keys=True))

    @property
    def key(self) -> str:
        return self._key

    @staticmethod
    def from_key(key: str) -> "Config":
        return _config_from_key(key)

    def replace(self, **changes) -> "Config":
        """A copy with some fields changed (validated again)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"Config has no field(s) {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)

    def to_native(self) -> "_C.NativeConfig":
        native = _C.NativeConfig()
        native.block_m = self.block_m
        native.block_n = self.block_n
        native.tile_n = self.tile_n
        native.mode = getattr(_C.PlanMode, self.mode)
        native.ends = list(self.ends)
        native.min_full_ratio = self.min_full_ratio
        native.samples_m = self.samples_m
        native.samples_n = self.samples_n
        native.seed = self.seed
        native.head_offset = self.head_offset
        native.text_len = self.text_len
        native.text_position = getattr(_C.TextPosition, self.text_position)
        native.sim_cap = self.sim_cap
        native.sim_thresholds = list(self.sim_thresholds)
        native.causal = self.causal
        native.keep_first_block = self.keep_first_block
        native.softmax_scale = self.softmax_scale
        native.deterministic = self.deterministic
        return native

    @staticmethod
    def from_native(native: "_C.NativeConfig") -> "Config":
        return Config(
            block_m=native.block_m,
            block_n=native.block_n,
            tile_n=native.tile_n,
            mode=native.mode.name,
            ends=tuple(native.ends),
            min_full_ratio=native.min_full_ratio,
            samples_m=native.samples_m,
            samples_n=native.samples_n,
            seed=native.seed,
            head_offset=native.head_offset,
            text_len=native.text_len,
            text_position=native.text_position.name,
            sim_cap=native.sim_cap,
            # float32 in C++: round to the nearest short decimal so that 0.7 reads back as 0.7.
            sim_thresholds=tuple(float(f"{x:.7g}") for x in native.sim_thresholds),
            causal=native.causal,
            keep_first_block=native.keep_first_block,
            softmax_scale=float(f"{native.softmax_scale:.7g}"),
            deterministic=native.deterministic,
        )

    def topk_density(self, num_k_blocks: int) -> float:
        """FLOP density a topk config gives a row of num_k_blocks blocks (alignment included)."""
        return _C.topk_row_density(self.to_native(), int(num_k_blocks))


@functools.lru_cache(maxsize=256)
def _config_from_key(key: str) -> Config:
    fields = json.loads(key)
    fields["ends"] = tuple(fields["ends"])
    fields["sim_thresholds"] = tuple(fields["sim_thresholds"])
    return Config(**fields)


# Read once at import: a Config is frozen, and a call into the extension here would break
# torch.compile(fullgraph=True) of psa.attention without a config (dynamo cannot trace it).
_DEFAULT_CONFIG = Config.from_native(_C.default_config())


def default_config() -> Config:
    """The plug-and-play default: block_m 128, block_n 64, tile_n 32, topk ends .1/.15/.15/.35."""
    return _DEFAULT_CONFIG


@dataclasses.dataclass(frozen=True)
class Preset:
    """One attention config of a preset file (the original release's YAML schema, SPEC.md 9)."""

    model: str
    name: str
    description: str
    dense: bool
    config: Config
    use_rearrange: bool
    rearrange: str  # "none", "gilbert" or "tiles"
    tile_size: Tuple[int, int, int]
    warmup_steps: int
    verbose: bool
    attn_impl: str
    # Of the model: (depth, height, width) divisors from pixels to latent tokens, and text tokens.
    video_scale: Tuple[int, int, int]
    text_length: int

    @property
    def selector(self) -> str:
        return f"{self.model}:{self.name}"


def _presets_of(native_models) -> List[Tuple[str, str, Preset]]:
    """(model name, its default_attention, preset) for every preset, as plain Python objects."""
    result = []
    for model in native_models:
        for p in model.presets:
            preset = Preset(
                model=p.model or model.model,
                name=p.name,
                description=p.description,
                dense=p.dense,
                config=Config.from_native(p.config),
                use_rearrange=p.use_rearrange,
                rearrange=p.rearrange.name,
                tile_size=tuple(p.tile_size),
                warmup_steps=p.warmup_steps,
                verbose=p.verbose,
                attn_impl=p.attn_impl,
                video_scale=tuple(model.video_scale),
                text_length=model.text_length,
            )
            result.append((model.model, model.default_attention, preset))
    return result


def _selector_index(presets) -> Dict[str, Preset]:
    """Every selector that names a preset: "Model:name", and "Model" and "Model:" for the model's
    default_attention."""
    index = {}
    for model, default_attention, preset in presets:
        index[f"{model}:{preset.name}"] = preset
        if preset.name == default_attention:
            index[model] = index[f"{model}:"] = preset
    return index


# The built-in presets, read once at import (16 presets, a few milliseconds): resolving a selector
# is then a dict lookup in plain Python, which torch.compile(fullgraph=True) traces, where reading
# YAML through the C++ library would break the graph.
_BUILTIN = tuple(_presets_of(_C.load_presets()))
_BUILTIN_BY_SELECTOR = _selector_index(_BUILTIN)


def _preset_path(path) -> str:
    """A preset file path given as str, bytes or os.PathLike, as str."""
    try:
        return os.fsdecode(path)
    except TypeError:
        raise ValueError(f"path must be a str, bytes or os.PathLike, got {type(path).__name__} "
                         f"{path!r}") from None


@functools.lru_cache(maxsize=32)
def _load(path: str, mtime: float) -> Tuple[Tuple[str, str, Preset], ...]:
    del mtime  # part of the cache key only: an edited file is read again
    # Read here rather than by the library so that every failure is a ValueError naming the file:
    # OS errors (a directory, say) and bytes that are not UTF-8 (the library's strings cross to
    # Python as str).
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise ValueError(f"preset file {path!r} cannot be read: {error.strerror or error}") \
            from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ValueError(f"preset file {path!r} is not UTF-8 text: byte 0x{data[error.start]:02x} "
                         f"on line {line}") from None
    # A path from undecodable bytes holds surrogates, which cannot cross as UTF-8.
    source = path.encode("utf-8", "backslashreplace").decode("utf-8")
    return tuple(_presets_of(_C.load_presets(text=text, source_name=source)))


def _presets(path: Optional[str]) -> Tuple[Tuple[str, str, Preset], ...]:
    """The built-in presets (path None) or those of the file at `path` (already a str)."""
    if path is None:
        return _BUILTIN
    try:
        mtime = os.stat(path).st_mtime
    except OSError as error:
        raise ValueError(f"preset file {path!r} cannot be read: {error.strerror}") from None
    return _load(path, mtime)


def list_presets(path=None) -> List[str]:
    """Selectors ("Model:name") of the built-in presets, or of the YAML file at `path` (str, bytes
    or os.PathLike)."""
    return [preset.selector
            for _, _, preset in _presets(None if path is None else _preset_path(path))]


def load_preset(selector: str, path=None) -> Preset:
    """A preset by selector: "Wan2.1_1.3b:psa_balanced", or "Wan2.1_1.3b" for the model's default.

    `path` (str, bytes or os.PathLike) reads a user's file in the original release's schema instead
    of the built-in presets. Errors (unknown model or preset, a file that cannot be read, a bad key
    in it) raise ValueError naming it. A built-in selector resolves to a Preset cached at import,
    so it also works inside torch.compile(fullgraph=True).
    """
    if not isinstance(selector, str) or not selector:
        raise ValueError(f"preset selector must be a non-empty string, got {selector!r}")
    if path is None:
        preset = _BUILTIN_BY_SELECTOR.get(selector)
        if preset is not None:
            return preset
        presets, source = _BUILTIN, "the built-in presets"
    else:
        path = _preset_path(path)
        presets, source = _presets(path), path
        preset = _selector_index(presets).get(selector)
        if preset is not None:
            return preset
    known = ", ".join(p.selector for _, _, p in presets)
    raise ValueError(f"preset {selector!r} is not in {source}; known: {known}")
