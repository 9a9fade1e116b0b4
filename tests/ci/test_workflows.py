"""The GitHub workflows: valid against GitHub's schema, clean under zizmor, and wired the way the delivery flow needs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.docs.pages import all_pages, section

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW_DIR = ROOT / ".github" / "workflows"
WORKFLOWS = sorted(WORKFLOW_DIR.glob("*.yml")) + sorted(WORKFLOW_DIR.glob("*.yaml"))
SHA_PIN = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")


def tool(name: str) -> str:
    """A console script from the test venv (pinned in requirements-dev.txt), else from PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed; pip install it (see requirements-dev.txt)")
    return found


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the bare key `on` as boolean True.
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


def workflow(name: str) -> dict[str, Any]:
    return load(WORKFLOW_DIR / name)


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps") or [])


def step_using(job: dict[str, Any], action: str, **with_: Any) -> dict[str, Any]:
    for s in steps(job):
        if str(s.get("uses", "")).startswith(action + "@") and all(
            str((s.get("with") or {}).get(k)) == str(v) for k, v in with_.items()
        ):
            return s
    raise AssertionError(f"no step uses {action} with {with_}: {[s.get('uses') for s in steps(job)]}")


def all_uses(doc: dict[str, Any]) -> Iterator[str]:
    for job in doc["jobs"].values():
        if "uses" in job:
            yield job["uses"]
        for s in steps(job):
            if "uses" in s:
                yield s["uses"]


def test_the_delivery_workflows_exist() -> None:
    assert {p.name for p in WORKFLOWS} >= {"pull-request.yml", "deploy.yml", "tests.yml"}


# --- GitHub's workflow schema (vendored by check-jsonschema, so this runs offline) --------------------------


