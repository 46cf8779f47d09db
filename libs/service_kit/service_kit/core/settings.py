"""Configuration from environment variables; each variable's name and default are declared once,
on the settings class of the service that reads it."""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from service_roster import Service

T = TypeVar("T", bound="ServiceSettings")
E = TypeVar("E", bound="EnvSettings")

BATCHING_MODES = ("deadline", "coalesce", "off")
UNROSTERED_MAX_BODY_BYTES = 1024 * 1024


def env(name: str, default: Any) -> Any:
    """A settings field read from the environment variable `name`."""
    return dataclasses.field(default=default, metadata={"env": name})


def _parse(raw: str, kind: type) -> Any:
    if kind is bool:
        if raw.strip().lower() in {"1", "true", "yes", "on"}:
            return True
        if raw.strip().lower() in {"0", "false", "no", "off", ""}:
            return False
        raise ValueError(f"not a boolean: {raw!r}")
    return kind(raw)


class EnvSettings:
    """A frozen dataclass whose fields are read from environment variables (`env`)."""

    @classmethod
    def from_env(cls: type[E], environ: Mapping[str, str] | None = None, **overrides: Any) -> E:
        """Read every field's variable; a value that does not parse stops the program at start."""
        environ = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            name = field.metadata.get("env")
            if name and name in environ:
                try:
                    values[field.name] = _parse(environ[name], hints[field.name])
                except ValueError as error:
                    raise ValueError(f"environment variable {name}: {error}") from None
        return cls(**{**values, **overrides})

    @classmethod
    def variables(cls) -> dict[str, Any]:
        """Environment variable -> default, for docs and for the test that keeps them in sync."""
        return {f.metadata["env"]: f.default for f in dataclasses.fields(cls) if "env" in f.metadata}


@dataclasses.dataclass(frozen=True)
class ServiceSettings(EnvSettings):
    """What every service needs to reach its model; services subclass this with their own limits."""

    tfserving_address: str = env("TFSERVING_GRPC_ADDRESS", "127.0.0.1:8500")
    # "": the model the service's roster entry names (services/<name>/service.toml; with_roster_defaults).
    model_name: str = env("MODEL_NAME", "")
    model_signature: str = env("MODEL_SIGNATURE", "serving_default")
    # A version label (e.g. "stable") to ask for instead of the newest version: moving the label
    # in models.config switches every worker at once, without a restart.
    model_version_label: str = env("MODEL_VERSION_LABEL", "")
    model_timeout_seconds: float = env("MODEL_TIMEOUT_SECONDS", 10.0)
    # Where the rollouts' state files are (model_rollout: `<model repository>/rollouts`); "": no
    # rollout is followed, the model is asked for as above.
    rollout_dir: str = env("ROLLOUT_DIR", "")
    model_retries: int = env("MODEL_RETRIES", 2)
    readiness_cache_seconds: float = env("READINESS_CACHE_SECONDS", 1.0)
    retry_after_seconds: int = env("RETRY_AFTER_SECONDS", 1)
    # 0: the roster entry's body_limit (nginx's client_max_body_size for its routes).
    max_body_bytes: int = env("MAX_BODY_BYTES", 0)
    # How long a request may take when it does not say (X-Request-Timeout-Ms); requests that
    # cannot be answered within their deadline are refused early with 503 (service_kit.core.batch_rules).
    # Long by default: callers that want answers within a bound say so. With 1 s, 1,000 closed-loop
    # connections to /lstm were refused en masse: each refusal answered at once was sent again at
    # once, and refusals (a gunicorn request each) took the CPU that answers needed
    # (bench/results/compare-issue15.md: 235,015 503s in 45 s).
    request_timeout_ms: float = env("REQUEST_TIMEOUT_MS", 10_000.0)
    # How this worker's concurrent requests share Predict calls (service_kit.core.batch_rules):
    # "deadline" (each request's deadline and the model's recent latency decide when a batch
    # leaves), "coalesce" (whatever queued goes at once, no deadline rules), "off" (a call each).
    model_batching: str = env("MODEL_BATCHING", "deadline")
    model_max_batch_size: int = env("MODEL_MAX_BATCH_SIZE", 64)
    # Examples waiting for a batched call, per worker; past it requests are refused at once (503).
    model_max_queued: int = env("MODEL_MAX_QUEUED", 1024)
    # The longest a batch is held for company; the batcher uses less when the model is faster.
    model_batch_window_max_ms: float = env("MODEL_BATCH_WINDOW_MAX_MS", 25.0)
    # Kept between a predicted answer and a deadline (time to send the answer back).
    model_deadline_margin_ms: float = env("MODEL_DEADLINE_MARGIN_MS", 2.0)
    # nginx logs every request with its request id; the API adds a line for failures and slow
    # requests only (one JSON line per success cost ~7% of a text-api worker's CPU, bench/profile.py).
    access_log_all: bool = env("ACCESS_LOG_ALL", False)
    access_log_slow_ms: float = env("ACCESS_LOG_SLOW_MS", 1000.0)
    # gunicorn workers per instance; 0: one per CPU the machine has (containers here set 1).
    web_concurrency: int = env("WEB_CONCURRENCY", 0)

    def __post_init__(self) -> None:
        # The older boolean form still works: true is the default batcher, false no batching.
        mode = {"1": "deadline", "true": "deadline", "yes": "deadline", "on": "deadline",
                "0": "off", "false": "off", "no": "off", "": "off"}.get(str(self.model_batching).strip().lower(),
                                                                     str(self.model_batching).strip().lower())
        if mode not in BATCHING_MODES:
            raise ValueError(f"environment variable MODEL_BATCHING: {self.model_batching!r} is not one of "
                             f"{', '.join(BATCHING_MODES)}")
        object.__setattr__(self, "model_batching", mode)

    def with_roster_defaults(self: T, entry: Service | None) -> T:
        """These settings, with what the service's roster entry declares wherever they hold no value
        of their own: its model and its body limit, stated once, in its service.toml (an app outside
        the roster, a test's, gets a 1 MiB body limit)."""
        declared = {"model_name": entry.model if entry else "",
                    "max_body_bytes": entry.body_limit_bytes if entry else UNROSTERED_MAX_BODY_BYTES}
        missing = {name: value for name, value in declared.items() if value and not getattr(self, name)}
        return dataclasses.replace(self, **missing) if missing else self

    def worker_processes(self) -> int:
        return self.web_concurrency or os.cpu_count() or 1
