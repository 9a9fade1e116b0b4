"""A stand-in for the `pulumi` CLI, so the documented runbooks run against the real program under mocks.

    FAKE_PULUMI_STATE=<dir> python -m tests.infra.fake_pulumi config set [--path] image <ref>

The state directory holds `stack` (the stack's name), `config.json` (what `pulumi config set` changed on top of
Pulumi.<stack>.yaml), `outputs.json` (the last update's plain outputs) and `manifests/` (the last update's
objects, as `python -m infra.synth` writes them). `up` evaluates __main__.py with infra.synth, feeding it the last
outputs as the stack reference to itself would. Flags the runbooks pass for the real CLI (`--yes`, `--stack`,
`--policy-pack`, ...) are accepted; the stack must be the state's.

With FAKE_PULUMI_PROJECT=<dir> it acts as the CLI does on a checkout instead: stacks exist once `stack select --create`
made them, `config set|rm` edit <dir>/Pulumi.<stack>.yaml (`--secret` stores a `secure:` value; a value not on the
command line is read from stdin), and `up`/`preview` refuse a stack that lacks a key Pulumi.yaml declares without a
default, or holds a declared secret in plain text, before running the program on that stack file.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from infra.tools.synth import PROJECT, SynthError, synthesize, write

VALUE_FLAGS = {"-s", "--stack", "--policy-pack", "--policy-pack-config", "--message", "-m"}
SECURE_PREFIX = "fake-ciphertext:"


def command_dir(parent: Path) -> Path:
    """parent/bin holding a `pulumi` that runs this module, for a test to put first on PATH."""
    bin_dir = parent / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "pulumi"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m tests.infra.fake_pulumi "$@"\n')
    shim.chmod(0o755)
    return bin_dir


class Usage(Exception):
    pass


def _state() -> Path:
    return Path(os.environ["FAKE_PULUMI_STATE"])


def _load(name: str) -> Any:
    path = _state() / name
    return json.loads(path.read_text()) if path.exists() else {}


def _save(name: str, value: Any) -> None:
    (_state() / name).write_text(json.dumps(value, indent=2))


def _words(argv: list[str]) -> tuple[list[str], dict[str, str], set[str]]:
    """Positional words, flags that take a value, and the other flags; everything after `--` is a word."""
    words: list[str] = []
    options: dict[str, str] = {}
    flags: set[str] = set()
    it = iter(argv)
    for arg in it:
        if arg == "--":
            words += list(it)
        elif arg in VALUE_FLAGS:
            options[arg] = next(it)
        elif arg.startswith("-"):
            flags.add(arg.split("=", 1)[0])
        else:
            words.append(arg)
    return words, options, flags


def _split(argv: list[str]) -> tuple[list[str], dict[str, str], set[str]]:
    words, options, flags = _words(argv)
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
    if os.environ.get("FAKE_PULUMI_PROJECT"):
        return project_main(argv, Path(os.environ["FAKE_PULUMI_PROJECT"]))
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


# -- project mode: the CLI on a checkout ------------------------------------------------------------------------


def _stack_dir(name: str) -> Path:
    return _state() / "stacks" / name


def _current(options: dict[str, str]) -> str:
    name = (
        options.get("-s")
        or options.get("--stack")
        or ((_state() / "current").read_text().strip() if (_state() / "current").exists() else "")
    )
    if not name:
        raise Usage("no stack selected; please use `pulumi stack select`")
    if not (_stack_dir(name) / "created").exists():
        raise Usage(f"no stack named '{name}' found")
    return name


def _stack_file(project: Path, stack: str) -> tuple[Path, dict[str, Any]]:
    import yaml

    path = project / f"Pulumi.{stack}.yaml"
    doc = (yaml.safe_load(path.read_text()) if path.exists() else None) or {}
    doc.setdefault("config", {})
    return path, doc


def _full_key(key: str) -> str:
    return key if ":" in key.split(".")[0] else f"{PROJECT}:{key}"


def project_main(argv: list[str], project: Path) -> int:
    import yaml

    words, options, flags = _words(argv)
    match words:
        case ["stack", "select", name]:
            if "--create" in flags:
                _stack_dir(name).mkdir(parents=True, exist_ok=True)
                (_stack_dir(name) / "created").write_text("")
            _current({"--stack": name})
            (_state() / "current").write_text(name)
        case ["config", "set", key, *value]:
            stack = _current(options)
            raw = value[0] if value else sys.stdin.read()
            path, doc = _stack_file(project, stack)
            full = _full_key(key)
            if "--path" in flags:
                top, _, rest = full.partition(".")
                node = doc["config"].setdefault(top, {})
                *parents, leaf = rest.split(".")
                for part in parents:
                    node = node.setdefault(part, {})
                node[leaf] = (
                    raw == "true" if raw in ("true", "false") else int(raw) if raw.lstrip("-").isdigit() else raw
                )
            else:
                doc["config"][full] = {"secure": SECURE_PREFIX + raw} if "--secret" in flags else raw
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
        case ["config", "rm", key]:
            stack = _current(options)
            path, doc = _stack_file(project, stack)
            doc["config"].pop(_full_key(key), None)
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
        case ["stack", "output", name]:
            stack = _current(options)
            outputs_path = _stack_dir(stack) / "outputs.json"
            outputs = json.loads(outputs_path.read_text()) if outputs_path.exists() else {}
            if name not in outputs:
                print(f"error: current stack does not have output property '{name}'", file=sys.stderr)
                return 255
            print(json.dumps(outputs[name]) if "--json" in flags else outputs[name])
        case [("up" | "preview") as command]:
            stack = _current(options)
            _check_declared_config(project, stack)
            outputs_path = _stack_dir(stack) / "outputs.json"
            previous = json.loads(outputs_path.read_text()) if outputs_path.exists() else {}
            # The program gets the secrets' values, as the CLI decrypts them for it.
            _, doc = _stack_file(project, stack)
            secrets = {
                key.partition(":")[2]: value["secure"].removeprefix(SECURE_PREFIX)
                for key, value in doc["config"].items()
                if key.startswith(f"{PROJECT}:") and isinstance(value, dict) and "secure" in value
            }
            try:
                synthesis = synthesize(stack, project_dir=project, stack_outputs=previous, overrides=secrets)
            except SynthError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 255
            if command == "up":
                write(synthesis, _stack_dir(stack) / "manifests")
                outputs_path.write_text(
                    json.dumps(
                        {k: v for k, v in synthesis.outputs.items() if k not in synthesis.secret_outputs}, indent=2
                    )
                )
            print(f"{'Update' if command == 'up' else 'Preview'} succeeded: {len(synthesis.objects)} objects")
        case _:
            raise Usage(f"unsupported: pulumi {' '.join(argv)}")
    return 0


def _check_declared_config(project: Path, stack: str) -> None:
    """What the CLI checks before the program runs: every key Pulumi.yaml declares without a default is set, and
    every key it declares secret is encrypted."""
    import yaml

    schema = (yaml.safe_load((project / "Pulumi.yaml").read_text()) or {}).get("config") or {}
    _, doc = _stack_file(project, stack)
    held = doc["config"]
    for name, entry in schema.items():
        key = _full_key(name)
        if "default" not in entry and key not in held:
            raise Usage(f"Stack '{stack}' is missing configuration value '{name}'")
        if entry.get("secret") and key in held and not (isinstance(held[key], dict) and "secure" in held[key]):
            raise Usage(f"Stack '{stack}' with configuration key '{name}' must be encrypted as it's secret")


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Usage as exc:
        print(f"fake pulumi: {exc}", file=sys.stderr)
        sys.exit(2)
