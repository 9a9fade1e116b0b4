"""CI: can this stack serve its canary at the weight asked for? Run after `pulumi config set --path canary.image`.

    python -m infra.tools.canary_share --stack prod

Exit 0: it can (an HTTPRoute on the stack's Gateway gives the weight at every replica count, or the Service's pod
count gives it within 2 points); the share is printed. Exit 3: it cannot, and preview would refuse the canary; the
reason, with the share the Service can give, is printed, and the deploy workflow releases without a canary. Exit 2:
the stack file is refused for another reason, which `pulumi up` would report too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from infra.settings import ConfigError, parse_settings
from infra.settings.checks import CanaryShareError
from infra.tools.synth import SynthError, read_stack_config


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.tools.canary_share", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--stack", required=True)
    ns = parser.parse_args(argv)
    try:
        settings = parse_settings(read_stack_config(ns.stack, Path.cwd()), stack=ns.stack)
    except CanaryShareError as exc:
        print(f"canary_share: {exc}")
        return 3
    except (ConfigError, SynthError) as exc:
        print(f"canary_share: {exc}", file=sys.stderr)
        return 2
    canary = settings.release.canary
    if canary is None:
        print(f"canary_share: stack {ns.stack} has no canary")
        return 0
    low, high = settings.scaling.min_replicas, settings.scaling.max_replicas
    how = "by the HTTPRoute's weights" if canary.split_by_weight else "by ready pods"
    print(
        f"canary_share: {canary.replicas} canary pod(s) take {canary.share_percent(low):g}% of the requests at "
        f"{low} stable pods and {canary.share_percent(high):g}% at {high}, {how} (asked: {canary.weight_percent}%)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
