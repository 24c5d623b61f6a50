"""Typed run configuration and model profiles, validated on construction.

YAML files, CLI flags and Airflow params are parsed only at the edges (``load_config``); everything
inside the library receives a frozen ``RunConfig``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from schemas import OLD_ROLE_NAMES, ROLES, SCHEMA_VERSION

log = logging.getLogger(__name__)

PIPELINE_VERSION = "0.1.0"


class ConfigError(ValueError):
    """A configuration value is invalid; the message is one line meant for the user."""


@dataclass(frozen=True)
class ModelSpec:
    """One model role: where the weights come from and how to run them.

    ``ref`` is a hub id (``openai/clip-vit-base-patch32``), an openai-whisper name (``small``), a local
    path, an fsspec URI (``s3://models/whisper-small``) or ``tiny:<role>`` for the offline random-weight
    models. ``endpoint`` (summarizer only) is the base URL of an OpenAI-compatible server; ``ref`` is
    then the model name sent to it.
    """

    ref: str
    revision: str | None = None
    endpoint: str | None = None
    batch_size: int = 8  # the model's micro-batch
    max_new_tokens: int = 64
    options: Mapping[str, Any] = field(default_factory=dict)
    stage_batch_size: int | None = None  # videos per stage call; None: what the stage declares

    def __post_init__(self) -> None:
        if not self.ref or not isinstance(self.ref, str):
            raise ConfigError("model ref must be a non-empty string")
        if self.batch_size < 1:
            raise ConfigError(f"model batch_size must be >= 1, got {self.batch_size}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"model max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.stage_batch_size is not None and self.stage_batch_size < 1:
            raise ConfigError(f"model stage_batch_size must be >= 1, got {self.stage_batch_size}")


@dataclass(frozen=True)
class Models:
    """One spec per role (``schemas.ROLES``)."""

    asr: ModelSpec
    caption: ModelSpec
    embedding: ModelSpec
    summary: ModelSpec


@dataclass(frozen=True)
class KeyframeSettings:
    scene_threshold: float = 0.3  # mean absolute difference of downscaled frames, 0..1
    min_spacing_s: float = 1.0
    max_keyframes: int = 64
    max_side: int = 512  # long side of the stored JPEG
    jpeg_quality: int = 85
    sample_fps: float = 4.0  # frames per second examined for scene changes

    def __post_init__(self) -> None:
        if not 0 < self.scene_threshold <= 1:
            raise ConfigError(f"scene_threshold must be in (0, 1], got {self.scene_threshold}")
        if self.min_spacing_s < 0:
            raise ConfigError(f"min_spacing_s must be >= 0, got {self.min_spacing_s}")
        if self.max_keyframes < 1:
            raise ConfigError(f"max_keyframes must be >= 1, got {self.max_keyframes}")
        if self.max_side < 16:
            raise ConfigError(f"max_side must be >= 16, got {self.max_side}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if self.sample_fps <= 0:
            raise ConfigError(f"sample_fps must be > 0, got {self.sample_fps}")


@dataclass(frozen=True)
class Limits:
    """Per-video bounds, so that one huge or hostile file costs a known amount of memory and time.

    Not part of the config fingerprint: they decide whether a video is processed, not what its rows hold
    (a video failed by a limit is redone by ``--retry-failed`` after the limit is raised).
    """

    # Pixels a decoder may produce per frame. 8192x4320 (8K DCI, H.264's largest level) took 0.5 GB peak to
    # decode; a 16000x16000 H.264 frame took 3.8 GB. Larger pictures are decoded at 1/2, 1/4 or 1/8 size by
    # codecs that can (MJPEG, MPEG-1/2/4, JPEG 2000) and refused by the others.
    max_pixels: int = 8192 * 4320
    # Longer videos fail before anything is decoded: 6 h of 16 kHz float32 audio alone is 1.4 GB.
    max_duration_s: float = 6 * 3600.0
    # Wall time: a model stage's work on one video may take stage_s plus stage_s_per_media_s per second of
    # the video (a 1-hour video: 4200 s a stage), its decode decode_s; a video over its limit fails, saying
    # so, and its worker is stopped, so that a hung input costs its limit, not the run.
    stage_s: float = 600.0
    stage_s_per_media_s: float = 1.0
    decode_s: float = 1800.0

    def __post_init__(self) -> None:
        if self.max_pixels < 64 * 64:
            raise ConfigError(f"limits.max_pixels must be >= 4096, got {self.max_pixels}")
        if self.max_duration_s <= 0:
            raise ConfigError(f"limits.max_duration_s must be > 0, got {self.max_duration_s}")
        for name in ("stage_s", "decode_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"limits.{name} must be > 0, got {getattr(self, name)}")
        if self.stage_s_per_media_s < 0:
            raise ConfigError(f"limits.stage_s_per_media_s must be >= 0, got {self.stage_s_per_media_s}")


@dataclass(frozen=True)
class Resources:
    """Ray resources for one stage actor (fractional values allowed)."""

    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.cpus < 0 or self.gpus < 0:
            raise ConfigError("stage resources must be >= 0")


def _tiny_models() -> Models:
    return Models(
        # Random weights never say "end of text": one temperature, so that no window is decoded six times.
        asr=ModelSpec("tiny:whisper", batch_size=8, max_new_tokens=24, options={"temperatures": [0.0]}),
        caption=ModelSpec("tiny:blip2", batch_size=8, max_new_tokens=12),
        embedding=ModelSpec("tiny:clip", batch_size=16),
        summary=ModelSpec("tiny:llm", batch_size=4, max_new_tokens=128, options={"context_tokens": 1024}),
    )


def _cpu_models() -> Models:
    return Models(
        asr=ModelSpec("base", batch_size=4, max_new_tokens=224, stage_batch_size=2),
        caption=ModelSpec("Salesforce/blip2-opt-2.7b", batch_size=2, max_new_tokens=30),
        embedding=ModelSpec("openai/clip-vit-base-patch32", batch_size=16),
        summary=ModelSpec(
            "Qwen/Qwen2.5-0.5B-Instruct", batch_size=4, max_new_tokens=1536, options={"context_tokens": 8192}
        ),
    )


def _gpu_models() -> Models:
    return Models(
        asr=ModelSpec("large-v3-turbo", batch_size=16, max_new_tokens=224, stage_batch_size=8),
        caption=ModelSpec("Salesforce/blip2-opt-2.7b", batch_size=32, max_new_tokens=30),
        embedding=ModelSpec("openai/clip-vit-large-patch14", batch_size=128),
        summary=ModelSpec(
            "Qwen/Qwen2.5-7B-Instruct", batch_size=16, max_new_tokens=2048, options={"context_tokens": 32768}
        ),
    )


PROFILES = {"tiny": _tiny_models, "cpu": _cpu_models, "gpu": _gpu_models}


def default_cache_dir() -> Path:
    """The model cache of the machine this runs on: its ``REELSCOPE_CACHE``, else ``~/.cache/reelscope``.
    Called where a model loads (each node its own), and by what runs on this machine (search)."""
    return Path(os.environ.get("REELSCOPE_CACHE") or Path.home() / ".cache" / "reelscope")


@dataclass(frozen=True)
class RunConfig:
    input: str
    output: str
    profile: str = "tiny"
    models: Models = field(default_factory=_tiny_models)
    keyframes: KeyframeSettings = field(default_factory=KeyframeSettings)
    limits: Limits = field(default_factory=Limits)
    shard_size: int = 8
    force: bool = False
    retry_failed: bool = False  # redo videos whose committed row failed (force redoes everything)
    device: str = "auto"  # auto | cpu | cuda
    ray_address: str | None = None
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)  # may hold credentials
    # Where models are built and copied. None: each node's own (``default_cache_dir`` where the model loads);
    # a path given is used as it is on every node, so it must exist on each (a shared mount).
    cache_dir: str | None = None
    partition: str | None = None  # e.g. "dt=2026-11-22": hive partition inside each table

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ConfigError(f"unknown profile {self.profile!r}; choose one of: {', '.join(PROFILES)}")
        if self.shard_size < 1:
            raise ConfigError(f"shard_size must be >= 1, got {self.shard_size}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.partition is not None and ("=" not in self.partition or "/" in self.partition):
            raise ConfigError(f"partition must look like key=value, got {self.partition!r}")

    def fingerprint(self) -> str:
        """What decides whether existing rows are current: models, extraction settings, schema version."""
        payload = {
            "schema": SCHEMA_VERSION,
            "models": dataclasses.asdict(self.models),
            "keyframes": dataclasses.asdict(self.keyframes),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _build(cls, values: Mapping[str, Any], where: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(sorted(unknown))}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"bad value in {where}: {exc}") from None


def load_config(
    input: str,
    output: str,
    profile: str = "tiny",
    config_file: str | None = None,
    **overrides: Any,
) -> RunConfig:
    """Build a RunConfig from a profile, an optional YAML file and explicit overrides (CLI/Airflow params).

    The YAML file may hold ``models: {role: {ref: ..., ...}}``, ``keyframes: {...}``, ``limits: {...}`` and
    any top-level RunConfig field; explicit overrides win.
    """
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    file_values: dict[str, Any] = {}
    if config_file:
        import yaml

        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file not found: {config_file}")
        try:
            file_values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {config_file} is not valid YAML: {exc}".splitlines()[0]) from None
        if not isinstance(file_values, dict):
            raise ConfigError(f"config file {config_file} must hold a mapping")
        profile = file_values.pop("profile", profile)
        if profile not in PROFILES:
            raise ConfigError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    models = PROFILES[profile]()
    model_overrides = file_values.pop("models", {}) or {}
    for role, spec in model_overrides.items():
        if role in OLD_ROLE_NAMES:
            log.warning("config: models.%s is now called models.%s", role, OLD_ROLE_NAMES[role])
            role = OLD_ROLE_NAMES[role]
        if role not in ROLES:
            raise ConfigError(f"unknown model role {role!r} in config file; roles are {', '.join(ROLES)}")
        base = dataclasses.asdict(getattr(models, role))
        base.update(spec or {})
        models = dataclasses.replace(models, **{role: _build(ModelSpec, base, f"models.{role}")})
    kf = _build(KeyframeSettings, file_values.pop("keyframes", {}) or {}, "keyframes")
    limits = _build(Limits, file_values.pop("limits", {}) or {}, "limits")
    values = {**file_values, **{k: v for k, v in overrides.items() if v is not None}}
    return _build(
        RunConfig,
        {
            "input": input, "output": output, "profile": profile, "models": models, "keyframes": kf,
            "limits": limits, **values,
        },
        "config",
    )


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """The configuration as plain JSON values (``config_from_dict`` reads it back equal), so that a run
    planned in one place runs elsewhere as planned, without its config file. Storage options are included
    as they are: whoever shows or stores the result removes their credentials."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def config_from_dict(values: Mapping[str, Any]) -> RunConfig:
    """The RunConfig that ``config_to_dict`` wrote; keys it leaves out take their defaults (the machine
    that runs supplies its own), unknown keys are refused."""
    values = dict(values)
    models = values.pop("models", None)
    if models is not None:
        roles = {f.name for f in dataclasses.fields(Models)}
        if set(models) != roles:
            raise ConfigError(f"config models must name the roles {', '.join(sorted(roles))}, "
                              f"got {', '.join(sorted(models))}")
        values["models"] = Models(**{r: _build(ModelSpec, dict(models[r] or {}), f"models.{r}") for r in roles})
    for name, cls in (("keyframes", KeyframeSettings), ("limits", Limits)):
        if name in values:
            values[name] = _build(cls, dict(values[name] or {}), name)
    return _build(RunConfig, values, "config")
