"""A rollout's thresholds and pace: environment variables of the rollout's command, each default
stated once here (services/README.md lists them; a test keeps the two in step)."""

from __future__ import annotations

import dataclasses

from service_kit.core.settings import EnvSettings, env


@dataclasses.dataclass(frozen=True)
class RolloutSettings(EnvSettings):
    # Preflight: the candidate's median time on its warm-up records at most this many times the live
    # version's on the same records (alternated, on the same model servers).
    preflight_latency_factor: float = env("ROLLOUT_PREFLIGHT_LATENCY_FACTOR", 2.0)
    preflight_rounds: int = env("ROLLOUT_PREFLIGHT_ROUNDS", 20)
    # How long the candidate may take to load on every model server.
    load_timeout_seconds: float = env("ROLLOUT_LOAD_TIMEOUT_SECONDS", 120.0)
    # Shadow: this share of live calls also goes to the candidate, off the callers' path, until this
    # many answers were compared; it passes when this share of them agree (lstm: the same label;
    # cv_sod: masks with IoU >= 0.9; a service's `compare` hook decides).
    shadow_percent: float = env("ROLLOUT_SHADOW_PERCENT", 25.0)
    shadow_min_compared: int = env("ROLLOUT_SHADOW_MIN_COMPARED", 100)
    min_agreement: float = env("ROLLOUT_MIN_AGREEMENT", 0.98)
    # Canary: the candidate answers these shares of the calls in turn, each for at least
    # step_seconds and step_min_answers of its answers, while its error rate and its mean call time
    # (against the live version's in the same step) stay within these.
    canary_steps: str = env("ROLLOUT_CANARY_STEPS", "5,25,50")
    step_seconds: float = env("ROLLOUT_STEP_SECONDS", 10.0)
    step_min_answers: int = env("ROLLOUT_STEP_MIN_ANSWERS", 30)
    max_error_rate: float = env("ROLLOUT_MAX_ERROR_RATE", 0.01)
    max_latency_factor: float = env("ROLLOUT_MAX_LATENCY_FACTOR", 1.5)
    # A stage that has not seen enough traffic to judge by then stops the rollout (nothing promoted).
    stage_timeout_seconds: float = env("ROLLOUT_STAGE_TIMEOUT_SECONDS", 300.0)

    @property
    def canary_percents(self) -> list[float]:
        steps = [float(step) for step in self.canary_steps.split(",") if step.strip()]
        if not steps or any(not 0 < step < 100 for step in steps):
            raise ValueError(f"ROLLOUT_CANARY_STEPS: {self.canary_steps!r}: shares between 0 and 100, comma-separated")
        return steps
