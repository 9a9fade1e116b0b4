"""ClawBot chat service: a quantized LLM behind a batching engine on port 18789.

Kept import-light on purpose: `infra/` imports `app.access.keyfile` and `app.observability.metrics`
without pulling in torch or transformers.
"""
