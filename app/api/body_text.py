"""Every string in a JSON request body, keys included, checked once where the body is decoded, before any route logic.

JSON can carry text that is not Unicode: a lone surrogate escape like `\\ud800`, or a pair in the wrong order. Python
decodes it into a `str` that then fails wherever it is encoded (the tokenizer, the conversation store, a response),
as a 500, sometimes after the generation ran. `check_text` refuses such a body with a 400 `invalid_unicode` that
names the JSON path of the first bad string (`tools[0].function.description`).

The common case costs one C-speed pass (encode the whole body); only a body that fails is walked to find the path.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

from fastapi import Request

from app.api.errors import ApiError

# Bodies above this size are checked in a worker thread rather than on the event loop.
OFF_LOOP_BYTES = 256 * 1024


def encodable(text: str, what: str) -> str:
    """`text` unchanged, or ValueError when it cannot be UTF-8 (a lone surrogate sent as a JSON escape like \\ud800).

    The message names the position and the code point, never the character itself (it cannot be encoded either).
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{what} is not valid Unicode text: it holds a lone surrogate (\\u{ord(text[exc.start]):04x}) at character "
            f"{exc.start}; send UTF-8 text"
        ) from None
    return text


def _strings(body: Any) -> Iterator[tuple[str, str, bool]]:
    """(path, text, is_key) for every string in a decoded JSON value, keys before their values, in document order."""
    stack: list[tuple[str, Any]] = [("", body)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            yield path, value, False
        elif isinstance(value, dict):
            children = []
            for key, item in value.items():
                yield path, key, True
                children.append((f"{path}.{key}" if path else key, item))
            stack.extend(reversed(children))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in reversed(list(enumerate(value))))


def invalid_text(body: Any) -> str | None:
    """Why the first string of `body` that is not valid Unicode is refused, naming its path; None if all are valid."""
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
        return None
    except UnicodeEncodeError:
        pass
    for path, text, is_key in _strings(body):
        try:
            encodable(text, f"a key of {path or 'the body'}" if is_key else path or "the body")
        except ValueError as exc:
            return str(exc)
    return None  # unreachable: the encode above found one


def check_text(body: Any) -> None:
    reason = invalid_text(body)
    if reason is not None:
        raise ApiError(400, "invalid_unicode", reason)


async def check_request_text(request: Request) -> None:
    """Check the JSON body FastAPI has decoded (Starlette caches it on the request), before the route's model sees it."""
    raw = await request.body()
    if not raw:
        return
    try:
        body = await request.json()
    except ValueError:
        return  # not JSON: FastAPI answers that with its own 400
    if len(raw) > OFF_LOOP_BYTES:
        await asyncio.to_thread(check_text, body)
    else:
        check_text(body)
