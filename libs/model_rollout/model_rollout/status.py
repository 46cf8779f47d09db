"""`rollout status`: where each model's rollout stands, from the state files."""

from __future__ import annotations

import time
from pathlib import Path

from service_kit.core import rollout_state as state


def describe(directory: Path) -> str:
    files = sorted(Path(directory).glob("*.json")) if Path(directory).is_dir() else []
    if not files:
        return "no rollout yet"
    lines = []
    for file in files:
        rollout = state.read(file.parent, file.stem)
        if rollout is None:
            continue
        watched = "" if not rollout.active else (
            " (its controller is running)" if rollout.watched() else
            f" (no controller for {time.time() - rollout.heartbeat:.0f} s: the candidate gets no traffic; "
            f"run the rollout again to take it up)")
        lines.append(f"{rollout.model}: version {rollout.live} -> {rollout.candidate}, {rollout.stage}{watched}")
        if rollout.stage == "canary":
            lines.append(f"  canary {rollout.canary_percent:g}% of calls, shadow {rollout.shadow_percent:g}%")
        if rollout.reason:
            lines.append(f"  why: {rollout.reason}")
        lines += [f"  {step['at']}  {step['stage']:<11} {step['message']}" for step in rollout.history]
    return "\n".join(lines)
