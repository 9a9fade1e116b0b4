"""The request context: a request that ends without an answer is charged what its generation used."""

from __future__ import annotations

from app.access.context import RequestContext, TokenUsage


def test_a_request_without_an_answer_is_charged_what_its_generation_used_and_the_generation_stops() -> None:
    stopped: list[bool] = []

    def stop() -> TokenUsage:
        stopped.append(True)
        return TokenUsage(prompt=40, completion=3)

    hung_up = RequestContext(request_id="a", stop_generation=stop)
    hung_up.end()
    hung_up.end()  # once only
    assert (hung_up.usage, stopped) == (TokenUsage(prompt=40, completion=3), [True])

    answered = RequestContext(request_id="b", usage=TokenUsage(prompt=40, completion=9), stop_generation=stop)
    answered.end()
    assert answered.usage == TokenUsage(prompt=40, completion=9) and stopped == [True, True]

    never_generated = RequestContext(request_id="c")
    never_generated.end()
    assert never_generated.usage is None
