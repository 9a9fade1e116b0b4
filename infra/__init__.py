"""The Pulumi program `__main__.py` composes: `settings/` (stack config by topic), `components/` (one
ComponentResource per module), `preflight.py` (the cluster and replacement checks every component waits for),
`contract.py` (what infra/ and app/ agree on), and `tools/` (synth, mocks, canary check, CI helpers)."""
