"""The chat pods' data volume (/app/data: the model cache and, with one replica, the conversations), and the claim
restored from a snapshot when the stack asks for one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.components.aliases import formerly_under
from infra.settings.data import DataVolumeSettings, restored_claim_name

SNAPSHOT_API_GROUP = "snapshot.storage.k8s.io"


@dataclass
class DataVolumeArgs:
    namespace: pulumi.Input[str]
    claim_name: str
    volume: DataVolumeSettings
    restore_snapshot: str = ""  # a VolumeSnapshot to make a new claim from; '' mounts the original claim
    protect: bool = False  # production: `pulumi destroy` refuses until someone runs `pulumi state unprotect`
    labels: dict[str, str] = field(default_factory=dict)


class DataVolume(pulumi.ComponentResource):
    mounted_claim_name: str  # the claim the pods mount: the original, or the one restored from a snapshot

    def __init__(self, name: str, args: DataVolumeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("clawbot:infra:DataVolume", name, None, opts)
        aliases = formerly_under(opts)  # ChatService held both claims before this component existed
        self.claim = k8s.core.v1.PersistentVolumeClaim(
            name,
            metadata={"name": args.claim_name, "namespace": args.namespace, "labels": args.labels},
            spec=_claim_spec(args.volume),
            # The model cache and the conversations: `pulumi destroy` leaves the claim, and production refuses to
            # delete it at all until someone runs `pulumi state unprotect` on purpose.
            opts=pulumi.ResourceOptions(parent=self, aliases=aliases, retain_on_delete=True, protect=args.protect),
        )
        self.mounted_claim_name = args.claim_name
        self.restored_claim = None
        if args.restore_snapshot:
            # A restore makes a new claim from a snapshot and points the pods at it; the original stays as it was.
            self.mounted_claim_name = restored_claim_name(args.restore_snapshot)
            self.restored_claim = k8s.core.v1.PersistentVolumeClaim(
                f"{name}-restored",
                metadata={"name": self.mounted_claim_name, "namespace": args.namespace, "labels": args.labels},
                spec={
                    **_claim_spec(args.volume),
                    "dataSource": {
                        "apiGroup": SNAPSHOT_API_GROUP,
                        "kind": "VolumeSnapshot",
                        "name": args.restore_snapshot,
                    },
                },
                # Restoring from another snapshot later leaves this claim in the cluster, as destroy does.
                opts=pulumi.ResourceOptions(parent=self, aliases=aliases, retain_on_delete=True),
            )
        self.register_outputs({"claimName": self.mounted_claim_name})


def _claim_spec(volume: DataVolumeSettings) -> dict[str, Any]:
    return {
        "accessModes": [volume.access_mode],
        "storageClassName": volume.storage_class,
        "resources": {"requests": {"storage": volume.size}},
    }
