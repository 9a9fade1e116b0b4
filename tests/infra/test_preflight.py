"""Before anything is declared (issue 21 items 10 and 11): each stack names its cluster, preview refuses a cluster
that is not the stack's, and preview refuses an update that would replace the namespace, the stable Deployment, the
data claim or the chat Service, naming the migration, unless `allowReplace` is set. A refused preview declares
nothing at all."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import infra.tools.mocks as mocks
from infra.contract import CHAT_LABELS
from infra.preflight import MIGRATIONS, UPGRADES_DOC_PAGE
from infra.tools.synth import SynthError, Synthesis, read_provider_config, read_stack_config, synthesize
from tests.docs.pages import headings, page
from tests.infra.conftest import BEHIND_GATEWAY

ROOT = Path(__file__).resolve().parents[2]
OTHER_CLUSTER = "11111111-2222-4333-8444-555555555555"


def last_update(s: Synthesis) -> dict[str, Any]:
    """The outputs an update leaves for the next one to read back (secrets left out, as `pulumi stack output`)."""
    return {k: v for k, v in s.outputs.items() if k not in s.secret_outputs}


class Declared:
    """What the mocked engine receives in the syntheses that follow, reads (kube-system, the stack reference) left out."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.engines: list[mocks.ClawbotMocks] = []
        original = mocks.ClawbotMocks.__init__

        def spy(engine: mocks.ClawbotMocks, *args: Any, **kwargs: Any) -> None:
            original(engine, *args, **kwargs)
            self.engines.append(engine)

        monkeypatch.setattr(mocks.ClawbotMocks, "__init__", spy)

    @property
    def resources(self) -> list[str]:
        return [
            f"{r.type}::{r.name}"
            for engine in self.engines
            for r in engine.resources
            if not r.read and r.type != mocks.STACK_REFERENCE
        ]


# -- 11. each stack names its cluster ---------------------------------------------------------------------------------


def test_each_stack_file_names_its_cluster() -> None:
    for stack in ("dev", "prod"):
        assert read_provider_config(stack).get("kubernetes:context"), f"Pulumi.{stack}.yaml names no kubernetes:context"
    assert re.fullmatch(r"[0-9a-f-]{36}", read_stack_config("prod")["clusterId"])


def test_a_stack_that_names_no_cluster_is_refused() -> None:
    with pytest.raises(SynthError, match="stack 'dev' names no cluster: set kubernetes:context in Pulumi.dev.yaml"):
        synthesize("dev", overrides={"kubernetes:context": None})
    assert synthesize("dev", overrides={"kubernetes:context": None, "kubernetes:kubeconfig": "~/.kube/dev"}).objects


def test_preview_refuses_a_cluster_that_is_not_the_stacks_and_declares_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    declared = Declared(monkeypatch)
    with pytest.raises(SynthError) as err:
        synthesize("prod", cluster_uid=OTHER_CLUSTER)
    message = str(err.value)
    assert f"this stack's cluster is {read_stack_config('prod')['clusterId']}" in message
    assert f"kubernetes:context 'clawbot-prod' points at {OTHER_CLUSTER}: nothing was changed" in message
    assert "set clawbot:clusterId to the new one" in message
    assert declared.resources == []  # no object of the program reached the engine
    synthesize("prod")  # against its own cluster the same stack declares everything
    assert "kubernetes:apps/v1:Deployment::chat-deployment" in declared.resources


def test_without_a_cluster_id_the_first_update_records_its_cluster_and_later_ones_hold_to_it(dev: Synthesis) -> None:
    assert "clusterId" not in read_stack_config("dev")
    assert dev.outputs["clusterId"] == mocks.CLUSTER_UID
    again = synthesize("dev", stack_outputs=last_update(dev))
    assert again.outputs["clusterId"] == dev.outputs["clusterId"]
    with pytest.raises(SynthError, match=r"cluster is .*from the last update\), but kubernetes:context 'clawbot-dev'"):
        synthesize("dev", stack_outputs=last_update(dev), cluster_uid=OTHER_CLUSTER)
    # A rebuilt cluster, on purpose: the stack names the new one.
    moved = synthesize(
        "dev", overrides={"clusterId": OTHER_CLUSTER}, stack_outputs=last_update(dev), cluster_uid=OTHER_CLUSTER
    )
    assert moved.outputs["clusterId"] == OTHER_CLUSTER


