"""The monitoring profile: Prometheus's scrape config, Grafana's provisioning and dashboard, and
the dashboard's queries checked against the metrics the running stack really exports (scraped
through the config local mode renders, so that config is exercised too). The API services' jobs
are written from the roster by `./stack generate` (tests/roster_files/test_generated_files.py)."""

from __future__ import annotations

import json
import re

import requests
import yaml

from tests.conftest import API_NAMES, REPO_ROOT

MONITORING = REPO_ROOT / "monitoring"
DASHBOARD = json.loads((MONITORING / "grafana" / "dashboards" / "model-serving.json").read_text())
PROMQL_WORDS = {"sum", "count", "avg", "min", "max", "rate", "irate", "increase", "histogram_quantile", "by",
                "without", "on", "ignoring", "bool", "and", "or", "unless", "e"}
PROMETHEUS_OWN = {"up"}
# Exported only while a rollout runs (its labels name the candidate): tests/faults/test_model_rollout.py
# checks the dashboard's rollout queries against an instance's metrics during one.
DURING_A_ROLLOUT = "rollout_"


def dashboard_queries() -> list[str]:
    return [target["expr"] for panel in DASHBOARD["panels"] for target in panel["targets"]]


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers outside label matchers and grouping lists."""
    bare = re.sub(r"\{[^}]*\}|\b(by|without|on|ignoring)\s*\([^)]*\)|\[[^\]]*\]|\"[^\"]*\"", " ", expr)
    names = set(re.findall(r"(?<![\w:.])[a-zA-Z_:][a-zA-Z0-9_:]*", bare)) - PROMQL_WORDS
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in names}


def exported_names(text: str) -> set[str]:
    names = {line.split("{")[0].split()[0] for line in text.splitlines() if line and not line.startswith("#")}
    return names | {re.sub(r"_(bucket|sum|count|total|created)$", "", name) for name in names}


def test_the_dashboard_is_grafana_json_on_the_provisioned_datasource():
    datasource = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    provider = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/dashboards.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    assert DASHBOARD["uid"] and DASHBOARD["title"] and isinstance(DASHBOARD["schemaVersion"], int)
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    for panel in DASHBOARD["panels"]:
        assert panel["datasource"]["uid"] == uid and panel["targets"], panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
    titles = " ".join(panel["title"].lower() for panel in DASHBOARD["panels"])
    for topic in ("request rate", "errors", "latency", "model-server", "batching", "replicas up"):
        assert topic in titles, topic


def test_metric_name_extraction():
    assert metric_names('histogram_quantile(0.99, sum by (le, route) (rate(x_seconds_bucket{a="b"}[1m])))') \
        == {"x_seconds"}
    assert metric_names("sum by (job) (up) / 1e6") == {"up"}


def test_prometheus_scrapes_every_replica_and_tf_servings_metrics():
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for api in API_NAMES:  # every replica: Docker's DNS answers with each one's address
        assert jobs[api]["dns_sd_configs"][0]["type"] == "A", api
    monitoring_config = (REPO_ROOT / "tfserving" / "models" / "monitoring.config").read_text()
    assert f'path: "{jobs["tfserving"]["metrics_path"]}"' in monitoring_config
    assert jobs["tfserving"]["static_configs"][0]["targets"] == ["tfserving:8501"]


def test_every_dashboard_query_names_metrics_the_stack_exports(stack):
    requests.post(f"{stack.url}/lstm", json={"line": "很好"}, timeout=10).raise_for_status()
    image = (REPO_ROOT / "bench" / "images" / "coffee_600x400.jpg").read_bytes()
    requests.post(f"{stack.url}/cv_sod", data=image, headers={"Content-Type": "image/jpeg"}, timeout=30)
    local = yaml.safe_load((stack.run_dir / "prometheus.yml").read_text())
    exported: set[str] = set()
    for job in local["scrape_configs"]:
        targets = job["static_configs"][0]["targets"]
        assert targets, job["job_name"]
        for target in targets:
            reply = requests.get(f"http://{target}{job.get('metrics_path', '/metrics')}", timeout=5)
            assert reply.ok, (job["job_name"], target)
            exported |= exported_names(reply.text)
    wanted = {name for name in set().union(*map(metric_names, dashboard_queries()))
              if not name.startswith(DURING_A_ROLLOUT)}
    assert wanted - PROMETHEUS_OWN <= exported, sorted(wanted - PROMETHEUS_OWN - exported)
