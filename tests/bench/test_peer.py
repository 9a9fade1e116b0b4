"""bench/peer.py, bench/quality.py and bench/llama_build.py import and wire up without a server or a build."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch

from bench import llama_build, peer, prompts, quality
from bench.bandwidth import matvec_bandwidth_gb_s


def test_both_sides_get_greedy_ignore_eos_requests_and_llama_has_its_prompt_cache_off() -> None:
    messages = prompts.conversation(3)
    claw = peer.clawbot_side("http://127.0.0.1:1").body(messages, 48, stream=True)
    llama = peer.llama_side("http://127.0.0.1:2").body(messages, 48, stream=True)
    for body in (claw, llama):
        assert (body["max_tokens"], body["temperature"], body["ignore_eos"], body["messages"]) == (
            48,
            0,
            True,
            messages,
        )
        assert body["stream_options"] == {"include_usage": True}
    assert llama["cache_prompt"] is False and "cache_prompt" not in claw
    # The prefix scenario turns llama's cache on for its reference figure.
    assert peer.llama_side("http://x").body(messages, 8, stream=False, cache_prompt=True)["cache_prompt"] is True


def test_scenarios_option_takes_a_subset_and_names_the_allowed_ones() -> None:
    assert peer.parse_args(["--scenarios", "one,prefix"]).scenarios == ["one", "prefix"]
    with pytest.raises(SystemExit):
        peer.parse_args(["--scenarios", "one,warp"])
    with pytest.raises(SystemExit):
        peer.parse_args(["--rounds", "0"])


def test_throughput_scenarios_run_in_rounds_that_alternate_the_first_side(monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    speeds = iter([10.0, 5.0, 30.0, 6.0, 20.0, 4.0, 100.0, 50.0, 90.0, 40.0, 80.0, 45.0, 7.0, 8.0])

    async def measured(client: object, side: peer.Side, args: object, ctx: object) -> dict[str, float]:
        order.append(side.name)
        return {"tok_s": next(speeds)}

    async def warm_up(*_: object) -> int:
        return 4

    monkeypatch.setattr(peer, "post", warm_up)
    monkeypatch.setattr(peer, "RUNNERS", {"one": measured, "batch": measured, "stream": measured})
    args = peer.parse_args(["--scenarios", "one,batch,stream", "--rounds", "3"])
    results: dict[str, dict[str, Any]] = {"clawbot": {}, "llama": {}}
    sides = [peer.clawbot_side("http://127.0.0.1:1"), peer.llama_side("http://127.0.0.1:2")]
    asyncio.run(peer.run_scenarios(sides, args, {}, results))
    # Three rounds of each throughput scenario and one of the rest; every turn swaps which side goes first.
    assert order[::2] == ["clawbot", "llama", "clawbot", "llama", "clawbot", "llama", "clawbot"]
    claw, llama = results["clawbot"], results["llama"]
    assert [r["tok_s"] for r in claw["one_at_a_time_rounds"]] == [10.0, 6.0, 20.0]
    assert [r["tok_s"] for r in llama["one_at_a_time_rounds"]] == [5.0, 30.0, 4.0]
    assert [r["tok_s"] for r in claw["concurrent_rounds"]] == [50.0, 90.0, 45.0]
    assert [r["tok_s"] for r in llama["concurrent_rounds"]] == [100.0, 40.0, 80.0]
    # Each side's figure is its median round; the rest ran once and keep no rounds.
    assert (claw["one_at_a_time"], llama["one_at_a_time"]) == ({"tok_s": 10.0}, {"tok_s": 5.0})
    assert (claw["concurrent"], llama["concurrent"]) == ({"tok_s": 50.0}, {"tok_s": 80.0})
    assert "streaming_rounds" not in claw and (claw["streaming"], llama["streaming"]) == (
        {"tok_s": 7.0},
        {"tok_s": 8.0},
    )


def test_conversations_share_the_system_prompt_and_earlier_turns() -> None:
    a, b = prompts.conversation(0), prompts.conversation(1)
    assert a[:-1] == b[:-1] and a[-1] != b[-1]
    assert [m["role"] for m in a] == ["system", "user", "assistant", "user", "assistant", "user"]


def test_agent_prompt_reaches_the_requested_length_and_the_nonce_breaks_the_shared_prefix() -> None:
    words = lambda text: len(text.split())  # noqa: E731 - a stand-in tokenizer: one token per word
    system = prompts.agent_system_prompt(words, 500)
    assert words(system) >= 500
    cold = prompts.agent_request(system, "Q", nonce="abc")
    warm = prompts.agent_request(system, "Q")
    assert warm[0]["content"] == system and not cold[0]["content"].startswith(system[:20])


def test_bytes_per_token_of_the_embedded_gguf_is_its_tensor_data() -> None:
    from app.inference.loader import embedded_gguf_path

    gguf = embedded_gguf_path()
    tensor_bytes = peer.gguf_tensor_bytes(gguf)
    assert 0.9 * gguf.stat().st_size < tensor_bytes < gguf.stat().st_size  # the rest is metadata and the vocabulary


def test_parameter_bytes_counts_what_a_token_reads_as_stored() -> None:
    from app.inference.int8_weights import quantize_linears
    from tests.app.inference.toy import make_tiny

    model = make_tiny()  # its output head is not tied to the input embedding
    embedding = model.get_input_embeddings().weight.numel()
    weights = sum(p.numel() for p in model.parameters()) - embedding

    def rotary() -> int:
        return sum(b.numel() * b.element_size() for b in model.buffers())

    assert peer.parameter_bytes(model) == 4 * weights + rotary()  # the embedding: one row a token, not the table
    model.to(torch.bfloat16)
    assert peer.parameter_bytes(model) == 2 * weights + rotary()
    quantize_linears(model, torch.bfloat16)  # int8 weights are buffers: still counted
    assert weights < peer.parameter_bytes(model) < 1.2 * weights


def test_bandwidth_probe_returns_a_rate() -> None:
    assert matvec_bandwidth_gb_s(rows=256, cols=256, repeats=2) > 0


def test_llama_build_reuses_the_cached_binary(tmp_path: Path) -> None:
    binary = llama_build.server_path("1.2.3", tmp_path)
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    (tmp_path / "1.2.3" / "build-seconds").write_text("600\n")
    assert llama_build.ensure_llama_server("1.2.3", tmp_path) == binary  # found: no pip build started
    assert llama_build.build_seconds("1.2.3", tmp_path) == 600.0
    assert llama_build.build_seconds("9.9.9", tmp_path) is None


def test_quality_modes_always_include_the_fp32_reference() -> None:
    modes = quality.supported_modes()
    assert modes[0] == "fp32" and set(modes) <= set(quality.MODES)
    assert len(quality.PROMPTS) == 24 and quality.BATCH <= len(quality.PROMPTS)


def test_unpacked_wheel_gets_its_library_symlinks_back(tmp_path: Path) -> None:
    (tmp_path / "libggml.so.0.26.0").write_bytes(b"\x7fELF")
    (tmp_path / "_symlinks.json").write_text('{"libggml.so.0": "libggml.so.0.26.0", "libggml.so": "libggml.so.0"}')
    llama_build._restore_symlinks(tmp_path)
    assert (tmp_path / "libggml.so").read_bytes() == b"\x7fELF"  # the soname chain resolves to the real file


def test_a_request_dropped_by_a_closing_keep_alive_connection_is_sent_once_more() -> None:
    import asyncio

    import httpx

    calls: list[int] = []

    async def flaky() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return 7

    async def broken() -> int:
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    assert asyncio.run(peer.once_more_if_dropped(flaky)) == 7 and len(calls) == 2
    with pytest.raises(httpx.RemoteProtocolError):
        asyncio.run(peer.once_more_if_dropped(broken))  # a server that keeps dropping is an error, not retried forever


def _sse_client(events: list[str]):  # type: ignore[no-untyped-def]
    import httpx

    body = "".join(f"data: {e}\n\n" for e in events).encode()
    return httpx.AsyncClient(transport=httpx.MockTransport(lambda request: httpx.Response(200, content=body)))


def test_stream_reader_takes_tokens_and_cached_tokens_from_the_usage_chunk() -> None:
    import asyncio

    events = [
        '{"choices": [{"delta": {"role": "assistant"}}]}',
        '{"choices": [{"delta": {"content": "Hi"}}]}',
        '{"choices": [], "usage": {"completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 2048}}}',
        "[DONE]",
    ]

    async def go() -> peer.Answer:
        async with _sse_client(events) as client:
            return await peer.ask(client, peer.clawbot_side("http://test"), prompts.conversation(0), 5)

    answer = asyncio.run(go())
    assert (answer.completion_tokens, answer.cached_tokens) == (5, 2048) and answer.ttft_s <= answer.seconds


def test_an_error_event_after_a_200_status_counts_as_an_error() -> None:
    import argparse
    import asyncio

    events = ['{"error": {"type": "timeout", "message": "generation took longer than 120s", "code": "timeout"}}']

    async def go() -> dict:  # type: ignore[type-arg]
        async with _sse_client(events) as client:
            args = argparse.Namespace(conversations=3, conversation_tokens=4)
            return await peer.conversations(client, peer.clawbot_side("http://test"), args, {})

    result = asyncio.run(go())
    assert result["errors"] == 3 and "stream error" in result["first_errors"][0]
