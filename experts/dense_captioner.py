"""Dense (region) captions.

Two ways to get them:

* :class:`DenseCaptioner` (``"dense_captioner"``): a detector proposes boxes, a
  captioner describes each padded crop. Works with any pair of experts.
* :class:`Florence2RegionCaptioner` (``"florence2_regions"``): one model with a
  native region-caption task (Florence-2's ``<DENSE_REGION_CAPTION>``, native in
  transformers >= 4.56). It gives boxes and captions but no confidence, so
  every region's score is 1.0.

>>> dense = create_expert("dense_captioner",
...                       detector={"weights": "yolov8n.pt"},
...                       captioner={"weights": "Salesforce/blip-image-captioning-base"})  # doctest: +SKIP
>>> dense("bus.jpg").items[0].caption                                                      # doctest: +SKIP
'a man in a black jacket'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

from experts.base import Expert
from experts.captioner import Captioner
from experts.detector import YoloDetector
from experts.errors import ConfigError
from experts.evidence import Detection, RegionCaption, RegionCaptions
from experts.presets import default_option
from experts.registry import register_expert
from experts.weights import missing_weights_as_error


def _as_expert(spec: Expert | Mapping[str, Any] | None, cls: type, shared: dict[str, Any]) -> Expert:
    if isinstance(spec, Expert):
        return spec
    return cls(**{**shared, **(spec or {})})


@register_expert
class DenseCaptioner(Expert):
    """Detector boxes + a caption per padded crop → :class:`RegionCaptions`.

    ``detector`` / ``captioner`` are expert instances or keyword dicts for
    :class:`YoloDetector` / :class:`Captioner`. ``whole_image=True`` adds one
    region covering the full image (its caption is the global context).
    """

    name = "dense_captioner"
    evidence_type = RegionCaptions
    stored_fields = {
        "detector": YoloDetector,
        "captioner": Captioner,
        **dict.fromkeys(("max_regions", "min_box_size", "padding", "whole_image"), "value"),
    }

    def __init__(
        self,
        *,
        detector: Expert | Mapping[str, Any] | None = None,
        captioner: Expert | Mapping[str, Any] | None = None,
        max_regions: int = 10,
        min_box_size: int = 16,
        padding: float = 0.1,
        whole_image: bool = False,
        **kwargs: Any,
    ) -> None:
        if max_regions < 1 or padding < 0:
            raise ConfigError("dense_captioner: max_regions must be >= 1 and padding >= 0")
        shared = {k: kwargs[k] for k in ("device", "offline") if k in kwargs}
        super().__init__(weights=None, **kwargs)
        self.detector = _as_expert(detector, YoloDetector, shared)
        self.captioner = _as_expert(captioner, Captioner, shared)
        self.max_regions, self.min_box_size, self.padding, self.whole_image = (
            max_regions,
            min_box_size,
            padding,
            whole_image,
        )

    @property
    def weights_tag(self) -> str:
        return f"{self.detector.weights_tag}+{self.captioner.weights_tag}"

    @property
    def config(self) -> dict[str, Any]:
        return {
            "detector": self.detector.identity,
            "captioner": self.captioner.identity,
            "max_regions": self.max_regions,
            "min_box_size": self.min_box_size,
            "padding": self.padding,
            "whole_image": self.whole_image,
        }

    def _load(self):
        self.detector.load()
        self.captioner.load()
        return (self.detector.model, self.captioner.model)

    def _regions(self, image: Image.Image, detections: Sequence[Detection]) -> list[Detection]:
        keep = [
            d
            for d in detections
            if d.xyxy[2] - d.xyxy[0] >= self.min_box_size and d.xyxy[3] - d.xyxy[1] >= self.min_box_size
        ][: self.max_regions]
        if self.whole_image:
            w, h = image.size
            keep.append(Detection((0.0, 0.0, float(w), float(h)), "image", 1.0))
        return keep

    def _crop(self, image: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
        x1, y1, x2, y2 = box
        pad_x, pad_y = (x2 - x1) * self.padding, (y2 - y1) * self.padding
        w, h = image.size
        return image.crop(
            (max(0, int(x1 - pad_x)), max(0, int(y1 - pad_y)), min(w, int(x2 + pad_x)), min(h, int(y2 + pad_y)))
        )

    def predict(self, images: Sequence[Image.Image]) -> list[RegionCaptions]:
        _ = self.model
        detections = self.detector.predict(images)
        regions = [self._regions(img, det.items) for img, det in zip(images, detections)]
        crops = [self._crop(img, d.xyxy) for img, regs in zip(images, regions) for d in regs]
        # Sixteen images can hold hundreds of boxes: caption the crops in the captioner's own batch size.
        step = self.captioner.batch_size
        captions = iter([c for i in range(0, len(crops), step) for c in self.captioner.predict(crops[i : i + step])])
        out = []
        for img, regs in zip(images, regions):
            items = tuple(RegionCaption(d.xyxy, next(captions).text, d.score, d.label) for d in regs)
            out.append(RegionCaptions(img.size, items))
        return out


@register_expert
class Florence2RegionCaptioner(Expert):
    """Florence-2's native dense region captioning → :class:`RegionCaptions` (scores are 1.0)."""

    name = "florence2_regions"
    evidence_type = RegionCaptions
    task = "<DENSE_REGION_CAPTION>"
    offline_hint = "Save microsoft/Florence-2-base (model + processor) with save_pretrained() and pass weights=DIR."
    stored_fields = {**Expert.stored_fields, "max_new_tokens": "value", "num_beams": "value"}
    bare_weights_names_are_hub_ids = True

    def __init__(
        self,
        *,
        weights: str = default_option("florence2_regions", "weights"),
        max_new_tokens: int = 1024,
        num_beams: int = 3,
        **kwargs: Any,
    ):
        super().__init__(weights=weights, **kwargs)
        self.max_new_tokens, self.num_beams = max_new_tokens, num_beams

    @property
    def config(self) -> dict[str, Any]:
        return {"task": self.task, "max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams}

    def _load(self):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        with missing_weights_as_error(self.weights, expert=self.name, hint=self.offline_hint):
            self._processor = AutoProcessor.from_pretrained(self.weights.value, local_files_only=self.offline)
            net = AutoModelForImageTextToText.from_pretrained(self.weights.value, local_files_only=self.offline)
        return net.eval().requires_grad_(False).to(self.device)

    def predict(self, images: Sequence[Image.Image]) -> list[RegionCaptions]:
        net = self.model
        inputs = self._processor(text=[self.task] * len(images), images=list(images), return_tensors="pt").to(
            self.device
        )
        ids = net.generate(**inputs, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams)
        texts = self._processor.batch_decode(ids, skip_special_tokens=False)
        out = []
        for img, text in zip(images, texts):
            parsed = self._processor.post_process_generation(text, task=self.task, image_size=img.size)
            out.append(regions_from_florence(parsed[self.task], img.size))
        return out


def regions_from_florence(parsed: Mapping[str, Any], image_size: tuple[int, int]) -> RegionCaptions:
    """Florence-2's ``{"bboxes": [...], "labels": [...]}`` → :class:`RegionCaptions`."""
    items = tuple(
        RegionCaption(tuple(float(v) for v in box), str(label).strip(), 1.0)
        for box, label in zip(parsed.get("bboxes", []), parsed.get("labels", []))
    )
    return RegionCaptions((int(image_size[0]), int(image_size[1])), items)
