"""Aliases that keep an existing stack's resources in place when the component tree changes.

Pulumi names a resource by its type and its parents' types (its URN). Moving a resource under a new component
changes its URN, and `pulumi up` would carry that out as create-then-delete: for the data volume's claim, a new
empty volume (or, with server-side apply, the old object deleted after the new one adopted it). An alias naming
the old URN tells the engine it is the same resource, so the move is a no-op on the cluster.
"""

from __future__ import annotations

import pulumi


def formerly_under(opts: pulumi.ResourceOptions | None) -> list[pulumi.Alias]:
    """For the children of a component inserted between them and their old parent: stacks made before the component
    existed hold each child, with the same name and type, directly under the component's own parent."""
    parent = opts.parent if opts else None
    return [pulumi.Alias(parent=parent)] if parent is not None else []
