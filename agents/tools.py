"""Experts as LangChain tools, bound to one image.

Each tool runs its expert, renders the evidence with the text bridge for the model, and
returns the raw evidence as the ToolMessage artifact for the trace. The experts may answer
from the feature store: the workflows layer passes ``workflows.store_runner.StoredExpert``s,
whose ``last_run`` hit and miss counts go into the artifact; the toolbox never sees the store.

    toolbox = ExpertToolbox(detector=create_expert("yolo", weights="yolov8n.pt"))
    tools = toolbox.tools_for("bus.jpg")        # [detect_objects]
    tools[0].invoke({"labels": ["person"]})     # '4 objects: person ×4 ...'

Only the experts given become tools, so the model can only call what is registered.
Arguments are validated by pydantic schemas; a failure (bad argument, unreadable image,
expert error) goes back to the model as the tool's answer, never as an exception.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from langchain_core.tools import BaseTool, StructuredTool, ToolException
from pydantic import BaseModel, Field

from bridges.text import render
from experts import Caption, Classification, Detections, Expert, ExpertBridgeError, ItemResult
from experts.images import ImageSource


def run_counted(expert: Expert, sources: Sequence[ImageSource]) -> tuple[list[ItemResult], dict[str, int]]:
    """``expert.run(sources)`` and the store's counts for the trace.

    An expert that answers from a store (``workflows.store_runner.StoredExpert``) reports what
    its last run in this thread did (``{"hits", "misses", "failed"}``); any other expert ran a
    forward pass for every item.
    """
    results = expert.run(list(sources))
    run = getattr(expert, "last_run", None)
    return results, (run.to_dict() if run is not None else {"hits": 0, "misses": len(sources)})


#: Few-shot labels scoring less than this are named as ruled out, not listed with their score.
FEW_SHOT_MIN_SCORE = 0.05


class FewShotModel(Protocol):
    """What the few-shot tool needs of a fitted classifier (``workflows.fewshot.FewShotClassifier``)."""

    classnames: tuple[str, ...]

    def predict(self, images: Sequence[ImageSource]) -> list[Any]: ...


class DetectArgs(BaseModel):
    labels: list[str] | None = Field(None, description="only report these object classes, e.g. ['person']")
    min_score: float = Field(0.25, ge=0.0, le=1.0, description="minimum detection confidence")
    boxes: bool = Field(False, description="include exact pixel boxes")


class ClipTagsArgs(BaseModel):
    candidates: list[str] = Field(
        ..., min_length=2, max_length=50, description="candidate labels to rank, e.g. ['a cat', 'a dog']"
    )


class NoArgs(BaseModel):
    pass


@dataclass
class ExpertToolbox:
    """The experts a planner may call; ``tools_for(image)`` makes the LangChain tools for one image."""

    detector: Expert | None = None
    captioner: Expert | None = None
    dense_captioner: Expert | None = None
    clip: Expert | None = None
    classifier: FewShotModel | None = None
    # Several few-shot models by name (e.g. {"shape": ..., "color": ...}): one `classify_few_shot` tool
    # that runs them all (features come from the store: cheap). Measured with Qwen2.5-Coder-1.5B on
    # easy-VQA: given a `classifier` argument, it picked "shape" for "is a gray shape present?" and
    # then answered from the wrong evidence.
    classifiers: Mapping[str, FewShotModel] = field(default_factory=dict)
    # A learnable bridge (bridges.BridgedLM) and the expert whose features it was trained on: the
    # `describe_image` tool, an alternative to rendering evidence as text.
    describer: Any | None = None
    describer_expert: Expert | None = None
    describe_prompt: str = "<image>Caption:"
    text_budget: int = 300  # tokens of bridge text per tool result

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tools_for("")]

    def tools_for(self, image: ImageSource) -> list[BaseTool]:
        tools = []
        if self.detector is not None:
            tools.append(
                _tool(
                    lambda labels=None, min_score=0.25, boxes=False: self._detect(image, labels, min_score, boxes),
                    "detect_objects",
                    "Detect and count objects in the image (an object detector with COCO classes). Returns each "
                    "class with its count, position and size.",
                    DetectArgs,
                )
            )
        if self.captioner is not None:
            tools.append(
                _tool(lambda: self._single(self.captioner, image), "caption_image", "One-sentence caption.", NoArgs)
            )
        if self.dense_captioner is not None:
            tools.append(
                _tool(
                    lambda: self._single(self.dense_captioner, image),
                    "describe_regions",
                    "Captions of the main regions of the image, with their positions.",
                    NoArgs,
                )
            )
        if self.clip is not None:
            tools.append(
                _tool(
                    lambda candidates: self._clip_tags(image, candidates),
                    "clip_tags",
                    "Rank candidate labels by how well they match the image (CLIP zero-shot).",
                    ClipTagsArgs,
                )
            )
        few_shot = self.few_shot_models
        if len(few_shot) == 1:
            ((only_name, only),) = few_shot.items()
            tools.append(
                _tool(
                    lambda: self._few_shot(image, only, None if only_name == "default" else only_name),
                    "classify_few_shot",
                    f"Classify the image into one of: {', '.join(only.classnames)} (a few-shot model).",
                    NoArgs,
                )
            )
        elif few_shot:
            choices = "; ".join(f"{name} ({', '.join(m.classnames)})" for name, m in few_shot.items())
            tools.append(
                _tool(
                    lambda: self._few_shots(image, few_shot),
                    "classify_few_shot",
                    f"Classify the image with few-shot models, one per property: {choices}. Every model answers.",
                    NoArgs,
                )
            )
        if self.describer is not None and self.describer_expert is not None:
            tools.append(
                _tool(
                    lambda: self._describe(image),
                    "describe_image",
                    "A short description of the image, written by a language model that sees the image features.",
                    NoArgs,
                )
            )
        return tools

    @property
    def few_shot_models(self) -> dict[str, FewShotModel]:
        """Every few-shot model by name (``classifier`` alone is ``"default"``)."""
        models = dict(self.classifiers)
        if self.classifier is not None:
            models.setdefault("default", self.classifier)
        return models

    # ------------------------------------------------------------------ tool bodies

    def _evidence(self, expert: Expert, image: ImageSource):
        try:
            results, store = run_counted(expert, [image])
        except ExpertBridgeError as err:  # e.g. missing weights: the model should hear it, not crash
            raise ToolException(f"{expert.name} failed: {err}") from err
        result = results[0]
        if not result.ok:
            raise ToolException(f"{expert.name} could not read the image: {result.error}")
        return result.evidence, store

    def _single(self, expert: Expert, image: ImageSource):
        evidence, store = self._evidence(expert, image)
        return render(evidence, max_tokens=self.text_budget), {"evidence": evidence.to_dict(), "store": store}

    def _detect(self, image: ImageSource, labels: list[str] | None, min_score: float, boxes: bool):
        evidence, store = self._evidence(self.detector, image)
        # Filters apply to the stored evidence, so one forward pass answers every filter.
        wanted = None if not labels else {label.strip().lower() for label in labels}
        items = tuple(
            d for d in evidence.items if d.score >= min_score and (wanted is None or d.label.lower() in wanted)
        )
        shown = Detections(evidence.image_size, items)
        text = render(shown, max_tokens=self.text_budget, boxes=boxes, threshold=min_score)
        if wanted:
            known = {n.lower() for n in getattr(self.detector, "names", {}).values()}
            unknown = sorted(w for w in wanted if known and w not in known)
            if unknown:
                text += f"\n(note: the detector has no class {', '.join(unknown)}; it cannot see those)"
        return text, {"evidence": shown.to_dict(), "store": store}

    def _clip_tags(self, image: ImageSource, candidates: list[str]):
        evidence, store = self._evidence(self.clip, image)
        weights = self.clip.class_weights(candidates)
        probs = self.clip.zero_shot_logits(torch.as_tensor(evidence.vector)[None], weights).softmax(-1)[0]
        top = probs.argsort(descending=True)[: min(5, len(candidates))].tolist()
        tags = Classification(tuple(candidates[i] for i in top), tuple(float(probs[i]) for i in top), "clip-zero-shot")
        return render(tags, max_tokens=self.text_budget), {"evidence": tags.to_dict(), "store": store}

    def _describe(self, image: ImageSource):
        evidence, store = self._evidence(self.describer_expert, image)
        text = self.describer.generate(torch.as_tensor(evidence.vector)[None], [self.describe_prompt])[0].strip()
        caption = Caption(text)
        return render(caption, max_tokens=self.text_budget), {"evidence": caption.to_dict(), "store": store}

    def _few_shots(self, image: ImageSource, models: Mapping[str, FewShotModel]):
        """Every named model's answer, one line each."""
        lines, evidence = [], {}
        for name, model in models.items():
            text, artifact = self._few_shot(image, model, name)
            lines.append(text)
            evidence[name] = artifact["evidence"]
        return "\n".join(lines), {"evidence": {"type": "few_shot", "classifiers": evidence}, "store": {}}

    def _few_shot(self, image: ImageSource, model: FewShotModel, name: str | None = None):
        pred = model.predict([image])[0]
        if pred.label is None:
            raise ToolException(f"few-shot classifier could not read the image: {pred.error}")
        ranked = sorted(pred.probabilities.items(), key=lambda kv: (-kv[1], kv[0]))
        source = f"few-shot {name}" if name else "few-shot"
        evidence = Classification(tuple(k for k, _ in ranked), tuple(v for _, v in ranked), source)
        return few_shot_text(ranked, name), {"evidence": evidence.to_dict(), "store": {}}