def check_schema(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_workflow_matches_the_github_workflow_schema() -> None:
    result = check_schema(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_rejects_a_broken_workflow(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  build:\n    steps: [{run: make}]\n    timeout: forever\n")
    assert check_schema(bad).returncode != 0


# --- zizmor, offline --------------------------------------------------------------------------------------


def zizmor_findings(*paths: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [tool("zizmor"), "--offline", "--persona", "auditor", "--format", "json", "--no-progress", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # zizmor exits 0 when clean, 10-14 by the worst severity found; anything else is a crash.
    assert result.returncode in (0, 10, 11, 12, 13, 14), result.stderr
    return list(json.loads(result.stdout or "[]"))


def test_zizmor_finds_no_high_severity_issue() -> None:
    findings = zizmor_findings(*WORKFLOWS)
    high = [
        (f["ident"], f["locations"][0]["symbolic"]["key"])
        for f in findings
        if f["determinations"]["severity"] == "High"
    ]
    assert high == []


def test_zizmor_catches_template_injection(tmp_path: Path) -> None:
    risky = tmp_path / "risky.yml"
    risky.write_text(
        "on: pull_request_target\npermissions: {}\njobs:\n  greet:\n    runs-on: ubuntu-24.04\n"
        "    permissions: {}\n    steps:\n      - run: echo \"${{ github.event.pull_request.title }}\"\n"
    )
    idents = {f["ident"] for f in zizmor_findings(risky) if f["determinations"]["severity"] == "High"}
    assert "template-injection" in idents


# --- hardening rules a reviewer would otherwise check by eye ----------------------------------------------


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_no_privileged_triggers_and_least_privilege(path: Path) -> None:
    doc = load(path)
    triggers = doc["on"] if isinstance(doc["on"], (dict, list)) else [doc["on"]]
    assert "pull_request_target" not in triggers and "workflow_run" not in triggers
    assert doc.get("permissions") == {}, "default every job to no permissions, then grant per job"
    for name, job in doc["jobs"].items():
        perms = job.get("permissions")
        assert isinstance(perms, dict), f"job {name} must declare its permissions"
        writes = {k for k, v in perms.items() if v == "write"}
        assert writes <= {"pull-requests"}, f"job {name} asks for write access to {writes}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actions_are_pinned_to_commit_shas(path: Path) -> None:
    for uses in all_uses(load(path)):
        assert uses.startswith("./") or SHA_PIN.match(uses), f"{uses} is not pinned to a full commit SHA"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_run_scripts_interpolate_nothing(path: Path) -> None:
    for name, job in load(path)["jobs"].items():
        for s in steps(job):
            assert "${{" not in str(s.get("run", "")), f"job {name}: pass values to run: through env, not ${{{{ }}}}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_secrets_come_only_from_the_secret_store(path: Path) -> None:
    text = path.read_text()
    for ref in re.findall(r"secrets\.[A-Za-z_]+", text):
        assert re.search(r"\$\{\{\s*" + re.escape(ref) + r"\s*\}\}", text), f"{ref} used outside ${{{{ }}}}"
    assert "toJSON(secrets)" not in text and "secrets: inherit" not in text
    for key, value in re.findall(
        r"^\s*([A-Z_]*(?:TOKEN|PASSWORD|KUBECONFIG_CONTENT|ACCESS_KEY)[A-Z_]*):\s*(.+)$", text, re.M
    ):
        assert value.strip().startswith("${{ secrets."), f"{key} must come from secrets, got {value!r}"


# --- the delivery flow ------------------------------------------------------------------------------------


def test_pull_requests_run_tests_then_preview_both_stacks_with_the_policy_pack() -> None:
    doc = workflow("pull-request.yml")
    assert "pull_request" in doc["on"]
    assert doc["jobs"]["tests"]["uses"].startswith("./.github/workflows/tests.yml")
    preview = doc["jobs"]["preview"]
    assert preview["needs"] == "tests"
    assert set(preview["strategy"]["matrix"]["stack"]) == {"dev", "prod"}
    step = step_using(preview, "pulumi/actions", command="preview", policyPacks="policy")
    assert step["with"]["stack-name"] == "${{ matrix.stack }}"
    assert step["with"]["comment-on-pr"] is True
    assert step["env"]["PULUMI_ACCESS_TOKEN"] == "${{ secrets.PULUMI_ACCESS_TOKEN }}"
    assert preview["permissions"] == {"contents": "read", "pull-requests": "write"}


def test_the_policy_pack_venv_is_built_before_pulumi_runs() -> None:
    for name, doc in (("pull-request.yml", workflow("pull-request.yml")), ("deploy.yml", workflow("deploy.yml"))):
        for job_name, job in doc["jobs"].items():
            runs = [str(s.get("run", "")) for s in steps(job)]
            if any(s.get("with", {}).get("policyPacks") == "policy" for s in steps(job)):
                assert any("policy/venv/bin/pip install" in r and "policy/requirements.txt" in r for r in runs), (
                    f"{name} job {job_name} runs the policy pack without installing it"
                )


def test_main_builds_the_image_then_deploys_dev_then_prod_after_approval() -> None:
    doc = workflow("deploy.yml")
    assert doc["on"]["push"]["branches"] == ["main"]
    jobs = doc["jobs"]
    image = jobs["image"]
    assert image["needs"] == "tests"
    assert image["outputs"]["image"] == (
        "${{ steps.tags.outputs.repository }}:${{ github.sha }}@${{ steps.push.outputs.digest }}"
    )

    dev, prod = jobs["deploy-dev"], jobs["deploy-prod"]
    assert "image" in ([dev["needs"]] if isinstance(dev["needs"], str) else dev["needs"])
    assert "deploy-dev" in prod["needs"] and prod["environment"] == "prod"
    for job, stack in ((dev, "dev"), (prod, "prod")):
        step_using(job, "pulumi/actions", command="up", **{"stack-name": stack, "policyPacks": "policy"})
        set_image = [s for s in steps(job) if "pulumi config set" in str(s.get("run", ""))]
        assert set_image and set_image[0]["env"]["IMAGE"] == "${{ needs.image.outputs.image }}"
        assert f"--stack {stack}" in set_image[0]["run"]


# --- the image: scanned before it is pushed, both platforms, attestations, the tags the stack files name -----


def image_steps() -> list[dict[str, Any]]:
    return steps(workflow("deploy.yml")["jobs"]["image"])


def index_of(action: str, **with_: Any) -> int:
    return image_steps().index(step_using(workflow("deploy.yml")["jobs"]["image"], action, **with_))


def test_the_image_is_cve_scanned_before_anything_is_pushed_and_fixable_criticals_fail_the_job() -> None:
    scan_build = step_using(workflow("deploy.yml")["jobs"]["image"], "docker/build-push-action", load=True)
    assert scan_build["with"]["push"] is False and scan_build["with"]["platforms"] == "linux/amd64"
    trivy = step_using(workflow("deploy.yml")["jobs"]["image"], "aquasecurity/trivy-action")
    assert trivy["with"]["image-ref"] == scan_build["with"]["tags"]
    assert (trivy["with"]["severity"], trivy["with"]["ignore-unfixed"], str(trivy["with"]["exit-code"])) == (
        "CRITICAL",
        True,
        "1",
    )
    assert not trivy.get("continue-on-error")
    assert (
        index_of("docker/build-push-action", load=True)
        < index_of("aquasecurity/trivy-action")
        < index_of("docker/build-push-action", push=True)
    )


def test_the_pushed_image_is_multi_arch_with_sbom_and_provenance() -> None:
    push = step_using(workflow("deploy.yml")["jobs"]["image"], "docker/build-push-action", push=True)
    assert set(push["with"]["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert push["with"]["sbom"] is True and push["with"]["provenance"] == "mode=max"
    assert push["with"]["tags"] == "${{ steps.tags.outputs.tags }}"
    tags_step = next(s for s in image_steps() if s.get("id") == "tags")
    assert tags_step["run"] == 'scripts/image-tags "$GITHUB_SHA" >> "$GITHUB_OUTPUT"'
    qemu = step_using(workflow("deploy.yml")["jobs"]["image"], "docker/setup-qemu-action")
    assert "arm64" in qemu["with"]["platforms"]


def image_tags(root: Path = ROOT, sha: str = "0" * 40) -> dict[str, Any]:
    """scripts/image-tags' $GITHUB_OUTPUT lines, parsed: registry, repository and the list of tags."""
    result = subprocess.run([str(root / "scripts" / "image-tags"), sha], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    tags = re.search(r"^tags<<TAGS\n(.*?)^TAGS$", out, re.M | re.S)
    assert tags, out
    fields = dict(re.findall(r"^(registry|repository)=(.+)$", out, re.M))
    return {**fields, "tags": tags.group(1).split()}


def stack_images() -> set[str]:
    return {load(p)["config"]["clawbot:image"] for p in ROOT.glob("Pulumi.*.yaml")}


def test_ci_pushes_exactly_the_tags_the_stack_files_name_plus_the_commit() -> None:
    pushed = image_tags(sha="ab" * 20)
    repository = pushed["repository"]
    assert set(pushed["tags"]) == stack_images() | {f"{repository}:{'ab' * 20}"}
    assert pushed["registry"] == repository.split("/")[0]


def test_the_docs_compose_file_and_config_default_name_only_pushed_tags_and_say_how_to_pin_by_digest() -> None:
    repository = image_tags()["repository"]
    pushed = set(stack_images())
    ref = re.escape(repository) + r":[\w.<>-]+"
    tags_section = section("deploying/image.md", "Tags")
    named = {
        "the docs": re.findall(ref, "\n".join(all_pages().values())),
        "compose.yaml": re.findall(re.escape(repository) + r":[\w.-]+", (ROOT / "compose.yaml").read_text()),
        "Pulumi.yaml": [load(ROOT / "Pulumi.yaml")["config"]["image"]["default"]],
    }
    for where, refs in named.items():
        assert refs, f"{where} names no {repository} image"
        stray = {r for r in refs if r not in pushed and r != f"{repository}:<commit-sha>"}
        assert not stray, f"{where} names tags CI never pushes: {stray}"
    missing = pushed - set(re.findall(ref, tags_section))
    assert not missing, f"the image docs' Tags section must name every tag CI pushes: {missing}"
    assert re.search(re.escape(repository) + r":[\w.-]+@sha256:<digest>", tags_section), (
        "the docs must show a digest pin"
    )


def test_image_tags_refuses_stacks_that_name_different_repositories(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "image-tags", tmp_path / "scripts" / "image-tags")
    (tmp_path / "Pulumi.dev.yaml").write_text("config:\n  clawbot:image: ghcr.io/a/clawbot:1.0\n")
    (tmp_path / "Pulumi.prod.yaml").write_text("config:\n  clawbot:image: ghcr.io/b/clawbot:1.0\n")
    result = subprocess.run(
        [str(tmp_path / "scripts" / "image-tags"), "0" * 40], capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0 and "every stack must name" in result.stderr


# --- releases: canary, soak, approval, promotion; keys rotated on a schedule ------------------------------


def _needs(job: dict[str, Any]) -> list[str]:
    return [job["needs"]] if isinstance(job["needs"], str) else list(job["needs"])


def test_prod_gets_a_canary_that_soaks_before_the_approval_that_promotes_it() -> None:
    jobs = workflow("deploy.yml")["jobs"]
    canary, soak_job, stop_job, promote = (
        jobs[n] for n in ("canary-prod", "soak-prod", "stop-canary-prod", "deploy-prod")
    )
    assert {"image", "deploy-dev"} <= set(_needs(canary)) and {"canary-prod", "soak-prod"} <= set(_needs(promote))
    # The canary runs without a reviewer; the promotion waits for one on the `prod` environment.
    assert canary["environment"] == soak_job["environment"] == stop_job["environment"] == "prod-unattended"
    assert promote["environment"] == "prod"
    runs = [str(s.get("run", "")) for s in steps(canary)]
    start = next(r for r in runs if "canary.image" in r)
    assert "imageHistory" in start and 'clawbot:image "$stable"' in start and '--path canary.image "$IMAGE"' in start
    # Only a canary the stack can serve at its weight is started; otherwise the release goes to the approval.
    assert "infra.tools.canary_share --stack prod" in start and 'pulumi config rm --stack prod canary' in start
    step_using(canary, "pulumi/actions", command="up", **{"stack-name": "prod", "policyPacks": "policy"})
    assert canary["outputs"]["started"] == "${{ steps.canary.outputs.started }}"
    # The soak is a job of its own after the canary's `up`, so neither limit cuts the other short.
    assert _needs(soak_job) == ["canary-prod"] and soak_job["if"] == "needs.canary-prod.outputs.started == 'true'"
    assert any("infra.tools.canary_check" in str(s.get("run", "")) for s in steps(soak_job))
    # A failed canary or soak stops the canary again, and nothing is promoted.
    assert set(_needs(stop_job)) == {"canary-prod", "soak-prod"}
    assert stop_job["if"] == "failure() && needs.canary-prod.outputs.started == 'true'"
    assert any("pulumi config rm --stack prod canary" in str(s.get("run", "")) for s in steps(stop_job))
    step_using(stop_job, "pulumi/actions", command="up", **{"stack-name": "prod"})
    assert promote["if"] == "${{ !cancelled() && !failure() }}"
    # The promotion is the stack file from git (no canary block) with the new image: one `up`.
    assert not any("canary" in str(s.get("run", "")) for s in steps(promote))


def test_a_weekly_schedule_rotates_keys_and_deploys_nothing_new() -> None:
    doc = workflow("deploy.yml")
    (cron,) = [entry["cron"] for entry in doc["on"]["schedule"]]
    minute, hour, day, month, weekday = cron.split()
    assert (day, month) == ("*", "*") and weekday.isdigit()  # once a week, well inside a 90-day period
    jobs = doc["jobs"]
    assert jobs["image"]["if"] == "github.event_name == 'push'"  # so deploy-dev, canary and promote skip too
    rotate = jobs["rotate-keys"]
    assert rotate["if"] == "github.event_name == 'schedule'" and _needs(rotate) == ["tests"]
    stacks = {m["stack"]: m["environment"] for m in rotate["strategy"]["matrix"]["include"]}
    assert stacks == {"dev": "dev", "prod": "prod-unattended"}  # no reviewer: nobody has to be there
    assert rotate["strategy"]["max-parallel"] == 1
    keep = next(str(s["run"]) for s in steps(rotate) if "imageHistory" in str(s.get("run", "")))
    assert "jq -er '.[0]'" in keep and "canary.image" in keep  # the running images stay; only keys move
    step_using(rotate, "pulumi/actions", command="up", policyPacks="policy")
