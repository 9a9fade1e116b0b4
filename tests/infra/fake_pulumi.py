"""A stand-in for the `pulumi` CLI, so the documented runbooks run against the real program under mocks.

    FAKE_PULUMI_STATE=<dir> python -m tests.infra.fake_pulumi config set [--path] image <ref>

The state directory holds `stack` (the stack's name), `config.json` (what `pulumi config set` changed on top of
Pulumi.<stack>.yaml), `outputs.json` (the last update's plain outputs) and `manifests/` (the last update's
objects, as `python -m infra.synth` writes them). `up` evaluates __main__.py with infra.synth, feeding it the last
outputs as the stack reference to itself would. Flags the runbooks pass for the real CLI (`--yes`, `--stack`,
`--policy-pack`, ...) are accepted; the stack must be the state's.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from infra.tools.synth import PROJECT, synthesize, write

VALUE_FLAGS = {"-s", "--stack", "--policy-pack", "--policy-pack-config", "--message", "-m"}


class Usage(Exception):
    pass


def _state() -> Path:
    return Path(os.environ["FAKE_PULUMI_STATE"])


def _load(name: str) -> Any:
    path = _state() / name
    return json.loads(path.read_text()) if path.exists() else {}


def _save(name: str, value: Any) -> None:
    (_state() / name).write_text(json.dumps(value, indent=2))


def _split(argv: list[str]) -> tuple[list[str], dict[str, str], set[str]]:
    words, options, flags = [], {}, set()
    it = iter(argv)
    for arg in it:
        if arg in VALUE_FLAGS:
            options[arg] = next(it)
        elif arg.startswith("-"):
            flags.add(arg.split("=", 1)[0])
        else:
            words.append(arg)
    stack = options.get("-s") or options.get("--stack")
    if stack and stack != (_state() / "stack").read_text().strip():
        raise Usage(f"no stack {stack!r} here")
    return words, options, flags


def _key(key: str) -> str:
    return key.removeprefix(f"{PROJECT}:")


def _set_path(config: dict[str, Any], path: str, raw: str) -> None:
    # As the CLI does with --path: "true"/"false" become booleans and integers numbers.
    value: Any = raw == "true" if raw in ("true", "false") else int(raw) if raw.lstrip("-").isdigit() else raw
    *parents, leaf = path.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def main(argv: list[str]) -> int:
    words, _, flags = _split(argv)
    config = _load("config.json")
    match words:
        case ["config", "set", key, value]:
            if "--path" in flags:
                _set_path(config, _key(key), value)
            else:
                config[_key(key)] = value
            _save("config.json", config)
        case ["config", "rm", key]:
            config.pop(_key(key), None)
            _save("config.json", config)
        case ["config", "get", key]:
            print(config[_key(key)] if isinstance(config.get(_key(key)), str) else json.dumps(config[_key(key)]))
        case ["stack", "output", name]:
            outputs = _load("outputs.json")
            if name not in outputs:
                print(f"error: current stack does not have output property '{name}'", file=sys.stderr)
                return 255
            print(json.dumps(outputs[name]) if "--json" in flags else outputs[name])
        case ["up"]:
            if "--yes" not in flags and "-y" not in flags:
                raise Usage("up needs --yes here: nothing can answer the prompt")
            stack = (_state() / "stack").read_text().strip()
            synthesis = synthesize(stack, overrides=config, stack_outputs=_load("outputs.json"))
            write(synthesis, _state() / "manifests")
            _save("outputs.json", {k: v for k, v in synthesis.outputs.items() if k not in synthesis.secret_outputs})
            print(f"Update succeeded: {len(synthesis.objects)} objects")
        case _:
            raise Usage(f"unsupported: pulumi {' '.join(argv)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Usage as exc:
        print(f"fake pulumi: {exc}", file=sys.stderr)
        sys.exit(2)