def few_shot_text(ranked: Sequence[tuple[str, float]], name: str | None = None) -> str:
    """A few-shot prediction as one plain sentence: the label, and the runners-up if any is close.

    Scores stay in the evidence (the trace shows them), not in the model's text: measured with
    Qwen2.5-Coder-1.5B on 48 easy-VQA train questions (presence and negated), the classifier-style
    "Few-shot color classifier: the color is teal (1.00). No other color scored 0.05 or more." gave
    71% and this sentence 85%; a colour listed with a 0.00 score was read as present. Labels
    scoring under :data:`FEW_SHOT_MIN_SCORE` are not named at all.

    >>> few_shot_text([("brown", 0.97), ("red", 0.03)], "color")
    'The color is brown.'
    >>> few_shot_text([("bee", 0.62), ("ant", 0.38)])
    'The label is bee (0.62); it may also be ant (0.38).'
    """
    (top, score), rest = ranked[0], [(k, v) for k, v in ranked[1:] if v >= FEW_SHOT_MIN_SCORE]
    text = f"The {name or 'label'} is {top}"
    if rest:
        return text + f" ({score:.2f}); it may also be " + " or ".join(f"{k} ({v:.2f})" for k, v in rest) + "."
    return text + "."


def _tool(func: Callable, name: str, description: str, schema: type[BaseModel]) -> StructuredTool:
    return StructuredTool.from_function(
        func=func,
        name=name,
        description=description,
        args_schema=schema,
        response_format="content_and_artifact",
        handle_tool_error=_as_error_text,
        handle_validation_error=_as_validation_text,
    )


def _as_error_text(err: ToolException) -> str:
    return f"error: {err}"


def _as_validation_text(err: Exception) -> str:
    errors = getattr(err, "errors", None)
    if callable(errors):  # pydantic: one short line per bad field, without the docs links
        details = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in errors())
        return f"error: invalid arguments: {details}"
    return f"error: invalid arguments: {err}"
