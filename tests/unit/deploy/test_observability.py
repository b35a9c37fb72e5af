"""deploy/k8s/components/observability against the code: alerts and dashboard use only series the services
export (services/chassis/metrics.py METRIC_NAMES), every alert links a runbook page that exists, and the
prod overlay really serves and declares the port the PodMonitor scrapes."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from services.chassis.metrics import METRIC_NAMES
from tests.plugins.k8s import K8S, ROOT, Obj, load_docs, pod_containers, render

COMPONENT = K8S / "components" / "observability"
RUNBOOKS = ROOT / "docs" / "runbooks"
# Series an alert may use before the service that exports them exists; each must say so in its description.
# Remove an entry once its service lands (the test below fails when a planned name is exported already).
PLANNED: dict[str, str] = {}
SERIES = re.compile(r"\bsteward_[a-z0-9_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def _one(kind: str) -> Obj:
    (obj,) = [doc for path in sorted(COMPONENT.glob("*.yaml")) for doc in load_docs(path) if doc["kind"] == kind]
    return obj  # type: ignore[no-any-return]


def _alerts() -> list[dict[str, Any]]:
    return [rule for group in _one("PrometheusRule")["spec"]["groups"] for rule in group["rules"] if "alert" in rule]


def _series(expr: str) -> set[str]:
    names = set()
    for name in SERIES.findall(expr):
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name[: -len(suffix)] in METRIC_NAMES:
                name = name[: -len(suffix)]
        names.add(name)
    return names


def _dashboard() -> dict[str, Any]:
    (config_map,) = load_docs(COMPONENT / "dashboard.yaml")
    return json.loads(config_map["data"]["steward.json"])  # type: ignore[no-any-return]


def test_the_alerts_the_issue_asks_for_are_there() -> None:
    used = set().union(*(_series(rule["expr"]) for rule in _alerts()))
    for series in (
        "steward_rpc_requests_total",  # error ratio
        "steward_outbox_oldest_age_seconds",
        "steward_consumer_pending_messages",  # consumer lag
        "steward_consumer_dead_lettered_total",  # DLQ growth
        "steward_circuit_breaker_state",
        "steward_transit_sealed",
        "steward_tls_certificate_expiry_seconds",
        "steward_dsr_overdue_requests",
    ):
        assert series in used, series


@pytest.mark.parametrize("rule", _alerts(), ids=lambda rule: rule["alert"])
def test_every_alert_links_a_runbook_page_that_exists(rule: dict[str, Any]) -> None:
    url = rule["annotations"]["runbook_url"]
    match = re.search(r"/docs/runbooks/([a-z0-9-]+\.md)$", url)
    assert match, f"{rule['alert']}: runbook_url {url} does not point at docs/runbooks/<page>.md"
    page = RUNBOOKS / match.group(1)
    assert page.is_file(), f"{rule['alert']}: {page} does not exist"
    assert rule["alert"] in page.read_text(), f"{page.name} does not name the alert {rule['alert']}"


@pytest.mark.parametrize("rule", _alerts(), ids=lambda rule: rule["alert"])
def test_every_alert_uses_only_exported_series(rule: dict[str, Any]) -> None:
    series = _series(rule["expr"])
    assert series, f"{rule['alert']} reads no steward_ series"
    for name in series:
        if name in PLANNED:
            assert "not built yet" in rule["annotations"]["description"], f"{rule['alert']}: say {name} is planned"
            continue
        assert name in METRIC_NAMES, f"{rule['alert']} uses {name}, which no service exports"


def test_planned_series_are_not_exported_yet() -> None:
    assert not set(PLANNED) & set(METRIC_NAMES), "a planned series is exported now: drop it from PLANNED"


def test_the_dashboard_uses_only_exported_or_planned_series() -> None:
    exprs = [target["expr"] for panel in _dashboard()["panels"] for target in panel["targets"]]
    used = set().union(*(_series(expr) for expr in exprs))
    assert used - set(METRIC_NAMES) <= set(PLANNED)
    assert set(METRIC_NAMES) - {"steward_dek_cache_hit_ratio", "steward_dek_cache_entries"} <= used | {
        # Not graphed: their rate/ratio panels carry the information.
        "steward_rpc_duration_seconds",
        "steward_consumer_ack_pending_messages",
        "steward_consumer_handled_total",
        "steward_transit_up",
        "steward_transit_sealed",
        "steward_db_pool_size",
    }


def test_prod_serves_metrics_on_the_port_its_pods_declare_and_the_podmonitor_scrapes() -> None:
    objects = render(K8S / "overlays" / "prod")
    endpoints = [e["port"] for o in objects if o["kind"] == "PodMonitor" for e in o["spec"]["podMetricsEndpoints"]]
    assert endpoints == ["metrics"]
    maps = {o["metadata"]["name"]: o["data"] for o in objects if o["kind"] == "ConfigMap"}
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    assert deployments
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        (container,) = [c for c in pod_containers(deployment) if c["name"] == name]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert {"grpc", "health"} <= set(ports), f"{name}: the component's port patch lost a base port"
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            env.update(maps[source["configMapRef"]["name"]])
        assert env.get(f"STEWARD_{name.upper()}__METRICS__PORT") == str(ports["metrics"]), name


def test_the_component_is_in_the_prod_overlay_only() -> None:
    for overlay, included in (("prod", True), ("dev", False)):
        text = (K8S / "overlays" / overlay / "kustomization.yaml").read_text()
        assert ("components/observability" in text) is included
