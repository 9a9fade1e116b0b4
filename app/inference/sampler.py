"""Token sampling on the logits of one step: repetition penalty and grammar masks where a row asks for them, then
greedy rows in one argmax and sampled rows with temperature and top-p.

A failure in one row's own work (its grammar, its sampling) is that row's alone: it is reported in
`Sampled.failures` and every other row still gets its token. The arithmetic cannot overflow for any parameter
`SamplingParams.validate` accepts; a row whose logits are unusable anyway (no finite logit left after its grammar's
mask) fails with a message that says so rather than sampling garbage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from app.inference.request_state import RequestState


@dataclass
class Sampled:
    """One step's choices: a token per row (meaningless for a failed row) and what failed in which row."""

    tokens: list[int]
    failures: dict[int, Exception] = field(default_factory=dict)  # row index -> the error of that row's own step


def sample(logits: torch.Tensor, rows: list[RequestState], default_generator: torch.Generator) -> Sampled:
    """One token per row of `logits` ([rows, vocab]); a row's own seeded generator wins over the shared one.

    Rows without a penalty or a constraint cost nothing extra: the batched argmax stays one call.
    """
    logits = logits.float()
    failures: dict[int, Exception] = {}
    _penalize_repeats(logits, rows, failures)
    for i, row in enumerate(rows):
        constraint = row.params.constraint
        if constraint is not None and i not in failures:
            try:
                constraint.mask(logits[i])
            except Exception as exc:
                failures[i] = StageError("grammar mask", exc)
    chosen = logits.argmax(dim=-1)
    for i, row in enumerate(rows):
        if i in failures or (row.params.constraint is None and row.params.greedy):
            continue  # an unconstrained greedy row has its argmax already, at no extra cost
        try:
            chosen[i] = _draw(logits[i], row, default_generator)
        except Exception as exc:
            failures[i] = StageError("sampling", exc)
    tokens: list[int] = chosen.tolist()
    for i, (row, token) in enumerate(zip(rows, tokens)):
        constraint = row.params.constraint
        if constraint is not None and i not in failures:
            try:
                constraint.advance(token)
            except Exception as exc:
                failures[i] = StageError("grammar advance", exc)
    return Sampled(tokens, failures)


def _draw(row_logits: torch.Tensor, row: RequestState, default_generator: torch.Generator) -> int:
    """The token a row takes from its masked logits: argmax when greedy, else temperature and top-p sampling."""
    best = int(row_logits.argmax())
    if not torch.isfinite(row_logits[best]):
        raise ValueError("no token is allowed here (every logit is -inf after the grammar's mask)")
    p = row.params
    if p.greedy:
        return best
    # Subtracting the maximum first keeps every exponent <= 0: no temperature in range can overflow it.
    probs = torch.softmax((row_logits - row_logits[best]) / p.temperature, dim=-1)
    if p.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the top token always stays).
        drop = sorted_probs.cumsum(0) - sorted_probs > p.top_p
        sorted_probs[drop] = 0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=row.generator or default_generator)[0])


class StageError(Exception):
    """What failed in one row's step, and where; the message holds the exception's type and text, never the prompt."""

    def __init__(self, stage: str, cause: Exception) -> None:
        super().__init__(f"{stage} failed ({type(cause).__name__}: {str(cause)[:200]})")
        self.stage = stage
        self.__cause__ = cause


def _penalize_repeats(logits: torch.Tensor, rows: list[RequestState], failures: dict[int, Exception]) -> None:
    """Repetition penalty (transformers' formula: a repeated token's logit is divided if positive, multiplied if
    negative) for the rows that set one, on the logits of their own output tokens only.

    Only the tokens generated so far count, as with OpenAI's penalties: counting the prompt too would penalize the
    words an answer must repeat from a long system prompt or question. One gather and one scatter over those few
    tokens for all the rows together, rather than a pass over the vocabulary or a call per row; a row's ids are
    padded with its own first token, and a token listed twice gets the same value twice. Should the batched call
    fail, each row is penalized alone so that the failure lands on the row that caused it.
    """
    penalized = [(i, row) for i, row in enumerate(rows) if row.params.repetition_penalty != 1.0 and row.generated]
    if not penalized:
        return
    try:
        _penalize(logits, penalized)
    except Exception:
        for i, row in penalized:
            try:
                _penalize(logits, [(i, row)])
            except Exception as exc:
                failures[i] = StageError("repetition penalty", exc)


def _penalize(logits: torch.Tensor, penalized: list[tuple[int, RequestState]]) -> None:
    width = max(len(row.generated) for _, row in penalized)
    ids = torch.tensor(
        [row.generated + row.generated[:1] * (width - len(row.generated)) for _, row in penalized],
        dtype=torch.long,
        device=logits.device,
    )
    which = torch.tensor([[i] for i, _ in penalized], dtype=torch.long, device=logits.device).expand_as(ids)
    penalty = torch.tensor(
        [[row.params.repetition_penalty] for _, row in penalized], dtype=logits.dtype, device=logits.device
    )
    # Only the seen tokens' logits are read and written: copying whole vocabulary rows cost more than the rest.
    seen = logits[which, ids]
    logits[which, ids] = torch.where(seen > 0, seen / penalty, seen * penalty)
