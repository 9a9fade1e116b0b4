"""Metrics and structured logs: the names infra/ alerts and dashboards rely on."""
