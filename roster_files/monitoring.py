"""Prometheus' scrape jobs for compose's monitoring profile: one per API service."""

from __future__ import annotations

from pathlib import Path
from string import Template

from roster_files.common import HEADER, scalar
from service_roster import Service
from service_roster.nginx_conf import COMPOSE_PORT

PROMETHEUS = Template(HEADER + """\
# Prometheus for `docker compose --profile monitoring up`: every API replica (found through
# Docker's DNS, so scaled replicas are scraped too) and TF Serving's own metrics
# (tfserving/models/monitoring.config). Local mode renders the same jobs with static targets
# into .run/prometheus.yml (local_stack).
global:
  scrape_interval: 5s
  evaluation_interval: 15s

scrape_configs:
$jobs
  - job_name: tfserving
    metrics_path: /monitoring/prometheus/metrics
    static_configs:
      - targets: ["tfserving:8501"]
""")
PROMETHEUS_JOB = Template(f"""\
  - job_name: $name
    dns_sd_configs:
      - names: [$name]
        type: A
        port: {COMPOSE_PORT}
        refresh_interval: 10s""")


def prometheus_config(services: list[Service], repo: Path) -> str:
    """A job per API service, named as the service (the dashboard groups by job)."""
    return PROMETHEUS.substitute(jobs="\n".join(PROMETHEUS_JOB.substitute(name=scalar(s.name)) for s in services))
