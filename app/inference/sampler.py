"""Token sampling on the logits of one step: greedy rows in one argmax, sampled rows with temperature and top-p."""
from __future__ import annotations

import torch

from app.inference.requests import Row


def sample(logits: torch.Tensor, rows: list[Row], default_generator: torch.Generator) -> list[int]:
    """One token per row of `logits` ([rows, vocab]); a row's own seeded generator wins over the shared one."""
    logits = logits.float()
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
    return chosen.tolist()
