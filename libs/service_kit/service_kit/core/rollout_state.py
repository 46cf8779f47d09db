"""A rollout's state: one JSON file per model in the rollout folder (`<model repository>/rollouts/`),
written by the controller (model_rollout) and read by every API worker, in local mode and under compose alike (the
API containers mount the repository read-only). It outlives the API services, the model servers and
the controller: whoever starts reads where things stand.

What a worker does with it (service_kit.core.rollout): ask for `pinned` when set (the live version,
while the candidate is loaded beside it), copy `shadow_percent` of its calls to the candidate,
answer `canary_percent` of them from it; both only while the controller's heartbeat is fresh, so a
rollout nobody watches sends the candidate nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

ACTIVE_STAGES = ("preflight", "shadow", "canary")
FINAL_STAGES = ("promoted", "rolled_back", "stopped")
# A controller renews `heartbeat` every second; past this, workers stop shadowing and canarying.
HEARTBEAT_STALE_SECONDS = 15.0
# How often a worker looks at the file (a stat; the JSON is read again only when it changed).
WATCH_SECONDS = 0.5


@dataclasses.dataclass
class Rollout:
    model: str
    live: int
    candidate: int
    stage: str
    # The version live traffic asks for; None: whatever models.config serves (no rollout, or promoted).
    pinned: int | None = None
    shadow_percent: float = 0.0
    canary_percent: float = 0.0
    reason: str = ""  # why it stopped or rolled back
    started: float = dataclasses.field(default_factory=time.time)
    heartbeat: float = dataclasses.field(default_factory=time.time)
    history: list[dict] = dataclasses.field(default_factory=list)  # {"at", "stage", "message"}

    @property
    def active(self) -> bool:
        return self.stage in ACTIVE_STAGES

    def watched(self, now: float | None = None) -> bool:
        return self.active and (now or time.time()) - self.heartbeat < HEARTBEAT_STALE_SECONDS

    def shadow_share(self, now: float | None = None) -> float:
        return self.shadow_percent / 100 if self.stage in ("shadow", "canary") and self.watched(now) else 0.0

    def canary_share(self, now: float | None = None) -> float:
        return self.canary_percent / 100 if self.stage == "canary" and self.watched(now) else 0.0

    def record(self, stage: str, message: str) -> None:
        self.stage = stage
        self.history.append({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "stage": stage, "message": message})


def state_file(directory: Path, model: str) -> Path:
    return Path(directory) / f"{model}.json"


def read(directory: Path, model: str) -> Rollout | None:
    try:
        data = json.loads(state_file(directory, model).read_text())
    except FileNotFoundError:
        return None
    fields = {f.name for f in dataclasses.fields(Rollout)}
    return Rollout(**{key: value for key, value in data.items() if key in fields})


def write(directory: Path, rollout: Rollout) -> None:
    """Whole or not at all: a worker never reads half a file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = state_file(directory, rollout.model)
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    partial.write_text(json.dumps(dataclasses.asdict(rollout), indent=1))
    os.replace(partial, target)


class Watcher:
    """A worker's view of one model's rollout: the file is looked at every WATCH_SECONDS at most,
    read again only when it changed."""

    def __init__(self, directory: str | Path | None, model: str) -> None:
        self.path = state_file(Path(directory), model) if directory else None
        self.model = model
        self._checked = 0.0
        self._seen: tuple[int, int] | None = None
        self._rollout: Rollout | None = None

    def current(self, now: float | None = None) -> Rollout | None:
        if self.path is None:
            return None
        now = time.monotonic() if now is None else now
        if now - self._checked >= WATCH_SECONDS:
            self._checked = now
            try:
                info = self.path.stat()
                seen = (info.st_mtime_ns, info.st_size)
            except OSError:
                seen = None
            if seen != self._seen:
                try:
                    self._rollout = read(self.path.parent, self.model) if seen else None
                    self._seen = seen
                except (OSError, ValueError, TypeError):
                    pass  # unreadable now: the last state holds (the pin most of all), read again next time
        return self._rollout
