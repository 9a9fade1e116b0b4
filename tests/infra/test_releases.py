"""Releases you can stop and undo: the canary beside the stable set, promotion, and rollback through imageHistory.

The runbooks of docs/operations/releases.md are run as written, in bash, against the real program under mocks: a
stand-in `pulumi` (tests/infra/fake_pulumi.py) keeps config and outputs between commands and runs infra.synth for
`up`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from infra.contract import CHAT_LABELS, VERSION_LABEL
from infra.images import ImageReferenceError, image_history, parse_image
from infra.settings import ConfigError, parse_settings
from infra.settings.release import canary_replicas
from infra.tools.synth import Synthesis, read_stack_config, synthesize
from tests.docs.pages import page
from tests.infra.conftest import BEHIND_GATEWAY
from tests.infra.fake_pulumi import command_dir
from tests.infra.test_stacks import NEWEST, OLDEST

ROOT = Path(__file__).resolve().parents[2]
RUNBOOKS = "operations/releases.md"  # the docs page whose `<!-- runbook: NAME -->` blocks are run here
REPO = "ghcr.io/acme/clawbot"
A, B, C, D = (
    f"{REPO}:{sha}@sha256:{digit * 64}"
    for sha, digit in (("aaa111", "a"), ("bbb222", "b"), ("ccc333", "c"), ("ddd444", "d"))
)
PROD = read_stack_config("prod")


def with_canary(stack: str = "prod", **canary: Any) -> Synthesis:
    """A canary beside the stable set: prod behind its Gateway (the share by weight); dev, one replica, at 50%."""
    canary = {"weight": 50, **canary} if stack == "dev" else canary
    extra = BEHIND_GATEWAY if stack == "prod" else {}
    return synthesize(stack, overrides={**extra, "image": A, "canary": {"image": D, **canary}})


def template(s: Synthesis, name: str) -> dict[str, Any]:
    return s.one("Deployment", name).manifest["spec"]["template"]


def image_of(s: Synthesis, name: str = "clawbot") -> str:
    return template(s, name)["spec"]["containers"][0]["image"]


# -- canary -------------------------------------------------------------------------------------------------------


def test_the_canary_is_a_second_deployment_of_the_new_image_behind_the_same_service() -> None:
    s = with_canary()
    stable, canary = s.one("Deployment", "clawbot").manifest, s.one("Deployment", "clawbot-canary").manifest
    assert image_of(s) == A and image_of(s, "clawbot-canary") == D
    stable_pods, canary_pods = (
        stable["spec"]["template"]["metadata"]["labels"],
        canary["spec"]["template"]["metadata"]["labels"],
    )
    assert (stable_pods["track"], canary_pods["track"]) == ("stable", "canary")
    assert (stable_pods[VERSION_LABEL], canary_pods[VERSION_LABEL]) == ("aaa111", "ddd444")  # the commit tags CI pushes
    # One Service (and the metrics Service, the PDB, the firewall) selects both; each Deployment only its own pods.
    for selector in (
        s.one("Service", "clawbot").manifest["spec"]["selector"],
        s.one("Service", "clawbot-metrics").manifest["spec"]["selector"],
        s.one("NetworkPolicy", "clawbot-chat-ingress").manifest["spec"]["podSelector"]["matchLabels"],
    ):
        assert selector.items() <= stable_pods.items() and selector.items() <= canary_pods.items()
    assert stable["spec"]["selector"]["matchLabels"] == {**CHAT_LABELS, "track": "stable"}
    assert canary["spec"]["selector"]["matchLabels"] == {**CHAT_LABELS, "track": "canary"}
    # The HPA scales the stable set; the canary keeps the pods its weight gives it.
    assert s.one("HorizontalPodAutoscaler").manifest["spec"]["scaleTargetRef"]["name"] == "clawbot"
    assert canary["spec"]["replicas"] == 1 and "replicas" not in stable["spec"]
    assert canary["metadata"]["annotations"] == {"clawbot.dev/canary-weight-percent": "10"}
    # Everything else about the pod is the stable set's: same config, secrets, probes, checksum, placement.
    strip = lambda t: {**t["spec"], "containers": [{**c, "image": None} for c in t["spec"]["containers"]]}  # noqa: E731
    assert strip(stable["spec"]["template"]) == strip(canary["spec"]["template"])
    for obj in (stable, canary):
        for version in (OLDEST, NEWEST):
            kubernetes_validate.validate(obj, version, strict=True)


def test_both_tracks_are_scraped_with_their_release_labels(prod: Synthesis) -> None:
    monitor = prod.one("ServiceMonitor").manifest["spec"]
    assert monitor["podTargetLabels"] == ["track", "app.kubernetes.io/version"]
    stable_pods = template(prod, "clawbot")["metadata"]["labels"]
    assert set(monitor["podTargetLabels"]) <= set(stable_pods)


def test_the_canary_share_follows_from_the_weight_and_is_reported_honestly() -> None:
    assert canary_replicas(10, 2) == 1 and canary_replicas(10, 9) == 1 and canary_replicas(10, 18) == 2
    assert canary_replicas(50, 2) == 2 and canary_replicas(25, 6) == 2 and canary_replicas(1, 1) == 1
    s = synthesize(
        "prod", overrides={**BEHIND_GATEWAY, "image": A, "gpuLimit": 14, "canary": {"image": D, "weight": 25}}
    )
    assert s.outputs["canary"] == {
        "image": D,
        "version": "ddd444",
        "weightPercent": 25,
        # Behind the Gateway the share is the route's weight; the canary gets pods for its part of the load at
        # maxReplicas: 25 x 10 / 75, three pods.
        "replicas": 3,
        "splitBy": "HTTPRoute weight",
        "shareOfRequestsPercent": {"atMinReplicas": 25.0, "atMaxReplicas": 25.0},
    }
    # Behind the Service the share is a count of pods: one canary pod beside nine stable ones is 10%.
    pods = synthesize("prod", overrides={"image": A, "minReplicas": 9, "canary": {"image": D}})
    assert pods.outputs["canary"]["splitBy"] == "ready pods"
    assert pods.outputs["canary"]["shareOfRequestsPercent"] == {"atMinReplicas": 10.0, "atMaxReplicas": 9.1}
    assert synthesize("prod").outputs["canary"] is None


def test_on_a_readwriteonce_volume_the_canary_runs_on_the_stable_pods_node() -> None:
    s = with_canary("dev")
    affinity = template(s, "clawbot-canary")["spec"]["affinity"]["podAffinity"]
    (term,) = affinity["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["labelSelector"]["matchLabels"] == {**CHAT_LABELS, "track": "stable"}
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert "podAffinity" not in template(with_canary(), "clawbot-canary")["spec"].get(
        "affinity", {}
    )  # prod: EFS, any node


def test_a_canary_needs_gpus_of_its_own() -> None:
    with pytest.raises(ConfigError, match=r"clawbot:gpuLimit \(11\) is below .* \+ 1 clawbot:canary pod\) = 12"):
        parse_settings({**PROD, "gpuLimit": 11, "canary": {"image": D}}, stack="prod")


@pytest.mark.parametrize(
    "canary, message",
    [
        ({"image": A}, "clawbot:canary.image is 'ghcr.io/acme/clawbot:aaa111@sha256:aaaa"),
        ({"image": D, "weight": 0}, "clawbot:canary.weight must be between 1 and 50, got 0"),
        ({"image": D, "weight": 60}, "clawbot:canary.weight must be between 1 and 50, got 60"),
        ({"image": D, "weight": "half"}, "clawbot:canary.weight must be an integer between 1 and 50, got 'half'"),
        ({"image": D, "promote": True}, "clawbot:canary has unknown field(s) promote; allowed: image, weight"),
        ({"weight": 10}, "clawbot:canary.image must name the release to try"),
        (
            {"image": "ghcr.io/Acme/clawbot:1"},
            "clawbot:canary.image: 'ghcr.io/Acme/clawbot:1' is not an image reference",
        ),
        ({"image": f"{REPO}:latest"}, "clawbot:canary.image must pin a tag or digest in production"),
        ("ghcr.io/acme/clawbot:2", "clawbot:canary must be an object like {image: <ref>, weight: 10}"),
    ],
)
def test_a_bad_canary_block_is_refused_naming_the_key(canary: Any, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings({**PROD, "image": A, "gpuLimit": 13, "canary": canary}, stack="prod")
    assert message in str(err.value)


# -- image references and history ---------------------------------------------------------------------------------


def test_image_references_are_parsed_as_a_runtime_would() -> None:
    ref = parse_image(A)
    assert (ref.name, ref.tag, ref.digest, ref.pinned) == (REPO, "aaa111", "sha256:" + "a" * 64, True)
    assert parse_image("localhost:5000/team/app@sha256:" + "e" * 64).version_label == "sha256-eeeeeeeeeeee"
    assert parse_image("redis:7.4.2-alpine").version_label == "7.4.2-alpine"
    assert not parse_image("ghcr.io/acme/clawbot").pinned and not parse_image("ghcr.io/acme/clawbot:latest").pinned
    for bad in ("ghcr.io/acme/clawbot@sha256:abc", "Ghcr.io/acme/Clawbot:1", "clawbot:", "clawbot:1 2", "-x/y:1"):
        with pytest.raises(ImageReferenceError):
            parse_image(bad)


def test_the_history_keeps_the_last_three_images_newest_first() -> None:
    assert image_history(None, A) == [A]
    assert image_history([B, C], A) == [A, B, C]
    assert image_history([B, C, D], A) == [A, B, C]
    assert image_history([A, B, C], A) == [A, B, C]  # an update that kept its image records nothing new
    assert image_history([B, A, C], A) == [A, B, C]
    assert image_history(["not an image", 7, B], A) == [A, B]
    assert image_history({"a": 1}, A) == [A]


def test_the_stack_reads_its_history_back_and_exports_it_with_this_image() -> None:
    s = synthesize("prod", overrides={"image": D}, stack_outputs={"imageHistory": [A, B, C]})
    assert s.outputs["imageHistory"] == [D, A, B]
    assert s.one("Deployment", "clawbot").manifest["spec"]["revisionHistoryLimit"] == 3


# -- the documented runbooks, run ------------------------------------------------------------------------------------


def runbook(name: str, doc: str = RUNBOOKS) -> str:
    """The command in the fenced block right after `<!-- runbook: NAME -->` in a docs page (the releases page by default)."""
    match = re.search(rf"<!-- runbook: {name} -->\s*```bash\n(.*?)```", page(doc), re.S)
    assert match, f"{doc} has no runbook {name!r}"
    command = match.group(1).strip()
    assert "\n" not in command, f"runbook {name!r} must be one command"
    return command


class Stack:
    """A stack whose `pulumi` is tests/infra/fake_pulumi.py: the runbooks run against the program as written."""

    def __init__(self, tmp_path: Path, stack: str, config: dict[str, Any], outputs: dict[str, Any]) -> None:
        self.state = tmp_path / "state"
        self.state.mkdir()
        (self.state / "stack").write_text(stack)
        (self.state / "config.json").write_text(json.dumps(config))
        (self.state / "outputs.json").write_text(json.dumps(outputs))
        bin_dir = command_dir(tmp_path)
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "PYTHONPATH": str(ROOT),
            "FAKE_PULUMI_STATE": str(self.state),
        }

    def run(self, command: str, **env: str) -> None:
        done = subprocess.run(
            ["bash", "-c", command], cwd=ROOT, env={**self.env, **env}, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"

    @property
    def outputs(self) -> dict[str, Any]:
        return json.loads((self.state / "outputs.json").read_text())

    def deployment(self, name: str) -> dict[str, Any] | None:
        path = self.state / "manifests" / f"deployment-clawbot-{name}.yaml"
        return yaml.safe_load(path.read_text()) if path.exists() else None

    def image(self, name: str = "clawbot") -> str | None:
        d = self.deployment(name)
        return d["spec"]["template"]["spec"]["containers"][0]["image"] if d else None


def test_the_rollback_runbook_brings_the_previous_digest_back(tmp_path: Path) -> None:
    stack = Stack(tmp_path, "prod", {**BEHIND_GATEWAY, "image": A}, {"imageHistory": [A, B, C]})
    stack.run("pulumi up --yes")
    assert stack.image() == A and stack.outputs["imageHistory"] == [A, B, C]
    stack.run(runbook("rollback"))
    assert stack.image() == B
    assert stack.outputs["imageHistory"] == [B, A, C]  # and a second rollback undoes the first


def test_canary_then_promote_then_rollback_as_the_docs_say(tmp_path: Path) -> None:
    stack = Stack(tmp_path, "prod", {**BEHIND_GATEWAY, "image": A}, {"imageHistory": [A, B]})
    stack.run(runbook("canary"), NEW_IMAGE=D)
    assert (stack.image(), stack.image("clawbot-canary")) == (A, D)
    assert stack.outputs["canary"]["image"] == D and stack.outputs["imageHistory"] == [A, B]

    stack.run(runbook("promote"))
    assert (stack.image(), stack.deployment("clawbot-canary")) == (D, None)
    assert stack.outputs["canary"] is None and stack.outputs["imageHistory"] == [D, A, B]

    stack.run(runbook("rollback"))
    assert stack.image() == A and stack.outputs["imageHistory"] == [A, D, B]


def test_stopping_a_canary_leaves_the_stable_set_as_it_was(tmp_path: Path) -> None:
    stack = Stack(tmp_path, "prod", {**BEHIND_GATEWAY, "image": A}, {"imageHistory": [A]})
    stack.run(runbook("canary"), NEW_IMAGE=D)
    before = stack.deployment("clawbot")
    stack.run(runbook("stop-canary"))
    assert stack.deployment("clawbot-canary") is None and stack.deployment("clawbot") == before
    assert stack.outputs["imageHistory"] == [A]


def test_the_rollback_runbook_stops_when_there_is_nothing_to_go_back_to(tmp_path: Path) -> None:
    stack = Stack(tmp_path, "prod", {"image": A}, {})
    stack.run("pulumi up --yes")
    done = subprocess.run(
        ["bash", "-c", runbook("rollback")], cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode != 0 and stack.image() == A
