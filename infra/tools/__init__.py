"""Tooling around the program, never imported by it: the offline synth and its Pulumi mocks, and the deploy
workflow's canary soak."""
