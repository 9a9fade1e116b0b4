"""The ClawBot policy pack: `pulumi preview --policy-pack policy` refuses a change that breaks a guardrail."""

from guardrails import POLICIES
from pulumi_policy import EnforcementLevel, PolicyPack

PolicyPack(
    name="clawbot-guardrails",
    policies=POLICIES,
    enforcement_level=EnforcementLevel.MANDATORY,
)
