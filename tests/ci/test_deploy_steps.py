"""CI's `pulumi up` of a new stack works from what the repository and the documented CI secrets hold (issue 21 item 9).

The deploy workflow's jobs run here step by step (tests/ci/workflow_runner.py) against the stack files as they are in
git, a Pulumi backend with no stacks yet, and exactly the secrets docs/deploying/eks-first-week.md lists for each GitHub
environment. `pulumi` is a stand-in that makes the CLI's own checks (a declared key without a default must be set, a
declared secret must be encrypted, the stack must exist) and runs the real program under mocks.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from infra.tools.stack_secrets import CI_SECRETS
from tests.ci.test_workflows import workflow
from tests.ci.workflow_runner import JobResult, Runner
from tests.docs.pages import section

ROOT = Path(__file__).resolve().parents[2]
REPO = "ghcr.io/clawbot/clawbot"
FIRST = f"{REPO}:{'a' * 40}@sha256:{'1' * 64}"
SECOND = f"{REPO}:{'b' * 40}@sha256:{'2' * 64}"
# Stand-ins for what each documented secret holds.
SAMPLE_SECRETS = {
    "PULUMI_ACCESS_TOKEN": "pul-0123456789abcdef",
    "KUBECONFIG": "apiVersion: v1\nkind: Config\ncurrent-context: none\n",
    "CONVERSATION_DATABASE_URL": "postgresql://clawbot:s3cret@clawbot-prod-conversations.internal:5432/clawbot",
    "ALERT_SMTP_PASSWORD": "smtp-s3cret",
    "HUB_TOKEN": "hf_not_needed",
    "REGISTRY_USERNAME": "ci",
    "REGISTRY_PASSWORD": "registry-s3cret",
}


def documented_secrets(without: tuple[str, ...] = ()) -> dict[str, dict[str, str]]:
    """GitHub environment (or 'repository') -> the secrets the docs' CI secrets table gives it. A secret documented
    as optional ("any stack's, optional") is left out: a new stack must come up without it."""
    table = section("deploying/eks-first-week.md", "CI secrets")
    out: dict[str, dict[str, str]] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([A-Z_]+)`", cells[0])
        if "optional" in cells[1]:
            continue
        environments = ["repository"] if cells[1] == "repository" else re.findall(r"`([\w-]+)`", cells[1])
        for environment in environments:
            for name in names:
                if name not in without:
                    out.setdefault(environment, {})[name] = SAMPLE_SECRETS[name]
    return out


def runner(tmp_path: Path, **secrets: Any) -> Runner:
    run = Runner(tmp_path, workflow("deploy.yml"), secrets or documented_secrets())
    run.results["tests"] = JobResult("tests", ran=True)
    return run


def built(run: Runner, image: str) -> None:
    run.results["image"] = JobResult("image", ran=True, outputs={"image": image})


def outputs(run: Runner, stack: str) -> dict[str, Any]:
    return json.loads((run.state / "stacks" / stack / "outputs.json").read_text())


def release(run: Runner) -> dict[str, JobResult]:
    """One push to main after the image job: dev, the prod canary (soak, stop), the promotion."""
    for name in ("deploy-dev", "canary-prod", "soak-prod", "stop-canary-prod", "deploy-prod"):
        run.run_job(name)
    return run.results


def test_the_docs_list_every_secret_the_workflows_read() -> None:
    documented = {name for secrets in documented_secrets().values() for name in secrets} | {"HUB_TOKEN"}
    for path in ("deploy.yml", "pull-request.yml"):
        text = (ROOT / ".github" / "workflows" / path).read_text()
        read = set(re.findall(r"secrets\.([A-Z_]+)", text)) - {"GITHUB_TOKEN"}
        assert read <= documented, f"{path} reads secrets the docs do not list: {read - documented}"
    assert set(CI_SECRETS.values()) <= documented


def test_a_new_prod_stack_comes_up_in_ci_from_the_repository_and_the_documented_secrets(tmp_path: Path) -> None:
    run = runner(tmp_path)
    built(run, FIRST)
    results = release(run)
    assert results["deploy-dev"].ok, results["deploy-dev"].log
    # The first release has no stable one to compare with: no canary, straight to the approval.
    assert results["canary-prod"].ok and results["canary-prod"].outputs["started"] == "false", results[
        "canary-prod"
    ].log
    assert not results["soak-prod"].ran and not results["stop-canary-prod"].ran
    assert results["deploy-prod"].ran and results["deploy-prod"].ok, results["deploy-prod"].log
    prod = outputs(run, "prod")
    assert prod["imageHistory"] == [FIRST] and prod["endpointUrl"] == "https://chat.example.com:18789"
    assert outputs(run, "dev")["imageHistory"] == [FIRST]
    # The stack file CI deployed holds the three declared secrets, encrypted; the database URL from the CI secret.
    log = results["deploy-prod"].log
    assert "clawbot:conversationDatabaseUrl: from CONVERSATION_DATABASE_URL" in log
    assert "clawbot:hubToken: none" in log

    # The next release: prod serves through its NLB, where a canary's share is a count of pods, so CI says so and
    # promotes after the approval without a canary.
    built(run, SECOND)
    results = release(run)
    canary = results["canary-prod"]
    assert canary.ok and canary.outputs["started"] == "false", canary.log
    assert "is not a share the chat Service can serve" in canary.log and "No canary" in canary.log
    assert results["deploy-prod"].ok, results["deploy-prod"].log
    assert outputs(run, "prod")["imageHistory"] == [SECOND, FIRST]


def test_a_missing_required_secret_stops_the_job_before_up_and_names_it(tmp_path: Path) -> None:
    run = runner(tmp_path, **documented_secrets(without=("CONVERSATION_DATABASE_URL",)))
    built(run, FIRST)
    result = run.run_job("deploy-prod")
    assert not result.ok
    failed = next(s for s in result.steps if s.ran and s.returncode != 0)
    assert failed.name == "Select the stack and set its secrets"
    assert "CONVERSATION_DATABASE_URL (for clawbot:conversationDatabaseUrl: a production stack with" in failed.output
    assert not (run.state / "stacks" / "prod" / "manifests").exists()  # nothing was deployed


def test_without_the_secrets_step_the_cli_refuses_a_new_stack(tmp_path: Path) -> None:
    """What CI did before: only the image was set, so the CLI's own check stopped `up`."""
    run = runner(tmp_path)
    built(run, FIRST)
    (run.state / "stacks" / "prod").mkdir(parents=True)
    (run.state / "stacks" / "prod" / "created").write_text("")  # as `pulumi stack init prod` once, by hand
    result = run.run_job("deploy-prod", skip_steps=("Select the stack and set its secrets",))
    assert not result.ok
    assert "Stack 'prod' is missing configuration value 'hubToken'" in result.log


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_weekly_key_rotation_runs_on_a_deployed_stack(tmp_path: Path, stack: str) -> None:
    run = runner(tmp_path)
    built(run, FIRST)
    release(run)
    environment = {"dev": "dev", "prod": "prod-unattended"}[stack]
    result = run.run_job(
        "rotate-keys", matrix={"stack": stack, "environment": environment}, github={"event_name": "schedule"}
    )
    assert result.ran and result.ok, result.log
    assert outputs(run, stack)["imageHistory"] == [FIRST]  # the running image stays
