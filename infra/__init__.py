"""The Pulumi program's building blocks: settings, one ComponentResource per module, and the offline synth."""
