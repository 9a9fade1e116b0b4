"""The program's building blocks: one Pulumi ComponentResource per module (type token `clawbot:infra:<Name>`), plus
the pure spec builders the chat Deployments and Service use (`chat_pod`, `load_balancer`)."""
