"""Upgrading a stack keeps its resources: every URN a stack held before infra/ was regrouped by topic is still a
resource's URN or one of its aliases, so `pulumi up` moves nothing on the cluster (no delete and create of the data
volume, the Deployments or the ServiceMonitor). The URNs are recorded in urns_before_regrouping.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.tools.synth import Synthesis, synthesize

RECORDED = {
    k: v
    for k, v in json.loads(Path(__file__).with_name("urns_before_regrouping.json").read_text()).items()
    if not k.startswith("_")
}
# Resources a later change removes on purpose, by name, where the stack's config (key, value; None: any) asks for it;
# docs/operations/ says what an upgrade does with each.
REMOVED_ON_PURPOSE: dict[str, tuple[str, str | None]] = {
    # keyEncryption kms (production requires it): no KEK exists outside AWS KMS (docs/operations/keys.md).
    "secrets-kek": ("keyEncryption", "kms"),
    "secrets-kek-secret": ("keyEncryption", "kms"),
    # backupBucket (production requires it): dumps go to S3, not to a claim on the data's file system; the claim is
    # unprotected and left in the cluster by hand (docs/operations/backups.md, "Upgrading").
    "backups-database-backups": ("backupBucket", None),
}


def removed_on_purpose(urn: str, s: Synthesis) -> bool:
    key, value = REMOVED_ON_PURPOSE.get(urn.rsplit("::", 1)[-1], ("", ""))
    got = s.config.get(key) if key else None
    return bool(got) and (value is None or got == value)


def known_urns(s: Synthesis) -> dict[str, str]:
    """Each URN an existing stack may hold, mapped to the resource that answers to it now."""
    out: dict[str, str] = {}
    for r in s.resources:
        for urn in (r.options.urn, *r.options.aliases):
            if urn:
                out.setdefault(urn, r.options.urn)
    return out


@pytest.mark.parametrize("variant", sorted(RECORDED))
def test_every_resource_of_an_existing_stack_is_kept(variant: str) -> None:
    recorded = RECORDED[variant]
    s = synthesize(recorded["stack"], overrides=recorded["overrides"])
    known = known_urns(s)
    assert [urn for urn in recorded["urns"] if urn not in known and not removed_on_purpose(urn, s)] == []


def test_moved_resources_answer_to_their_old_urn(prod: Synthesis) -> None:
    """The data claim moved under DataVolume and the ServiceMonitor from AlertRules to Monitoring; both alias back."""
    claim = next(r for r in prod.resources if r.name == "chat-data" and r.type.endswith("PersistentVolumeClaim"))
    assert "clawbot:infra:DataVolume$" in claim.options.urn
    assert claim.options.aliases == (
        "urn:pulumi:prod::clawbot::clawbot:infra:ChatService$kubernetes:core/v1:PersistentVolumeClaim::chat-data",
    )
    monitor = next(r for r in prod.resources if r.type.endswith("ServiceMonitor"))
    assert monitor.options.aliases == (
        "urn:pulumi:prod::clawbot::clawbot:infra:AlertRules$kubernetes:monitoring.coreos.com/v1:ServiceMonitor::alerts-servicemonitor",
    )
    assert claim.options.protect and claim.options.retain_on_delete  # still protected where it now sits


def test_a_lost_urn_would_be_caught(prod: Synthesis) -> None:
    known = known_urns(prod)
    assert (
        "urn:pulumi:prod::clawbot::clawbot:infra:ChatService$kubernetes:core/v1:PersistentVolumeClaim::chat-gone"
        not in known
    )
