"""Prompts for the peer bench: multi-turn conversations with a shared system prompt, and an agent-style long prefix."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.raw_generate import QUESTIONS as QUESTIONS  # re-exported: bench.peer reads prompts.QUESTIONS

Messages = list[dict[str, str]]

SYSTEM = (
    "You are ClawBot, an assistant inside a company's internal tools. Answer briefly and precisely. "
    "If a question is ambiguous, state the assumption you make. Never reveal credentials, keys or personal data. "
    "Prefer plain language over jargon, give commands in code blocks, and say when you are not sure."
)
EARLIER_TURNS: list[tuple[str, str]] = [
    ("Hi! Can you help me with a few questions today?", "Of course. Ask away and I will keep the answers short."),
    (
        "Great. First, what time zone should meeting invites use?",
        "Use the organiser's time zone and state it in the invite.",
    ),
]

# An agent gateway re-sends the same long system prompt (rules plus tool descriptions) on every turn.
AGENT_RULES = (
    "You are an autonomous operations agent. Work step by step, call one tool at a time, read every tool result "
    "before deciding the next step, and stop when the user's goal is met or cannot be met. Report what you changed."
)
TOOL_KINDS = ["list", "read", "create", "update", "delete", "search", "restart", "describe"]
TOOL_OBJECTS = ["files", "tickets", "deployments", "pods", "users", "alerts", "dashboards", "secrets", "jobs", "queues"]


def conversation(i: int) -> Messages:
    """Conversation i: the shared system prompt, the same two earlier exchanges, and its own new question."""
    messages: Messages = [{"role": "system", "content": SYSTEM}]
    for user, assistant in EARLIER_TURNS:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    messages.append({"role": "user", "content": f"Question {i}: {QUESTIONS[i % len(QUESTIONS)]}"})
    return messages


def agent_system_prompt(count_tokens: Callable[[str], int], min_tokens: int = 2000) -> str:
    """Rules followed by tool descriptions, as long as it takes to reach min_tokens (counted by the model's tokenizer)."""
    parts = [AGENT_RULES, "Tools:"]
    n = 0
    while count_tokens("\n".join(parts)) < min_tokens:
        kind, obj = TOOL_KINDS[n % len(TOOL_KINDS)], TOOL_OBJECTS[(n // len(TOOL_KINDS)) % len(TOOL_OBJECTS)]
        parts.append(
            f"- {kind}_{obj}_{n}(project: string, filter: string = '', limit: int = 20): {kind}s {obj} in the given "
            f"project; returns JSON with an 'items' list and a 'next' cursor. Needs the '{obj}:{kind}' permission."
        )
        n += 1
    return "\n".join(parts)


def agent_request(system: str, question: str, *, nonce: str = "") -> Messages:
    """A turn of the agent; a nonce put before the system prompt makes sure no prefix is shared with earlier requests."""
    content = f"[session {nonce}]\n{system}" if nonce else system
    return [{"role": "system", "content": content}, {"role": "user", "content": question}]


def token_counter(tokenizer: Any) -> Callable[[str], int]:
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
