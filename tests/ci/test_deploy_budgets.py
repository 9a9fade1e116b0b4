"""Every CI job that runs `pulumi up` has a limit above Pulumi's own wait (issue 21 item 3): the runner must never
kill `up` midway and leave the stack locked with pending operations. Pulumi's wait is read off the synthesized stack
(infra/tools/budgets.py: the longest chain of awaited resources, then the deletions), so a change to maxReplicas or
the start-up budget that outgrows a job's limit fails here."""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest

from infra.components.rollout import rollout_seconds, turnover_seconds
from infra.settings import parse_settings
from infra.tools.budgets import DELETE_PHASE_S, UpdateWait, update_wait
from infra.tools.synth import read_stack_config, synthesize
from tests.ci.test_workflows import steps, workflow
from tests.infra.conftest import BEHIND_GATEWAY, NEXT_IMAGE

# Checkout, two virtualenvs (the program's pulls torch) and the Pulumi CLI, before `up` starts.
SETUP_S = 15 * 60
HOSTED_RUNNER_LIMIT_MIN = 360  # GitHub-hosted runners stop any job after 6 hours
# The stacks each CI `up` may deploy: prod as checked in, and prod behind a Gateway with a canary.
VARIANTS = {"dev": [("dev", {})], "prod": [("prod", {}), ("prod", {**BEHIND_GATEWAY, "canary": {"image": NEXT_IMAGE}})]}


@cache
def pulumi_wait(stack: str) -> UpdateWait:
    return max(
        (update_wait(synthesize(name, overrides=overrides)) for name, overrides in VARIANTS[stack]),
        key=lambda w: w.seconds,
    )


def up_steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        s
        for s in steps(job)
        if str(s.get("uses", "")).startswith("pulumi/actions@") and (s.get("with") or {}).get("command") == "up"
    ]


def stacks_of(job: dict[str, Any], step: dict[str, Any]) -> list[str]:
    name = str(step["with"]["stack-name"])
    if name == "${{ matrix.stack }}":
        return [entry["stack"] for entry in job["strategy"]["matrix"]["include"]]
    return [name]


def jobs_running_up() -> dict[str, tuple[dict[str, Any], list[str]]]:
    out = {}
    for path in ("deploy.yml", "pull-request.yml"):
        for name, job in workflow(path)["jobs"].items():
            ups = up_steps(job)
            if ups:
                out[f"{path}:{name}"] = (job, [s for step in ups for s in stacks_of(job, step)])
    return out


def test_the_jobs_that_run_up_are_the_ones_expected() -> None:
    assert set(jobs_running_up()) == {
        f"deploy.yml:{j}" for j in ("deploy-dev", "canary-prod", "stop-canary-prod", "deploy-prod", "rotate-keys")
    }


@pytest.mark.parametrize("name", sorted(jobs_running_up()))
def test_every_job_that_runs_up_has_a_limit_above_pulumis_own(name: str) -> None:
    job, stacks = jobs_running_up()[name]
    # One `up` per job: a second would need the two waits summed (the soak and a stop are jobs of their own).
    assert len(up_steps(job)) == 1, f"{name} runs {len(up_steps(job))} `pulumi up` steps"
    needed = max(pulumi_wait(stack).seconds for stack in stacks) + SETUP_S
    limit_min = int(job["timeout-minutes"])
    assert limit_min * 60 > needed, (
        f"{name}: timeout-minutes {limit_min} is not above `pulumi up`'s own wait plus setup, {needed / 60:.0f} min "
        f"({' -> '.join(max((pulumi_wait(s) for s in stacks), key=lambda w: w.seconds).chain)})"
    )
    assert limit_min <= HOSTED_RUNNER_LIMIT_MIN, f"{name}: GitHub-hosted runners stop a job after 360 minutes"


def test_pulumis_wait_is_the_rollout_through_every_replica() -> None:
    prod = parse_settings(read_stack_config("prod"), stack="prod")
    wait = pulumi_wait("prod")
    assert rollout_seconds(prod, prod.scaling.max_replicas) + DELETE_PHASE_S < wait.seconds
    assert any(step.startswith("chat-deployment (") for step in wait.chain)
    # Ten more replicas, ten more turnovers: 20 pods no longer fit a hosted runner, and the test above would say so.
    bigger = update_wait(synthesize("prod", overrides={"maxReplicas": 20, "gpuLimit": 22}))
    assert bigger.seconds - wait.seconds == 10 * (turnover_seconds(prod))
    assert bigger.seconds + SETUP_S > HOSTED_RUNNER_LIMIT_MIN * 60


def test_a_limit_below_the_wait_would_be_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = jobs_running_up()
    job, stacks = jobs["deploy.yml:deploy-prod"]
    monkeypatch.setitem(job, "timeout-minutes", 45)  # what deploy-prod had: below Pulumi's 50-minute wait then
    monkeypatch.setattr(
        "tests.ci.test_deploy_budgets.jobs_running_up", lambda: {"deploy.yml:deploy-prod": (job, stacks)}
    )
    with pytest.raises(AssertionError, match="timeout-minutes 45 is not above"):
        test_every_job_that_runs_up_has_a_limit_above_pulumis_own("deploy.yml:deploy-prod")


def test_the_soak_job_outlasts_the_soak() -> None:
    soak = workflow("deploy.yml")["jobs"]["soak-prod"]
    (run,) = [str(s["run"]) for s in steps(soak) if "canary_check" in str(s.get("run", ""))]
    ready_timeout = int(run.split("--ready-timeout")[1].split()[0])
    default_soak = 900
    assert int(soak["timeout-minutes"]) * 60 > ready_timeout + default_soak + 5 * 60
