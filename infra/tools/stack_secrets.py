"""CI: select the stack (creating it the first time) and set its declared secrets from the job's secrets.

    python -m infra.tools.stack_secrets --stack prod

Pulumi.yaml declares hubToken, alertSmtpPassword and conversationDatabaseUrl secret and without a default, so the
CLI refuses any stack that lacks one of them, and a stack file from git holds none (their ciphertext belongs to one
stack's key). For each, in this order:

- a `secure:` value already in Pulumi.<stack>.yaml is kept;
- else the job's environment variable (CI_SECRETS: HUB_TOKEN, ALERT_SMTP_PASSWORD, CONVERSATION_DATABASE_URL, set from
  the GitHub environment's secrets) is set with `pulumi config set --secret`, the value on stdin, never on argv;
- else, when the stack needs it (infra.settings.checks.secrets_required: the database URL for a production stack with
  several replicas, the SMTP password when alerts mail through a login, the hub token for a gated model), the job
  fails here, before `pulumi up`, naming the CI secret and why;
- else it is set empty, which means "none".
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from infra.settings import SECRET_KEYS, ConfigError, parse_settings
from infra.settings.checks import secrets_required
from infra.tools.synth import PROJECT, SynthError, read_stack_config

# The CI secret (a GitHub environment secret, passed to the step as an environment variable) for each declared secret.
CI_SECRETS = {
    "hubToken": "HUB_TOKEN",
    "alertSmtpPassword": "ALERT_SMTP_PASSWORD",
    "conversationDatabaseUrl": "CONVERSATION_DATABASE_URL",
}


class MissingSecret(RuntimeError):
    """A secret the stack needs is neither in its stack file nor among the job's secrets."""


def plan(stack: str, project_dir: Path, env: Mapping[str, str]) -> dict[str, str | None]:
    """Per declared secret: 'file' (kept), 'env' (set from the job), '' (set empty); MissingSecret when one is needed."""
    values = read_stack_config(stack, project_dir)
    try:
        required = secrets_required(parse_settings(values, stack=stack))
    except ConfigError as exc:
        raise MissingSecret(f"Pulumi.{stack}.yaml is refused before any secret matters: {exc}") from None
    out: dict[str, str | None] = {}
    missing: list[str] = []
    for name in SECRET_KEYS:
        held = values.get(name)
        if isinstance(held, Mapping) and "secure" in held:
            out[name] = "file"
        elif env.get(CI_SECRETS[name]):
            out[name] = "env"
        elif name in required:
            missing.append(f"{CI_SECRETS[name]} (for {PROJECT}:{name}: {required[name]})")
        else:
            out[name] = ""
    if missing:
        raise MissingSecret(
            f"stack {stack} needs secrets this job does not have: {'; '.join(missing)}. Add them to the GitHub "
            f"environment the job runs in (docs/deploying/eks-first-week.md, CI secrets), or commit them to "
            f"Pulumi.{stack}.yaml with `pulumi config set --secret`"
        )
    return out


def pulumi(*args: str, stdin: str | None = None) -> None:
    done = subprocess.run(["pulumi", *args], input=stdin, text=True, capture_output=True, timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"stack_secrets: pulumi {' '.join(args[:3])} failed: {done.stderr.strip()[:500]}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.tools.stack_secrets", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--stack", required=True)
    ns = parser.parse_args(argv)
    try:
        steps = plan(ns.stack, Path.cwd(), os.environ)
    except (MissingSecret, SynthError) as exc:
        print(f"stack_secrets: {exc}", file=sys.stderr)
        return 1
    pulumi("stack", "select", "--create", ns.stack)
    for name, source in steps.items():
        key = f"{PROJECT}:{name}"
        if source == "env":
            pulumi("config", "set", "--secret", "--stack", ns.stack, key, stdin=os.environ[CI_SECRETS[name]])
        elif source == "":
            pulumi("config", "set", "--secret", "--stack", ns.stack, key, "--", "")
        print(
            f"stack_secrets: {key}: {'kept from the stack file' if source == 'file' else 'from ' + CI_SECRETS[name] if source else 'none'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