# -- 10. no replacement of what holds state or serves, unasked ------------------------------------------------------


def refusal(stack: str, previous: Synthesis, **overrides: Any) -> str:
    with pytest.raises(SynthError) as err:
        synthesize(stack, overrides=overrides, stack_outputs=last_update(previous))
    message = str(err.value)
    assert "this update would replace what holds the service's state or serves it" in message
    assert "Nothing was changed" in message and "clawbot:allowReplace" in message
    return message


def test_an_update_that_changes_nothing_immutable_goes_through(prod: Synthesis) -> None:
    assert synthesize("prod", overrides={"maxTokens": 1024, "minReplicas": 3}, stack_outputs=last_update(prod)).objects


def test_a_stack_deployed_before_the_track_selector_is_told_its_deployment_would_be_replaced(
    monkeypatch: pytest.MonkeyPatch, prod: Synthesis
) -> None:
    """The upgrade of issue 21 item 10: a stack deployed before the stable Deployment's selector gained track: stable
    exported endpointUrl and namespace but no imageHistory (which came with the selector)."""
    before_canaries = {
        k: v
        for k, v in last_update(prod).items()
        if k in ("endpointUrl", "loadBalancerHostname", "namespace", "apiKeyIds", "keyRotation", "alertRules")
    }
    declared = Declared(monkeypatch)
    with pytest.raises(SynthError) as err:
        synthesize("prod", stack_outputs=before_canaries)
    message = str(err.value)
    selector = {**CHAT_LABELS}
    assert (
        f"stableDeployment clawbot/clawbot (selector {selector!r} -> { ({**selector, 'track': 'stable'})!r})" in message
    )
    assert "every stable chat pod stops before the new ones have loaded the model" in message
    assert f"Migration: {UPGRADES_DOC_PAGE}#a-new-deployment-selector" in message
    assert declared.resources == []
    # Told on purpose, the update goes through, and records what it declared for the next one.
    allowed = synthesize("prod", overrides={"allowReplace": True}, stack_outputs=before_canaries)
    assert allowed.outputs["immutableFields"]["stableDeployment"]["selector"] == {**selector, "track": "stable"}
    synthesize("prod", stack_outputs=last_update(allowed))  # and the next update compares with that


def test_a_stack_with_image_history_already_had_the_track_selector(prod: Synthesis) -> None:
    since_canaries = {k: v for k, v in last_update(prod).items() if k not in ("immutableFields", "clusterId")}
    assert synthesize("prod", stack_outputs=since_canaries).objects


def test_a_new_storage_class_or_access_mode_would_replace_the_data_claim(dev: Synthesis) -> None:
    message = refusal("dev", dev, storageClass="gp3-encrypted")
    assert "dataClaim clawbot-dev/clawbot-data (storageClassName 'gp3' -> 'gp3-encrypted')" in message
    assert "the chat pods would mount a new, empty volume" in message and "#a-new-data-claim" in message


def test_a_new_namespace_would_replace_everything_and_says_so_once(dev: Synthesis) -> None:
    message = refusal("dev", dev, namespace="clawbot-dev2")
    assert "namespace clawbot-dev2 (name 'clawbot-dev' -> 'clawbot-dev2')" in message
    assert "#a-new-namespace" in message and "stableDeployment" not in message and "dataClaim" not in message


def test_moving_prod_behind_a_gateway_would_replace_its_load_balancer(prod: Synthesis) -> None:
    message = refusal("prod", prod, **BEHIND_GATEWAY)
    assert "chatService clawbot/clawbot (type 'LoadBalancer' -> 'ClusterIP'" in message
    assert "a new load balancer with a new DNS name" in message and "#a-new-load-balancer" in message


def test_every_migration_the_refusals_name_is_written_down() -> None:
    text = page(UPGRADES_DOC_PAGE.removeprefix("docs/"))
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for _, _, h in headings(text)}
    for role, (_, anchor) in MIGRATIONS.items():
        assert anchor in anchors, f"{UPGRADES_DOC_PAGE} has no section #{anchor} for {role}"
