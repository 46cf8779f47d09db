"""Configuration from environment variables; each variable's name and default are declared once,
on the settings class of the service that reads it."""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T", bound="ServiceSettings")


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


@dataclasses.dataclass(frozen=True)
class ServiceSettings:
    """What every service needs to reach its model; services subclass this with their own limits."""

    tfserving_address: str = env("TFSERVING_GRPC_ADDRESS", "127.0.0.1:8500")
    model_name: str = env("MODEL_NAME", "")
    model_signature: str = env("MODEL_SIGNATURE", "serving_default")
    # A version label (e.g. "stable") to ask for instead of the newest version: moving the label
    # in models.config switches every worker at once, without a restart.
    model_version_label: str = env("MODEL_VERSION_LABEL", "")
    model_timeout_seconds: float = env("MODEL_TIMEOUT_SECONDS", 10.0)
    model_retries: int = env("MODEL_RETRIES", 2)
    readiness_cache_seconds: float = env("READINESS_CACHE_SECONDS", 1.0)
    retry_after_seconds: int = env("RETRY_AFTER_SECONDS", 1)
    max_body_bytes: int = env("MAX_BODY_BYTES", 1024 * 1024)
    # Coalesce this worker's concurrent requests into one Predict call (service_kit.batching).
    model_batching: bool = env("MODEL_BATCHING", True)
    model_max_batch_size: int = env("MODEL_MAX_BATCH_SIZE", 64)
    # Examples waiting for a batched call, per worker; past it requests are refused at once (503).
    model_max_queued: int = env("MODEL_MAX_QUEUED", 1024)
    # nginx logs every request with its request id; the API adds a line for failures and slow
    # requests only (one JSON line per success cost ~7% of a text-api worker's CPU, bench/profile.py).
    access_log_all: bool = env("ACCESS_LOG_ALL", False)
    access_log_slow_ms: float = env("ACCESS_LOG_SLOW_MS", 1000.0)
    # gunicorn workers per instance; 0: one per CPU the machine has (containers here set 1).
    web_concurrency: int = env("WEB_CONCURRENCY", 0)

    def worker_processes(self) -> int:
        return self.web_concurrency or os.cpu_count() or 1

    @classmethod
    def from_env(cls: type[T], environ: Mapping[str, str] | None = None, **overrides: Any) -> T:
        """Read every field's variable; a value that does not parse stops the service at start."""
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
