"""Tooling around the program, never imported by it: the offline synth and its Pulumi mocks, the deploy workflow's
canary soak and share check, the CI step that sets a stack's secrets, and the update-wait budget."""
