"""The sampler's per-row hooks: the repetition penalty and grammar constraints touch only the rows that ask for them."""

from __future__ import annotations

from typing import Any

import torch
from transformers import RepetitionPenaltyLogitsProcessor

from app.inference.request_state import RequestState
from app.inference.requests import SamplingParams
from app.inference.sampler import StageError, _penalize_repeats, sample


def row(prompt: list[int] | None = None, **params: Any) -> RequestState:
    return RequestState(
        handle=None,
        prompt_ids=prompt or [1, 2],
        params=SamplingParams(max_tokens=8, **params),  # type: ignore[arg-type]
        max_new=8,
        submitted_at=0.0,
        deadline=None,
    )


class OnlyToken:
    """A constraint that allows one token and records what it was told."""

    def __init__(self, token: int) -> None:
        self.token, self.masked, self.advanced = token, 0, []

    def mask(self, logits: torch.Tensor) -> None:
        self.masked += 1
        keep = logits[self.token].clone()
        logits.fill_(float("-inf"))
        logits[self.token] = keep

    def advance(self, token_id: int) -> None:
        self.advanced.append(token_id)

    finished = False


GEN = torch.Generator().manual_seed(0)


def test_penalty_matches_transformers_on_the_output_tokens() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 50)
    r = row(repetition_penalty=1.3)
    r.generated = [3, 7, 7, 11]
    expected = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([[3, 7, 11]]), logits[:1].clone())
    ours = logits.clone()
    _penalize_repeats(ours, [r, row()], {})
    assert torch.allclose(ours[0], expected[0])
    assert torch.equal(ours[1], logits[1])  # the row without a penalty is untouched


def test_rows_with_other_penalties_and_lengths_each_get_their_own() -> None:
    torch.manual_seed(2)
    logits = torch.randn(3, 50)
    a, b, plain = row(repetition_penalty=1.3), row(repetition_penalty=0.8), row()
    a.generated, b.generated, plain.generated = [5, 9, 9, 20, 31], [9], [5, 9]
    ours = logits.clone()
    _penalize_repeats(ours, [a, plain, b], {})
    for i, (r, p) in ((0, (a, 1.3)), (2, (b, 0.8))):
        expected = RepetitionPenaltyLogitsProcessor(p)(torch.tensor([r.generated]), logits[i : i + 1].clone())
        assert torch.allclose(ours[i], expected[0])
    assert torch.equal(ours[1], logits[1])


def test_penalty_counts_output_not_prompt() -> None:
    logits = torch.zeros(1, 10)
    logits[0, 3], logits[0, 4] = 2.0, 1.9
    rows = [row(prompt=[3, 3, 3], repetition_penalty=1.1), row(prompt=[3])]
    picks = []
    for _ in range(2):
        picks.append(sample(logits.expand(2, 10).clone(), rows, GEN).tokens)
        for r, token in zip(rows, picks[-1]):
            r.generated.append(token)  # as the engine does once a token is chosen
    # 3 is in the prompt only at first: not penalized; once generated, 2.0 / 1.1 < 1.9. The plain row keeps 3.
    assert picks == [[3, 3], [4, 3]]


def test_constraint_masks_and_advances_its_own_row_only() -> None:
    logits = torch.zeros(3, 10)
    logits[:, 5] = 3.0
    constrained, free, sampled = OnlyToken(8), row(), row(temperature=0.7, seed=1)
    rows = [row(constraint=constrained), free, sampled]
    assert sample(logits, rows, GEN).tokens[:2] == [8, 5]
    assert constrained.masked == 1 and constrained.advanced == [8]
    assert rows[2].params.constraint is None


def test_sampled_rows_also_obey_the_constraint() -> None:
    only = OnlyToken(2)
    picks = [
        sample(torch.randn(1, 10), [row(temperature=1.5, top_p=0.9, constraint=only)], GEN).tokens[0] for _ in range(20)
    ]
    assert set(picks) == {2} and only.advanced == [2] * 20


class Broken(OnlyToken):
    """A grammar that raises where a terminated xgrammar matcher would: asked for a mask after its end."""

    def mask(self, logits: torch.Tensor) -> None:
        raise RuntimeError("GrammarMatcher has terminated after accepting the stop token")


class Forbids(OnlyToken):
    def mask(self, logits: torch.Tensor) -> None:
        logits.fill_(float("-inf"))


def test_extreme_accepted_parameters_cannot_overflow() -> None:
    """The smallest temperature is greedy and the smallest penalty stays finite, on logits as large as models give."""
    logits = torch.tensor([[900.0, 850.0, -900.0, 3.0] * 4] * 4)
    rows = [
        row(temperature=1e-300),
        row(temperature=5e-324, seed=3),
        row(temperature=2.0, repetition_penalty=0.01),
        row(temperature=1e-5, top_p=1e-9, repetition_penalty=0.01),
    ]
    for r in rows[2:]:
        r.generated = [0, 1, 2]
    for _ in range(3):
        out = sample(logits.clone(), rows, GEN)
        assert out.failures == {}
        assert out.tokens[:2] == [0, 0]  # greedy: the argmax


def test_one_rows_failure_is_its_own_and_the_others_get_their_tokens() -> None:
    logits = torch.zeros(4, 10)
    logits[:, 5] = 3.0
    rows = [row(constraint=Broken(1)), row(), row(temperature=0.9, constraint=Forbids(2)), row(constraint=OnlyToken(7))]
    out = sample(logits, rows, GEN)
    assert set(out.failures) == {0, 2}
    assert isinstance(out.failures[0], StageError) and out.failures[0].stage == "grammar mask"
    assert "no token is allowed" in str(out.failures[2]) and out.failures[2].stage == "sampling"
    assert out.tokens[1] == 5 and out.tokens[3] == 7
