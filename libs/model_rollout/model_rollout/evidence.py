"""What the API instances saw of a rollout, summed over all of them: each instance's /metrics
(service_kit.core.rollout's counters, its workers already summed), read by the controller once a
second. A stage judges the difference between two readings: what happened since it began."""

from __future__ import annotations

import dataclasses
import socket
import urllib.request
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

from prometheus_client.parser import text_string_to_metric_families


@dataclasses.dataclass(frozen=True)
class Evidence:
    agreed: float = 0.0
    disagreed: float = 0.0
    distance: float = 0.0  # summed over the compared answers
    canary_answers: float = 0.0
    canary_errors: float = 0.0
    shadow_errors: float = 0.0
    live_seconds: float = 0.0  # summed call times, and how many calls
    live_calls: float = 0.0
    canary_seconds: float = 0.0
    canary_calls: float = 0.0

    @property
    def compared(self) -> float:
        return self.agreed + self.disagreed

    @property
    def agreement(self) -> float:
        return self.agreed / self.compared if self.compared else 1.0

    @property
    def canary_error_rate(self) -> float:
        asked = self.canary_answers + self.canary_errors
        return self.canary_errors / asked if asked else 0.0

    def latency_factor(self) -> float | None:
        """The candidate's mean call time over the live version's, in the same stretch of time."""
        if not self.canary_calls or not self.live_calls or not self.live_seconds:
            return None
        return (self.canary_seconds / self.canary_calls) / (self.live_seconds / self.live_calls)

    def __sub__(self, earlier: Evidence) -> Evidence:
        # An instance restarted in between starts its counters again: never less than nothing.
        return Evidence(**{f.name: max(0.0, getattr(self, f.name) - getattr(earlier, f.name))
                           for f in dataclasses.fields(self)})


def read_metrics(text: str, model: str, candidate: int) -> Evidence:
    values = dict.fromkeys((f.name for f in dataclasses.fields(Evidence)), 0.0)
    version = str(candidate)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model") != model:
                continue
            if sample.name == "rollout_shadow_compared_total" and labels.get("version") == version:
                values["agreed" if labels.get("agreed") == "true" else "disagreed"] += sample.value
            elif sample.name == "rollout_shadow_distance_total" and labels.get("version") == version:
                values["distance"] += sample.value
            elif sample.name == "rollout_calls_total" and labels.get("version") == version:
                if labels.get("role") == "canary":
                    values["canary_answers" if labels.get("outcome") == "ok" else "canary_errors"] += sample.value
                elif labels.get("role") == "shadow" and labels.get("outcome") == "error":
                    values["shadow_errors"] += sample.value
            elif sample.name in ("rollout_call_seconds_sum", "rollout_call_seconds_count") \
                    and labels.get("role") in ("live", "canary"):
                kind = "seconds" if sample.name.endswith("_sum") else "calls"
                values[f"{labels['role']}_{kind}"] += sample.value
    return Evidence(**values)


def instance_urls(spec: str) -> list[str]:
    """`http://host:port`, one URL for each address the host name has (compose's DNS names every
    replica of a service)."""
    parts = urlsplit(spec)
    try:
        addresses = sorted({info[4][0] for info in socket.getaddrinfo(parts.hostname, parts.port,
                                                                       type=socket.SOCK_STREAM)})
    except OSError:
        return []
    return [urlunsplit((parts.scheme, f"{address}:{parts.port}", "", "", "")) for address in addresses]


def gather(instances: Callable[[], list[str]], model: str, candidate: int, timeout: float = 2.0) -> Evidence:
    """Every instance's counters summed; one that does not answer now is left out of this reading."""
    total = Evidence()
    for url in instances():
        try:
            with urllib.request.urlopen(f"{url}/metrics", timeout=timeout) as reply:
                text = reply.read().decode("utf-8")
        except OSError:  # refused, reset, timed out, or an HTTP error status (URLError, HTTPError)
            continue
        found = read_metrics(text, model, candidate)
        total = Evidence(**{f.name: getattr(total, f.name) + getattr(found, f.name)
                            for f in dataclasses.fields(Evidence)})
    return total
