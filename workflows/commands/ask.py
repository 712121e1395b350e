"""``expertbridge ask IMAGE "question"``: chain-of-thought reasoning with experts as tools.

Exit codes: 0 an answer that rests on tool evidence; 1 no answer, or no tool call succeeded
(the reply rests on nothing); 2 the image cannot be read, the model cannot be reached, bad options.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workflows.commands.root import console, server_failure, settings_of
from workflows.rendering import markup, plain


def _server_hint(model: str) -> str | None:
    prefix = model.partition(":")[0].lower()
    if prefix == "ollama":
        name = model.partition(":")[2] or "MODEL"
        return f"start Ollama (`ollama serve`, then `ollama pull {name}`) or choose another --model"
    if prefix == "openai-compatible":
        return "start the server at that base URL (or fix the URL/model name), or choose another --model"
    return None


def ask_cmd(
    ctx: typer.Context,
    image: Annotated[
        str, typer.Argument(help="the image to ask about: a file, or an http(s) URL (EXPERTBRIDGE_ALLOW_URLS=1)")
    ],
    question: Annotated[str, typer.Argument(help="the question")],
    model: Annotated[
        str,
        typer.Option(
            help="chat model: auto (the best offline model installed: Qwen2.5-Coder 1.5B/0.5B through llama.cpp, "
            "else SmolLM2-135M, a small demo model), llamacpp:PRESET|FILE.gguf, local[:PATH|HUB_ID], ollama:NAME, "
            "openai-compatible:URL|NAME, provider:NAME (e.g. openai:gpt-4o-mini)"
        ),
    ] = "auto",
    experts: Annotated[
        str, typer.Option(help="comma-separated tools: yolo, captioner, dense_captioner, clip")
    ] = "yolo",
    trace: Annotated[Path | None, typer.Option(help="write the trace as JSON here")] = None,
    html: Annotated[Path | None, typer.Option(help="write the trace as an HTML page (image with boxes) here")] = None,
    bridge: Annotated[
        Path | None, typer.Option(help="a trained bridge (`bridge train`): adds describe_image, called first")
    ] = None,
    rules: Annotated[bool, typer.Option(help="answer counting/presence questions without the LLM")] = False,
    max_tool_calls: Annotated[int, typer.Option(help="tool calls per question")] = 6,
    time_budget: Annotated[float, typer.Option(help="seconds per question")] = 300.0,
) -> None:
    """Answer a question about an image; the trace shows every model and expert call."""
    from rich.table import Table

    from agents.planner import PlannerLimits
    from agents.trace_html import answer_label, trace_to_html
    from experts import ChatModelError, ConfigError, ExpertBridgeError
    from workflows.reasoning import Reasoner

    try:
        reasoner = Reasoner(
            model=model,
            experts=[e.strip() for e in experts.split(",") if e.strip()],
            settings=settings_of(ctx),
            limits=PlannerLimits(max_tool_calls=max_tool_calls, time_budget_s=time_budget),
            rules=rules,
            bridge=bridge,
        )
        result = reasoner.ask(image, question)
    except ChatModelError as err:  # the planner says which model failed and why; add what to try for this provider
        hint = _server_hint(model)
        raise ChatModelError(f"{err} ({hint})" if hint else str(err)) from err
    except ExpertBridgeError:
        raise  # one line, exit 2, from the CLI root
    except Exception as err:  # a model server that is down or refuses us: say which, and what to try
        line = server_failure(err, what=f"the chat model {model}", hint=_server_hint(model))
        if line is None:
            raise
        raise ConfigError(line) from err
    steps = Table("#", "step", "detail", "s")
    for i, step in enumerate(result.trace.steps, 1):
        if step.kind == "tool":
            detail = f"{step.tool}({step.arguments}) → {(step.output or '')[:120]}"
        elif step.kind == "model":
            calls = ", ".join(c["name"] for c in step.tool_calls)
            detail = f"calls {calls}" if calls else (step.content or "")[:120]
        else:
            detail = step.content or ""
        steps.add_row(str(i), markup(step.kind), markup(detail), f"{step.seconds:.2f}")
    console.print(steps)
    if trace:
        trace.parent.mkdir(parents=True, exist_ok=True)
        trace.write_text(result.trace.to_json())
    if html:
        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(trace_to_html(result.trace, image))
    if result.rationale:
        console.print(f"[dim]{markup(result.rationale)}[/dim]")
    console.print(f"{markup(answer_label(result.trace))}:", soft_wrap=True)
    if result.trace.model_note:
        console.print(f"[yellow]note:[/yellow] {markup(result.trace.model_note)}")
    typer.echo(plain(result.answer or "(no answer)"))
    if result.answer is None or not result.evidence_used:
        why = result.trace.stopped_by or "no tool call succeeded, so the reply rests on no evidence"
        console.print(f"[yellow]not answered from evidence:[/yellow] {markup(why)}")
        raise typer.Exit(1)
