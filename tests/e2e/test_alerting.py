"""Alerts that reach someone, for real: the service, a real Prometheus scraping its metrics port with the
synthesized rules, a real Alertmanager with the config the Prometheus Operator would generate from the synthesized
AlertmanagerConfig, and an SMTP sink, all on loopback.

One API key is driven past the abnormal-usage threshold and generations run into their timeout before their first
token (504); each alert
must arrive as a mail naming the key id and the namespace. Then, against the same Prometheus, every dashboard
panel that reads the service's series must return data.

Only what makes the test quick is changed, through stack config: the key threshold (which the app's
ABNORMAL_KEY_PER_MINUTE follows), the windows, Alertmanager's group wait, plain SMTP to the sink; and, outside the
stack, the scrape interval (1s), the generation timeout (1s) and the prefill chunk (256 tokens), so that a long
prompt is a real 504: its first token cannot come within the timeout.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from bench.waiting import wait_until
from infra.components.dashboard import DASHBOARD_PATH
from infra.tools.synth import synthesize
from tests.e2e.server import Server, start_server
from tests.infra.components.alerts.operator import (
    Endpoint,
    alertmanager_config,
    rule_file,
    scrape_config,
    stack_secrets,
)
from tests.infra.components.test_dashboard import EXTERNAL_METRICS
from tests.infra.promql import metric_names
from tests.monitoring import Daemon, Mailbox, alertmanager, body_text, prometheus, query, smtp_sink, write_yaml

NAMESPACE = "clawbot"
POD = "clawbot-6d4f9b7c8-x2x7q"  # the name endpoints discovery would report for the one chat pod
KEY_THRESHOLD = 20  # requests a minute
BURST = 40  # /v1/models calls: well past the threshold within the key window
TIMEOUTS = 6  # generations that run into the 1 s timeout before their first token
RATE_LIMIT = 30  # per key and minute: the tail of the burst is refused, so the rate-limit panel has data too
WAIT_S = 120.0


def stack_overrides(smarthost: str) -> dict[str, Any]:
    return {
        "alertSmarthost": smarthost,
        "alertSmtpRequireTls": False,  # the sink speaks plain SMTP on loopback
        "alertGroupWait": "1s",
        "alertKeyRequestsPerMinute": KEY_THRESHOLD,
        "alertKeyWindow": "15s",
        "alertErrorRateWindow": "30s",
    }


def chat(srv: Server, **body: Any) -> int:
    payload = {
        "model": "clawbot",
        "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse."}],
        **body,
    }
    with srv.client(headers={"Authorization": f"Bearer {srv.api_key}"}) as c:
        return c.post("/v1/chat/completions", json=payload).status_code


# About 6,600 tokens, read 256 at a time: the 1 s timeout passes before the first token, a genuine 504. (A generation
# the timeout cuts short once it has started is answered with what it generated.)
LONG_PROMPT = "Tell me a long story about a lighthouse. " * 750


def timed_out_generation(srv: Server) -> int:
    payload = {"model": "clawbot", "messages": [{"role": "user", "content": LONG_PROMPT}], "max_tokens": 512}
    with srv.client(headers={"Authorization": f"Bearer {srv.api_key}"}) as c:
        return c.post("/v1/chat/completions", json=payload).status_code


def list_models(srv: Server) -> int:
    with srv.client(headers={"Authorization": f"Bearer {srv.api_key}"}) as c:
        return c.get("/v1/models").status_code


def has_series(prom: Daemon, expr: str) -> bool:
    return bool(query(prom, expr))


def mails_for(box: Mailbox, alertname: str) -> list[str]:
    return [body_text(m) for m in box.received() if alertname in str(m.get("Subject", ""))]


def dashboard_queries(namespace: str) -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD_PATH.read_text())
    # Grafana's variables: the namespace picked at the top, and a rate window spanning this short test.
    fill = {"$namespace": namespace, "$__rate_interval": "1m"}
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in fill.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"panel {panel['title']!r}: unfilled variable in {expr}"
            out.append((panel["title"], expr))
    return out


def test_key_abuse_and_a_burst_of_5xx_are_mailed_and_the_dashboard_has_data(tmp_path: Path) -> None:
    with smtp_sink() as box:
        stack = synthesize("prod", overrides=stack_overrides(box.smarthost))
        config_map = stack.one("ConfigMap", "clawbot-config").manifest["data"]
        srv = start_server(
            tmp_path / "data",
            ABNORMAL_KEY_PER_MINUTE=config_map["ABNORMAL_KEY_PER_MINUTE"],
            RATE_LIMIT_PER_KEY=str(RATE_LIMIT),
            GENERATION_TIMEOUT_SECONDS="1",
            PREFILL_CHUNK_TOKENS="256",
            MAX_TOKENS="512",
        )
        try:
            rules = write_yaml(tmp_path / "clawbot.rules.yaml", rule_file(stack.one("PrometheusRule").manifest))
            with alertmanager(
                alertmanager_config(
                    stack.one("AlertmanagerConfig").manifest, stack_secrets(o.manifest for o in stack.find("Secret"))
                ),
                tmp_path / "am",
            ) as am:
                job = scrape_config(
                    stack.one("ServiceMonitor").manifest,
                    stack.one("Service", "clawbot-metrics").manifest,
                    Endpoint(f"127.0.0.1:{srv.metrics_port}", POD, "chat"),
                    interval="1s",
                )
                prom_config = {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(rules)],
                    "alerting": {
                        "alertmanagers": [{"static_configs": [{"targets": [am.url.removeprefix("http://")]}]}]
                    },
                    "scrape_configs": [job],
                }
                with prometheus(prom_config, tmp_path / "prometheus") as prom:
                    srv.wait_ready()
                    drive_and_check(srv, prom, box)
        finally:
            srv.stop()


def drive_and_check(srv: Server, prom: Daemon, box: Mailbox) -> None:
    # The scrape carries the labels the operator's relabelling gives a ServiceMonitor target.
    wait_until(
        "Prometheus to scrape the chat pod",
        lambda: has_series(
            prom,
            f'clawbot_model_ready{{namespace="{NAMESPACE}", pod="{POD}", container="chat", service="clawbot-metrics", '
            f'job="clawbot-metrics", endpoint="metrics"}} == 1',
        ),
        WAIT_S,
    )

    # Prime: rate() ignores a series' first sample, so each series the alerts read must exist before the burst.
    assert list_models(srv) == 200
    wait_until("a first generation to time out", lambda: timed_out_generation(srv) == 504, WAIT_S, poll_s=0)
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        assert c.post("/api/auth", json={"api_key": "ck-wrong-" + "0" * 40}).status_code == 401
    for expr in ('clawbot_key_requests_total', 'clawbot_requests_total{status="504"}', 'clawbot_auth_failures_total'):
        wait_until(f"Prometheus to see {expr}", partial(has_series, prom, expr), WAIT_S)
    key_id = query(prom, "clawbot_key_requests_total")[0]["metric"]["key_id"]

    # Response-cache lookups for the cache panel: a miss, and a hit if the first reply beat the 1 s timeout.
    for _ in range(2):
        chat(srv, max_tokens=8, temperature=0)
    with ThreadPoolExecutor(TIMEOUTS) as pool:
        statuses = list(pool.map(lambda _: timed_out_generation(srv), range(TIMEOUTS)))
    assert statuses == [504] * TIMEOUTS
    with ThreadPoolExecutor(8) as pool:
        burst = list(pool.map(lambda _: list_models(srv), range(BURST)))
    assert set(burst) <= {200, 429} and 429 in burst, burst  # refused or not, each call counts for its key

    # Each alert's mail reaches the sink, naming its namespace, and the key's names the key.
    key_mail = wait_until("the ClawbotKeyAbuse mail", lambda: mails_for(box, "ClawbotKeyAbuse"), WAIT_S)[0]
    error_mail = wait_until("the ClawbotHighErrorRate mail", lambda: mails_for(box, "ClawbotHighErrorRate"), WAIT_S)[0]
    assert f"key_id = {key_id}" in key_mail and f"namespace = {NAMESPACE}" in key_mail, key_mail
    assert f"namespace = {NAMESPACE}" in error_mail and "severity = critical" in error_mail, error_mail
    assert re.search(r"of requests in clawbot failed with 5xx", error_mail), error_mail

    check_dashboard(prom)


def check_dashboard(prom: Daemon) -> None:
    values = httpx.get(
        prom.url + "/api/v1/label/namespace/values", params={"match[]": "clawbot_model_ready"}, timeout=10
    )
    assert values.json()["data"] == [NAMESPACE]  # the dashboard's namespace variable offers the chat namespace
    needs_cluster = []
    for title, expr in dashboard_queries(NAMESPACE):
        if metric_names(expr) <= set(EXTERNAL_METRICS):
            query(prom, expr)  # evaluated, so a broken expression still fails; the exporter exists only in a cluster
            needs_cluster.append(title)
        else:  # a rate() needs two scrapes of a series that appeared during the load
            wait_until(f"panel {title!r} to show data: {expr}", partial(query, prom, expr), 30)
    assert needs_cluster == ["GPU utilization"]
