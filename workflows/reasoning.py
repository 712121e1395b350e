"""Chain-of-thought visual reasoning from Python: ``reason(image, question)``.

    from workflows.reasoning import Reasoner
    reasoner = Reasoner(model="local", experts=("yolo",))     # models load once, on first use
    result = reasoner.ask("bus.jpg", "How many people are in the image?")
    print(result.answer, result.rationale)
    Path("trace.html").write_text(trace_to_html(result.trace, "bus.jpg"))

The experts are built from :class:`~workflows.settings.Settings` and run through the
feature store (a repeated question about the same image makes no forward pass). The chat
model is any spec :func:`agents.chat.create_chat_model` understands, or a
LangChain chat model; the default, ``"auto"``, is the best offline model installed
(Qwen2.5-Coder-1.5B through llama.cpp when its PyPI parts are there).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel

from agents.chat import best_local_model, create_chat_model
from agents.planner import Planner, PlannerLimits, ReasoningResult
from agents.tools import ExpertToolbox
from cache.store import DirectoryStore, FeatureStore
from experts import ConfigError, Expert, create_expert
from experts.file_hashes import FileHashes
from experts.images import ImageSource, load_image
from workflows.settings import Settings
from workflows.store_runner import StoredExpert


class Reasoner:
    """A planner wired to experts from the settings, the feature store, and a chat model."""

    def __init__(
        self,
        *,
        model: str | BaseChatModel = "auto",
        experts: Sequence[str] | Mapping[str, Expert] = ("yolo",),
        settings: Settings | None = None,
        store: FeatureStore | None | str = "default",
        classifier: Any | None = None,
        bridge: str | Path | None = None,
        limits: PlannerLimits = PlannerLimits(),
        rules: bool = False,
        model_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.store = DirectoryStore(self.settings.store_dir) if store == "default" else store
        #: file hashes of one question (the tools share them: the image is read once per question)
        self.hashes = FileHashes()
        built = dict(experts) if isinstance(experts, Mapping) else {n: self._expert(n) for n in experts}
        extras: dict[str, Any] = {"classifier": classifier}
        if bridge is not None:  # a trained learnable bridge becomes the describe_image tool
            from workflows.bridging import BridgeJob

            job = BridgeJob.load(bridge)
            extras.update(describer=job.model, describer_expert=self._stored(job.expert), describe_prompt=job.prompt)
        # Each expert fills the role its evidence fits (detections, captions, ...): its tool follows from that.
        self.toolbox = ExpertToolbox.from_experts([self._stored(e) for e in built.values()], **extras)
        spec, kwargs = self._model_spec(model, model_kwargs)
        self.model = create_chat_model(spec, **kwargs)
        # A trained bridge is why the user is here: the first look at the image goes through it.
        first_tool = "describe_image" if bridge is not None else None
        self.planner = Planner(self.model, self.toolbox, limits=limits, rules=rules, first_tool=first_tool)

    def _model_spec(
        self, model: str | BaseChatModel, model_kwargs: Mapping[str, Any] | None
    ) -> tuple[str | BaseChatModel, dict[str, Any]]:
        """``"auto"`` → the best model installed; llama.cpp models get threads and cache dir from the settings."""
        kwargs = dict(model_kwargs or {})
        if isinstance(model, str) and model.strip().lower() == "auto":
            model = best_local_model()
        if isinstance(model, str) and model.strip().lower().startswith("llamacpp:"):
            kwargs.setdefault("cache_dir", str(self.settings.weights_dir))
            if self.settings.chat_threads is not None:
                kwargs.setdefault("n_threads", self.settings.chat_threads)
        return model, kwargs

    def _expert(self, name: str) -> Expert:
        return create_expert(name, **self.settings.expert_kwargs(name))

    def _stored(self, expert: Expert) -> StoredExpert:
        """``expert`` answering from this reasoner's store (a repeated question makes no forward pass)."""
        return StoredExpert(expert, self.store, hashes=self.hashes)

    def ask(self, image: ImageSource, question: str) -> ReasoningResult:
        """Answer one question about one image, with the trace of every model and tool call.

        An image that cannot be read fails here (:class:`ConfigError` when missing, else
        :class:`~experts.errors.ImageError`), before any model time: tools that cannot see it
        would only have the model guess.
        """
        self.hashes.clear()  # remembered hashes last one question: a file edited since is hashed again
        self.check_image(image)
        return self.planner.run(image, question)

    def check_image(self, image: ImageSource) -> None:
        """Raise if ``image`` cannot be read with these settings (a URL is fetched later, by the tools, once).

        The file is hashed as it is read, so the tools of this question find its hash remembered
        and a warm store answers them without reading the file again.
        """
        is_url = isinstance(image, str) and "://" in image
        if isinstance(image, (str, Path)) and not is_url and not Path(image).exists():
            raise ConfigError(f"image {image} does not exist")
        if is_url and self.settings.allow_urls:
            return
        limits = {"max_pixels": self.settings.max_pixels, "allow_urls": self.settings.allow_urls}
        load_image(self.hashes.hash(image, **limits).input, **limits)


def reason(image: ImageSource, question: str, **kwargs: Any) -> ReasoningResult:
    """One question, one image: builds a :class:`Reasoner` (keyword arguments go to it) and asks."""
    return Reasoner(**kwargs).ask(image, question)


@dataclass(frozen=True)
class _ReasonerConfig:
    """A worker's reasoner configuration: equal (and hashed) by ``key``, its canonical JSON."""

    key: str
    settings: Settings = field(compare=False, hash=False)
    kwargs: Mapping[str, Any] = field(compare=False, hash=False)


@functools.lru_cache(maxsize=2)
def _worker_reasoner(config: _ReasonerConfig) -> Reasoner:
    # Two at most: each holds a chat model (up to GBs); a worker fed a third configuration
    # reloads rather than keeping every model it has ever seen.
    return Reasoner(settings=config.settings, **config.kwargs)


def reason_for_batch(paths: Sequence[str], question: str, settings: Settings, **kwargs: Any) -> list[dict[str, Any]]:
    """The batch job's reasoning task: one JSON-safe result per image; a failing image fails alone.

    A worker process keeps a :class:`Reasoner` per configuration (the last two), so the chat
    model and the experts load once per process, not once per chunk.
    """
    key = json.dumps([settings.model_dump(mode="json"), kwargs], sort_keys=True, default=str)
    reasoner = _worker_reasoner(_ReasonerConfig(key, settings, kwargs))
    out = []
    for path in paths:
        try:
            out.append({"source": str(path), **reasoner.ask(path, question).to_dict()})
        except Exception as err:  # noqa: BLE001 - one image's failure is its own result
            failed = {"source": str(path), "error": f"{type(err).__name__}: {err}"}
            if isinstance(getattr(err, "reason", None), str):  # an ImageError: its intake reason (missing, ...)
                failed["reason"] = err.reason
            out.append(failed)
    return out
