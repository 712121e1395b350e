"""Object detection with Ultralytics YOLO.

Data-only exports load as they are: ONNX, TFLite (needs ``ai-edge-litert``),
OpenVINO and NCNN model directories, TensorRT ``.engine``. Everything else that
``ultralytics.YOLO`` loads -- a ``.pt`` checkpoint, a tag such as ``yolov8n.pt``
(Ultralytics downloads a ``.pt``), TorchScript, TF SavedModel -- is a Python pickle
or a program, and loading it can run any code the file's author wrote. Those are
refused unless the user opts in: ``trust_pickle=True``, the setting
``EXPERTBRIDGE_TRUST_PICKLE_WEIGHTS=1`` or ``expertbridge --trust-pickle``.

>>> det = create_expert("yolo", weights="yolov8n_int8.tflite", conf=0.3)  # doctest: +SKIP
>>> det("bus.jpg").count("person")                                       # doctest: +SKIP
4
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from experts.base import Expert
from experts.errors import ConfigError
from experts.evidence import Detection, Detections
from experts.presets import default_option
from experts.registry import register_expert
from experts.weights import WeightsRef, missing_weights_as_error

#: Ultralytics export formats that hold data only (graphs and tensors, metadata as JSON/YAML):
#: loading one never unpickles or runs code from the file. Ultralytics picks the format by the
#: name's ending, exactly as matched here.
DATA_ONLY_EXPORTS = (".onnx", ".tflite", ".engine", "_openvino_model", "_ncnn_model")
_PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl")


def code_risk(ref: WeightsRef) -> str | None:
    """Why loading ``ref`` through Ultralytics could run code from the file, or None for a data-only export."""
    name = Path(ref.value).name.lower()
    if ref.kind == "path" and name.endswith(DATA_ONLY_EXPORTS):
        return None
    if ref.kind == "tag":
        return f"{ref.value!r} is an Ultralytics tag: it downloads a .pt checkpoint, which is a Python pickle"
    if name.endswith(_PICKLE_SUFFIXES):
        return f"{Path(ref.value).name} is a PyTorch checkpoint, which is a Python pickle"
    return f"{ref.value!r} is not a data-only export ({', '.join(DATA_ONLY_EXPORTS)})"


@register_expert
class YoloDetector(Expert):
    """YOLO detector → :class:`Detections` (pixel xyxy boxes, labels, scores).

    ``classes`` keeps only those classes (names like ``"person"`` or integer ids).
    ``trust_pickle=True`` allows weights that are not a data-only export (see the module docstring).
    """

    name = "yolo"
    evidence_type = Detections
    offline_hint = (
        "Put a YOLO export on disk and name it: EXPERTBRIDGE_YOLO_WEIGHTS=PATH (every command), "
        "`expertbridge run yolo --weights PATH`, or weights=PATH in Python. Offline, the INT8 TFLite export "
        "../shared/weights/yolov8n_int8.tflite works (a .pt is a pickle: see --trust-pickle)."
    )
    stored_fields = {**Expert.stored_fields, **dict.fromkeys(("conf", "iou", "classes", "imgsz", "max_det"), "value")}

    def __init__(
        self,
        *,
        weights: str | None = default_option("yolo", "weights"),
        conf: float = 0.25,
        iou: float = 0.45,
        classes: Sequence[str | int] | None = None,
        imgsz: int = 640,
        max_det: int = 300,
        trust_pickle: bool = False,
        **kwargs: Any,
    ) -> None:
        if weights is None:
            raise ConfigError("yolo needs weights: a checkpoint path, an export, or an Ultralytics tag")
        if not 0.0 <= conf <= 1.0 or not 0.0 <= iou <= 1.0:
            raise ConfigError(f"yolo: conf and iou must lie in [0, 1], got conf={conf}, iou={iou}")
        super().__init__(weights=weights, **kwargs)
        risk = None if trust_pickle else code_risk(self.weights)
        if risk is not None:
            raise ConfigError(
                f"yolo: refusing to load {self.weights.value!r}: {risk}, and loading it can run any code "
                "its author put in it. Export the model to ONNX or TFLite where you trust it "
                "(`yolo export model=yolov8n.pt format=onnx`) and pass that file, or, if you trust this "
                "file, opt in with EXPERTBRIDGE_TRUST_PICKLE_WEIGHTS=1 (CLI: expertbridge --trust-pickle ...; "
                "Python: trust_pickle=True)."
            )
        self.conf, self.iou, self.imgsz, self.max_det = conf, iou, imgsz, max_det
        self.classes = list(classes) if classes is not None else None

    @property
    def config(self) -> dict[str, Any]:
        return {
            "conf": self.conf,
            "iou": self.iou,
            "imgsz": self.imgsz,
            "max_det": self.max_det,
            "classes": self.classes,
        }

    def _load(self):
        if self.offline:
            # Ultralytics otherwise tries to pip-install missing backends and fetch fonts.
            os.environ["YOLO_OFFLINE"] = "1"
        from ultralytics import YOLO

        with missing_weights_as_error(self.weights, expert=self.name, hint=self.offline_hint):
            return YOLO(self.weights.value, task="detect")

    @property
    def names(self) -> dict[int, str]:
        """Class index → label, as stored in the checkpoint."""
        return dict(self.model.names)

    def _class_ids(self) -> list[int] | None:
        if self.classes is None:
            return None
        by_name = {label: idx for idx, label in self.names.items()}
        ids = []
        for c in self.classes:
            if isinstance(c, int) and c in self.names:
                ids.append(c)
            elif isinstance(c, str) and c in by_name:
                ids.append(by_name[c])
            else:
                raise ConfigError(f"yolo: unknown class {c!r}; this model knows {sorted(by_name)}")
        return ids

    def predict(self, images: Sequence[Image.Image]) -> list[Detections]:
        device = "cpu" if self.device.type == "cpu" else str(self.device.index or 0)
        results = self.model.predict(
            list(images),  # PIL images are taken as RGB; numpy arrays would be taken as BGR
            conf=self.conf,
            iou=self.iou,
            imgsz=self.imgsz,
            max_det=self.max_det,
            classes=self._class_ids(),
            device=device,
            batch=len(images),
            verbose=False,
        )
        names = self.names
        out = []
        for img, res in zip(images, results):
            boxes = res.boxes
            rows = zip(boxes.xyxy.tolist(), boxes.cls.tolist(), boxes.conf.tolist())
            items = [Detection(tuple(map(float, xyxy)), names[int(c)], float(s), int(c)) for xyxy, c, s in rows]
            items.sort(key=lambda d: -d.score)
            out.append(Detections(img.size, tuple(items)))
        return out
