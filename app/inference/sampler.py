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
    return tokens


def _penalize_repeats(logits: torch.Tensor, rows: list[Row]) -> None:
    """Repetition penalty (transformers' formula: a repeated token's logit is divided if positive, multiplied if
    negative) for the rows that set one, on the logits of their own output tokens only.

    Only the tokens generated so far count, as with OpenAI's penalties: counting the prompt too would penalize the
    words an answer must repeat from a long system prompt or question. One gather and one scatter over those few
    tokens for all the rows together, rather than a pass over the vocabulary or a call per row; a row's ids are
    padded with its own first token, and a token listed twice gets the same value twice.
    """
    penalized = [(i, row) for i, row in enumerate(rows) if row.params.repetition_penalty != 1.0 and row.generated]
    if not penalized:
        return
    width = max(len(row.generated) for _, row in penalized)
    ids = torch.tensor([row.generated + row.generated[:1] * (width - len(row.generated)) for _, row in penalized],
                       dtype=torch.long, device=logits.device)
    which = torch.tensor([i for i, _ in penalized], dtype=torch.long, device=logits.device)
    penalty = torch.tensor([[row.params.repetition_penalty] for _, row in penalized], dtype=logits.dtype,
                           device=logits.device)
    sub = logits.index_select(0, which)
    seen = sub.gather(1, ids)
    sub.scatter_(1, ids, torch.where(seen > 0, seen / penalty, seen * penalty))
    logits.index_copy_(0, which, sub)
