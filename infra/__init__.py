"""The Pulumi program `__main__.py` composes: `settings/` (stack config by topic), `components/` (one
ComponentResource per module), `contract.py` (what infra/ and app/ agree on), and `tools/` (synth, mocks, canary check)."""
