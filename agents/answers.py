"""Reading the model's final message: the answer, the rationale and the tools it cites.

parse_answer("Reasoning: 4 people.\nAnswer: 4\nEvidence: detect_objects")
# ('4', '4 people.', ['detect_objects'])
"""

from __future__ import annotations

import re

from agents.trace import Trace

_FIELD = re.compile(r"^\s*\**(reasoning|rationale|answer|evidence)\**\s*[:：]\s*(.*)$", re.I)
#: "… so a dog is absent. Answer: yes" on one line: small models often run the fields together.
_INLINE_FIELD = re.compile(r"\s+\**(Answer|Evidence)\**\s*[:：]")


def parse_answer(text: str) -> tuple[str | None, str | None, list[str]]:
    """(answer, rationale, cited tools) from the model's final message.

    The expected format is ``Reasoning: … / Answer: … / Evidence: …``; a reply without an
    ``Answer:`` line is taken whole as the answer (small models often skip the format).

    >>> parse_answer("There are 4 people.")
    ('There are 4 people.', None, [])
    """
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.S)
    text = re.sub(r"</?tool_response>", "", text).strip()  # small models echo the tool-result wrapper
    text = _INLINE_FIELD.sub(lambda m: f"\n{m.group(1)}:", text)
    fields: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        m = _FIELD.match(line)
        if m:
            current = {"rationale": "reasoning"}.get(m.group(1).lower(), m.group(1).lower())
            fields.setdefault(current, []).append(m.group(2).strip())
        elif current is not None and line.strip():
            fields[current].append(line.strip())
    answer = " ".join(fields.get("answer", [])).strip() or None
    rationale = " ".join(fields.get("reasoning", [])).strip() or None
    if answer is None and text:
        answer = text if len(text) <= 500 else text[:500] + "…"
    cited = [c.strip() for c in ",".join(fields.get("evidence", [])).split(",") if c.strip()]
    return answer, rationale, cited


def evidence_used(cited: list[str], trace: Trace) -> list[str]:
    """The cited tools that really answered; if none is cited, every tool that answered (never invented)."""
    answered = [s.tool for s in trace.tool_steps if s.error is None]
    named = [t for t in answered if any(t in c for c in cited)]
    return sorted(set(named or answered))


def text_of(message) -> str:
    """A message's text: its string content, or its content parts joined."""
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
