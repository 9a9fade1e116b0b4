"""Incremental detokenization and stop handling for one row: UTF-8 safe deltas, EOS, stop strings, the length cap."""

from __future__ import annotations

from typing import Any

from app.inference.request_state import RequestState


def append_token(row: RequestState, token: int, tokenizer: Any, eos_ids: frozenset[int]) -> str:
    """Add `token` to `row`, set its finish_reason if it is done, and return the text it may emit now.

    Decoding follows the vLLM/TGI prefix/read-offset scheme so each step decodes a few tokens, not the
    whole output; text that could still become a stop string is held back.
    """
    p = row.params
    row.generated.append(token)
    if token in eos_ids and not p.ignore_eos:
        row.finish_reason = "stop"
        return ""  # the caller flushes what was held back
    ids = row.generated
    at_length = len(ids) >= row.max_new
    # A grammar that took its end token allows nothing more, not even with ignore_eos (it has no mask to give).
    ended = p.constraint is not None and p.constraint.finished
    prefix = tokenizer.decode(ids[row.prefix_offset : row.read_offset], skip_special_tokens=True)
    current = tokenizer.decode(ids[row.prefix_offset :], skip_special_tokens=True)
    # A trailing U+FFFD means a multi-byte character is still incomplete: wait for the next token,
    # unless this is the last token, since nothing will complete it then.
    if len(current) > len(prefix) and (at_length or ended or not current.endswith("\ufffd")):
        searched_from = max(0, len(row.text) - max((len(s) for s in p.stop), default=0))
        row.text += current[len(prefix) :]
        row.prefix_offset, row.read_offset = row.read_offset, len(ids)
        if p.stop:
            cut = first_stop(row.text, p.stop, searched_from)
            if cut is not None:
                row.text = row.text[:cut]
                row.finish_reason = "stop"
                return ""
    if ended:
        row.finish_reason = "stop"
        return ""
    if at_length:
        row.finish_reason = "length"
        return ""
    safe = len(row.text) - stop_prefix_len(row.text, p.stop)
    delta = row.text[row.emitted : safe]
    row.emitted = max(row.emitted, safe)
    return delta


def first_stop(text: str, stops: tuple[str, ...], start: int) -> int | None:
    hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(hits) if hits else None


def stop_prefix_len(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best
