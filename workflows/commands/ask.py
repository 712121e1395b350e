"""``expertbridge ask IMAGE "question"``: chain-of-thought reasoning with experts as tools."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agents.planner import PlannerLimits
from agents.trace_html import trace_to_html
from experts import ChatModelError, ExpertBridgeError
from workflows.reasoning import Reasoner
from workflows.settings import Settings

console = Console(stderr=True)


def ask_cmd(
    image: Annotated[Path, typer.Argument(help="the image to ask about")],
    question: Annotated[str, typer.Argument(help="the question")],
    model: Annotated[
        str,
        typer.Option(
            help="chat model: auto (the best offline model installed), llamacpp:PRESET|FILE.gguf, "
            "local[:path|hub id], ollama:NAME, openai-compatible:URL|NAME, provider:NAME"
        ),
    ] = "auto",
    experts: Annotated[
        str, typer.Option(help="comma-separated tools: yolo, captioner, dense_captioner, clip")
    ] = "yolo",
    trace: Annotated[Path | None, typer.Option(help="write the trace as JSON here")] = None,
    html: Annotated[Path | None, typer.Option(help="write the trace as an HTML page (image with boxes) here")] = None,
    bridge: Annotated[Path | None, typer.Option(help="a trained bridge (`bridge train`): adds describe_image")] = None,
    rules: Annotated[bool, typer.Option(help="answer counting/presence questions without the LLM")] = False,
    max_tool_calls: Annotated[int, typer.Option(help="tool calls per question")] = 6,
    time_budget: Annotated[float, typer.Option(help="seconds per question")] = 300.0,
) -> None:
    """Answer a question about an image; the trace shows every model and expert call."""
    settings = Settings()
    try:
        reasoner = Reasoner(
            model=model,
            experts=[e.strip() for e in experts.split(",") if e.strip()],
            settings=settings,
            limits=PlannerLimits(max_tool_calls=max_tool_calls, time_budget_s=time_budget),
            rules=rules,
            bridge=bridge,
        )
        result = reasoner.ask(image, question)
    except ChatModelError as err:  # the model or its server failed: not a usage error
        console.print(f"[red]error:[/red] {escape(str(err))}", soft_wrap=True)
        raise typer.Exit(1) from err
    except ExpertBridgeError as err:
        console.print(f"[red]error:[/red] {escape(str(err))}", soft_wrap=True)
        raise typer.Exit(2) from err
    steps = Table("#", "step", "detail", "s")
    for i, step in enumerate(result.trace.steps, 1):
        if step.kind == "tool":
            detail = f"{step.tool}({step.arguments}) → {(step.output or '')[:120]}"
        elif step.kind == "model":
            calls = ", ".join(c["name"] for c in step.tool_calls)
            detail = f"calls {calls}" if calls else (step.content or "")[:120]
        else:
            detail = step.content or ""
        steps.add_row(str(i), step.kind, detail, f"{step.seconds:.2f}")
    console.print(steps)
    if trace:
        trace.parent.mkdir(parents=True, exist_ok=True)
        trace.write_text(result.trace.to_json())
    if html:
        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(trace_to_html(result.trace, image))
    if result.rationale:
        console.print(f"[dim]{result.rationale}[/dim]")
    typer.echo(result.answer or "(no answer)")
