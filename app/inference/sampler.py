"""Token sampling on the logits of one step: repetition penalty and grammar masks where a row asks for them, then
greedy rows in one argmax and sampled rows with temperature and top-p."""
from __future__ import annotations

import torch

from app.inference.requests import Row


def sample(logits: torch.Tensor, rows: list[Row], default_generator: torch.Generator) -> list[int]:
    """One token per row of `logits` ([rows, vocab]); a row's own seeded generator wins over the shared one.

    Rows without a penalty or a constraint cost nothing extra: the batched argmax stays one call.
    """
    logits = logits.float()
    _penalize_repeats(logits, rows)
    for i, row in enumerate(rows):
        if row.params.constraint is not None:
            row.params.constraint.mask(logits[i])
    chosen = logits.argmax(dim=-1)
    for i, row in enumerate(rows):
        p = row.params
        if p.temperature <= 0:
            continue
        probs = torch.softmax(logits[i] / p.temperature, dim=-1)
        if p.top_p < 1:
            sorted_probs, order = probs.sort(descending=True)
            # Keep the smallest prefix whose mass reaches top_p (the top token always stays).
            drop = sorted_probs.cumsum(0) - sorted_probs > p.top_p
            sorted_probs[drop] = 0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        generator = row.generator or default_generator
        chosen[i] = torch.multinomial(probs, 1, generator=generator)[0]
    tokens: list[int] = chosen.tolist()
    for row, token in zip(rows, tokens):
        if row.params.constraint is not None:
            row.params.constraint.advance(token)
        if row.seen is not None:
            row.seen[token] = True
    return tokens


def _penalize_repeats(logits: torch.Tensor, rows: list[Row]) -> None:
    """Repetition penalty (transformers' formula: a seen token's logit is divided if positive, multiplied if negative)
    for the rows that set one, in one batched op over those rows.

    Only the tokens generated so far count, as with OpenAI's penalties: counting the prompt too would penalize the
    words an answer must repeat from a long system prompt or question. Each such row keeps a [vocab] mask of its
    output tokens, updated as they are chosen, so a step costs O(vocab) per row whatever the length.
    """
    picked = [i for i, row in enumerate(rows) if row.params.repetition_penalty != 1.0]
    if not picked:
        return
    for i in picked:
        if rows[i].seen is None:
            rows[i].seen = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    seen = torch.stack([rows[i].seen for i in picked])  # type: ignore[misc]
    penalty = torch.tensor([rows[i].params.repetition_penalty for i in picked], device=logits.device).unsqueeze(1)
    part = logits[picked]
    penalized = torch.where(part > 0, part / penalty, part * penalty)
    logits[picked] = torch.where(seen, penalized, part)
