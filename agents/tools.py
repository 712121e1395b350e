"""Experts as LangChain tools, declared once and given the image at call time.

Each tool is declared once, in :data:`TOOLS`: its name, what the model reads about it, its
arguments (a pydantic schema) and the toolbox method that runs it. A toolbox offers the tools
whose *role* it holds (a detector, a captioner, few-shot models, ...), so the model can only
call what is registered. The image is not an argument the model sees or fills: it reaches the
tool through LangChain's injected :class:`~langchain.tools.ToolRuntime`, as
``runtime.context.image`` (the planner passes it in the agent's run context). One list of
tools, hence one agent graph, serves every question.

Each tool runs its expert, renders the evidence with the text bridge for the model, and
returns the raw evidence as the ToolMessage artifact for the trace. The experts may answer
from the feature store: the workflows layer passes ``workflows.store_runner.StoredExpert``s,
whose ``last_run`` hit and miss counts go into the artifact; the toolbox never sees the store.

    toolbox = ExpertToolbox.from_experts([create_expert("yolo", weights="yolov8n.pt")])
    toolbox.names                                          # ['detect_objects']
    call_tool(toolbox.tools[0], "bus.jpg", {"labels": ["person"]}).content   # '4 objects: person ×4 ...'

Arguments are validated by pydantic schemas; a failure (bad argument, unreadable image,
expert error) goes back to the model as the tool's answer, never as an exception.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from langchain.tools import ToolRuntime
from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool, StructuredTool, ToolException
from pydantic import BaseModel, Field

from bridges.text import render
from experts import Caption, Classification, ConfigError, Detections, Expert, ExpertBridgeError, ItemResult
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


@dataclass(frozen=True)
class ToolContext:
    """What a tool reads from the agent's run context (``runtime.context``): the image of this question.

    The planner's own context extends it (``agents.guard.RunContext``); tools read only ``image``.
    """

    image: ImageSource


@dataclass(frozen=True)
class ToolSpec:
    """One tool, declared once: offered by every toolbox that holds ``role``.

    ``method`` names the :class:`ExpertToolbox` method that runs it, ``method(image, **args)``
    returning ``(text for the model, artifact for the trace)``; it is looked up at call time.
    ``description`` is the text the model reads, or a function of the toolbox that writes it
    (the few-shot tool names the classes it knows).

    >>> TOOLS[0].name, TOOLS[0].role, sorted(TOOLS[0].args.model_fields)
    ('detect_objects', 'detector', ['boxes', 'labels', 'min_score'])
    >>> ExpertToolbox(detector=object()).tools[0].tool_call_schema.model_json_schema()["properties"].keys()
    dict_keys(['labels', 'min_score', 'boxes'])
    """

    name: str
    role: str
    args: type[BaseModel] | None  # None: no arguments
    method: str
    description: str | Callable[[ExpertToolbox], str]

    def build(self, toolbox: ExpertToolbox) -> StructuredTool:
        """The LangChain tool for ``toolbox``: the model fills ``args``; the image comes from the run context."""

        def run(runtime: ToolRuntime[Any, Any], **args: Any) -> tuple[str, dict[str, Any]]:
            context = runtime.context
            if context is None:  # invoked outside an agent run and not through call_tool: say so plainly
                raise ToolException(f"{self.name} was called without an image (no run context)")
            return getattr(toolbox, self.method)(context.image, **args)

        def run_without_args(runtime: ToolRuntime[Any, Any]) -> tuple[str, dict[str, Any]]:
            return run(runtime)

        # No args schema when there are no arguments: langchain-core (1.8) drops injected arguments,
        # the runtime among them, for a schema without fields; one inferred from the signature keeps it.
        return StructuredTool.from_function(
            func=run if self.args is not None else run_without_args,
            name=self.name,
            description=self.description if isinstance(self.description, str) else self.description(toolbox),
            args_schema=self.args,
            response_format="content_and_artifact",
            handle_tool_error=_as_error_text,
            handle_validation_error=_as_validation_text,
        )


def _few_shot_description(toolbox: ExpertToolbox) -> str:
    models = toolbox.few_shot_models
    if len(models) == 1:
        (only,) = models.values()
        return f"Classify the image into one of: {', '.join(only.classnames)} (a few-shot model)."
    choices = "; ".join(f"{name} ({', '.join(m.classnames)})" for name, m in models.items())
    return f"Classify the image with few-shot models, one per property: {choices}. Every model answers."


#: Every tool a planner may be offered, in the order the model sees them.
TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "detect_objects",
        "detector",
        DetectArgs,
        "_detect",
        "Detect and count objects in the image (an object detector with COCO classes). Returns each "
        "class with its count, position and size.",
    ),
    ToolSpec("caption_image", "captioner", None, "_caption", "One-sentence caption."),
    ToolSpec(
        "describe_regions",
        "dense_captioner",
        None,
        "_regions",
        "Captions of the main regions of the image, with their positions.",
    ),
    ToolSpec(
        "clip_tags",
        "clip",
        ClipTagsArgs,
        "_clip_tags",
        "Rank candidate labels by how well they match the image (CLIP zero-shot).",
    ),
    ToolSpec("classify_few_shot", "few_shot_models", None, "_classify", _few_shot_description),
    ToolSpec(
        "describe_image",
        "bridge",
        None,
        "_describe",
        "A short description of the image, written by a language model that sees the image features.",
    ),
)

#: The role an expert fills, by the kind of evidence it gives (``expert.evidence_type.kind``).
ROLE_BY_EVIDENCE = {"detections": "detector", "caption": "captioner", "region_captions": "dense_captioner"}


def role_of(expert: Expert) -> str | None:
    """The toolbox role ``expert`` fills, from what it gives: detections, captions, region captions, or
    image features with a text side (CLIP: ``zero_shot_logits``); ``None`` when no tool reads its evidence.

    >>> from types import SimpleNamespace
    >>> role_of(SimpleNamespace(evidence_type=Detections))
    'detector'
    """
    kind = getattr(getattr(expert, "evidence_type", None), "kind", None)
    if kind == "features" and callable(getattr(expert, "zero_shot_logits", None)):
        return "clip"
    return ROLE_BY_EVIDENCE.get(kind)


@dataclass
class ExpertToolbox:
    """The experts a planner may call; ``tools`` are the LangChain tools for the roles it holds."""

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

    @classmethod
    def from_experts(cls, experts: Iterable[Expert], **kwargs: Any) -> ExpertToolbox:
        """A toolbox with each expert in the role its evidence fills (:func:`role_of`); ``kwargs`` set the rest
        (few-shot models, a bridge). An expert no tool reads, or two for one role, is a :class:`ConfigError`."""
        roles: dict[str, Expert] = {}
        for expert in experts:
            role = role_of(expert)
            kind = getattr(getattr(expert, "evidence_type", None), "kind", "unknown")
            if role is None:
                readable = ", ".join([*ROLE_BY_EVIDENCE, "features with a text side (clip)"])
                raise ConfigError(
                    f"expert {expert.name!r} gives {kind} evidence, which no planner tool reads; tools read: {readable}"
                )
            if role in roles:
                raise ConfigError(f"experts {roles[role].name!r} and {expert.name!r} are both a {role}: give one")
            roles[role] = expert
        return cls(**roles, **kwargs)

    @property
    def tools(self) -> list[BaseTool]:
        """One tool per role this toolbox holds, in :data:`TOOLS` order; the image comes with each call."""
        return [spec.build(self) for spec in TOOLS if self.holds(spec.role)]

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in TOOLS if self.holds(spec.role)]

    def holds(self, role: str) -> bool:
        """Is ``role`` (an attribute: ``detector``, ``few_shot_models``, ``bridge``, ...) filled?"""
        held = getattr(self, role, None)
        return bool(held) if isinstance(held, Mapping) else held is not None

    @property
    def few_shot_models(self) -> dict[str, FewShotModel]:
        """Every few-shot model by name (``classifier`` alone is ``"default"``)."""
        models = dict(self.classifiers)
        if self.classifier is not None:
            models.setdefault("default", self.classifier)
        return models

    @property
    def bridge(self) -> tuple[Any, Expert] | None:
        """The learnable bridge and its feature expert, when both are given."""
        if self.describer is None or self.describer_expert is None:
            return None
        return self.describer, self.describer_expert

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

    def _caption(self, image: ImageSource):
        return self._single(self.captioner, image)

    def _regions(self, image: ImageSource):
        return self._single(self.dense_captioner, image)

    def _detect(
        self, image: ImageSource, labels: list[str] | None = None, min_score: float = 0.25, boxes: bool = False
    ):
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
        describer, expert = self.bridge
        evidence, store = self._evidence(expert, image)
        text = describer.generate(torch.as_tensor(evidence.vector)[None], [self.describe_prompt])[0].strip()
        caption = Caption(text)
        return render(caption, max_tokens=self.text_budget), {"evidence": caption.to_dict(), "store": store}

    def _classify(self, image: ImageSource):
        """One few-shot model's answer (named unless it is the lone ``classifier``), or every model's."""
        models = self.few_shot_models
        if len(models) == 1:
            ((name, only),) = models.items()
            return self._few_shot(image, only, None if name == "default" else name)
        return self._few_shots(image, models)

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


def call_tool(
    tool: BaseTool, image: ImageSource, args: Mapping[str, Any] | None = None, call_id: str | None = None
) -> ToolMessage:
    """Run ``tool`` on ``image`` outside an agent graph (the planner's own first look, the rule path, tests):
    the :class:`ToolContext` an agent run would inject, given by hand.

    A tool that takes no runtime (a plain ``@tool`` function) ignores it.
    """
    call_id = call_id or f"direct-{tool.name}"
    runtime = ToolRuntime(
        state={}, context=ToolContext(image), config={}, stream_writer=lambda _: None, tool_call_id=call_id, store=None
    )
    call = {"type": "tool_call", "name": tool.name, "args": {**(args or {}), "runtime": runtime}, "id": call_id}
    return tool.invoke(call)


def _as_error_text(err: ToolException) -> str:
    return f"error: {err}"


def _as_validation_text(err: Exception) -> str:
    errors = getattr(err, "errors", None)
    if callable(errors):  # pydantic: one short line per bad field, without the docs links
        details = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in errors())
        return f"error: invalid arguments: {details}"
    return f"error: invalid arguments: {err}"
