"""A rollout of version N of a model, stage by stage (`python -m model_rollout MODEL N`):

  preflight  nothing reaches the candidate: live traffic is pinned to the live version by number,
             the candidate is loaded beside it on every model server, its signature is checked
             against the live one's, and its warm-up records are timed on both versions;
  shadow     a share of live calls is copied to it and the answers compared (agreement);
  canary     it answers a rising share of the calls while its errors, its call time against the
             live version's and its agreement stay within the thresholds (model_rollout.settings);
  promoted   models.config serves it alone, labelled `stable`;
  or rolled_back / stopped: models.config serves the live version alone, and says why.

It acts through what both the official TF Serving and ours honour: models.config (polled, and
reloaded at once where the model server accepts HandleReloadConfigRequest from here: ours only from
its own machine) and the version labels `stable` and `canary`. The state file
(model_rollout.state) tells every API worker what to do; the workers' /metrics tell the controller
what happened (model_rollout.evidence). One controller per model at a time (a lock file beside the
state); run again with the same arguments, a controller takes up a rollout where it stood.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

from model_rollout import evidence, models_config, signatures, warmup_records
from model_rollout.settings import RolloutSettings
from service_kit.core import rollout_state as state
from tfserving_client import ModelServerClient, ModelServerError
from tfserving_client.protos.tensorflow_serving.apis import model_management_pb2
from tfserving_client.tensors import from_tensor_proto

RELOAD_METHOD = "/tensorflow.serving.ModelService/HandleReloadConfigRequest"
# Long enough for every worker to have looked at the state file (state.WATCH_SECONDS) since it changed.
SETTLE_SECONDS = 3 * state.WATCH_SECONDS
TICK_SECONDS = 1.0


class RolloutFailed(Exception):
    """A stage found the candidate unfit; the message says why, for the user and the state file."""


class RolloutRefused(Exception):
    """The rollout cannot start (or take up): another is under way, or nothing is there to roll out."""


@dataclasses.dataclass(frozen=True)
class ModelServer:
    grpc: str  # host:port
    rest: str  # http://host:port


@dataclasses.dataclass
class Rollout:
    model: str
    candidate: int
    repository: Path  # the model repository as this machine sees it (models.config, version folders)
    model_servers: Callable[[], list[ModelServer]]
    api_instances: Callable[[], list[str]]  # every API instance serving the model: http://host:port
    settings: RolloutSettings = dataclasses.field(default_factory=RolloutSettings)
    say: Callable[[str], None] = print
    signature: str = "serving_default"

    @property
    def config_file(self) -> Path:
        return self.repository / "models.config"

    @property
    def state_dir(self) -> Path:
        return self.repository / "rollouts"

    def run(self) -> state.Rollout:
        """The rollout from where it stands to promoted, rolled back or stopped."""
        self._check_pinned()  # before anything is written
        with self._only_one():
            current = state.read(self.state_dir, self.model)
            if current is not None and current.active:
                if current.candidate != self.candidate:
                    raise RolloutRefused(f"a rollout of {self.model} to version {current.candidate} stands at "
                                      f"{current.stage}; `rollout {self.model} {current.candidate}` takes it up")
                self.say(f"taking up the rollout of {self.model} to version {self.candidate} at {current.stage}")
            else:
                current = self._start()
            try:
                if current.stage == "preflight":
                    self._preflight(current)
                if current.stage == "shadow":
                    self._shadow(current)
                if current.stage == "canary":
                    self._canary(current)
                self._promote(current)
            except RolloutFailed as failure:
                self._roll_back(current, str(failure))
            except KeyboardInterrupt:
                self._roll_back(current, f"{current.stage}: interrupted (Ctrl-C)")
            except Exception as error:  # the model server gone, a reply not understood: nothing promoted
                self._roll_back(current, f"{current.stage}: the rollout failed: {type(error).__name__}: {error}")
                raise
            return current

    @contextlib.contextmanager
    def _only_one(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / f"{self.model}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RolloutRefused(f"another rollout of {self.model} is under way (its controller holds "
                                  f"{self.state_dir / (self.model + '.lock')})") from None
            yield

    # -- stages ---------------------------------------------------------------------------------

    def _check_pinned(self) -> list[int]:
        pinned = models_config.pinned_versions(models_config.load(self.config_file), self.model)
        if pinned is None:
            raise RolloutRefused(
                f"{self.model} serves the newest version in its folder (models.config: `latest`): a version copied "
                f"in goes live as it loads, with nothing to roll out. Pin the version that serves now "
                f"(model_version_policy {{ specific {{ versions: N }} }}), then copy the candidate in")
        return pinned

    def _start(self) -> state.Rollout:
        config = models_config.load(self.config_file)
        pinned = self._check_pinned()
        labels = dict(models_config.entry(config, self.model).version_labels)
        live = labels.get("stable", max(pinned))
        if live == self.candidate:
            raise RolloutRefused(f"version {self.candidate} of {self.model} is the live one already")
        folder = models_config.base_path(config, self.model, self.repository) / str(self.candidate)
        if not (folder / "saved_model.pb").exists():
            raise RolloutRefused(f"no SavedModel at {folder}: copy version {self.candidate} in first "
                              f"(under a hidden name, then renamed)")
        rollout = state.Rollout(self.model, live=live, candidate=self.candidate, stage="preflight", pinned=live)
        rollout.record("preflight", f"version {self.candidate} of {self.model} against the live version {live}")
        self._write(rollout)
        self.say(f"rollout of {self.model}: version {live} -> {self.candidate}, preflight")
        time.sleep(SETTLE_SECONDS)  # every worker asks for the live version by number before the candidate loads
        return rollout

    def _preflight(self, rollout: state.Rollout) -> None:
        live, candidate = rollout.live, rollout.candidate
        self._configure([live, candidate], {"stable": live})
        self._wait_for(lambda versions: versions.get(candidate) == "AVAILABLE", f"version {candidate} to load",
                       failed=lambda versions, errors: errors.get(candidate))
        self._configure([live, candidate], {"stable": live, "canary": candidate})  # a label only once loaded
        server = self.model_servers()[0]
        changed = signatures.differences(signatures.metadata(server.rest, self.model, live),
                                         signatures.metadata(server.rest, self.model, candidate), self.signature)
        if changed:
            raise RolloutFailed(f"preflight: the candidate's signature {self.signature!r} differs from the live "
                                f"one's: {'; '.join(changed)}")
        self._time_warmup(rollout, server)
        rollout.shadow_percent = self.settings.shadow_percent
        rollout.record("shadow", f"preflight passed; {rollout.shadow_percent:g}% of calls shadowed")
        self._write(rollout)
        self.say(rollout.history[-1]["message"])

    def _time_warmup(self, rollout: state.Rollout, server: ModelServer) -> None:
        folder = models_config.base_path(models_config.load(self.config_file), self.model, self.repository)
        requests = warmup_records.predict_requests(folder / str(rollout.candidate)) \
            or warmup_records.predict_requests(folder / str(rollout.live))
        if not requests:
            self.say("preflight: no warm-up records: the candidate's time is judged in canary only")
            return
        client = ModelServerClient(server.grpc, retries=0)
        times: dict[int, list[float]] = {rollout.live: [], rollout.candidate: []}
        try:
            for _ in range(self.settings.preflight_rounds):
                for request in requests:
                    inputs = {name: from_tensor_proto(tensor) for name, tensor in request.inputs.items()}
                    for version in times:
                        started = time.perf_counter()
                        try:
                            client.predict(self.model, inputs, signature_name=self.signature, version=version)
                        except ModelServerError as error:
                            raise RolloutFailed(f"preflight: version {version} failed on a warm-up record: "
                                                f"{error.code.name}: {error}") from None
                        times[version].append(time.perf_counter() - started)
        finally:
            client.close()
        live_ms, candidate_ms = (1000 * statistics.median(times[v]) for v in (rollout.live, rollout.candidate))
        factor = candidate_ms / live_ms
        self.say(f"preflight: warm-up records, median {candidate_ms:.2f} ms against the live version's "
                 f"{live_ms:.2f} ms ({factor:.2f}x; at most {self.settings.preflight_latency_factor:g}x)")
        if factor > self.settings.preflight_latency_factor:
            raise RolloutFailed(f"preflight: {factor:.1f}x the live version's time on the warm-up records "
                                f"(at most {self.settings.preflight_latency_factor:g}x)")

    def _shadow(self, rollout: state.Rollout) -> None:
        start, began = self._evidence(rollout), time.monotonic()
        while True:
            seen = self._tick(rollout, began) - start
            if seen.compared >= self.settings.shadow_min_compared:
                self._judge_agreement(seen, "shadow")
                break
        rollout.canary_percent = self.settings.canary_percents[0]
        rollout.record("canary", f"shadow passed: {seen.agreement:.1%} of {seen.compared:.0f} answers agreed; "
                                 f"canary at {rollout.canary_percent:g}%")
        self._write(rollout)
        self.say(rollout.history[-1]["message"])

    def _canary(self, rollout: state.Rollout) -> None:
        steps = self.settings.canary_percents
        for step in [s for s in steps if s >= rollout.canary_percent]:
            if step != rollout.canary_percent:
                rollout.canary_percent = step
                rollout.record("canary", f"canary at {step:g}%")
                self._write(rollout)
                self.say(rollout.history[-1]["message"])
            start, began = self._evidence(rollout), time.monotonic()
            while True:
                seen = self._tick(rollout, began) - start
                self._judge_canary(seen, step)
                if time.monotonic() - began >= self.settings.step_seconds \
                        and seen.canary_answers >= self.settings.step_min_answers:
                    break

    def _promote(self, rollout: state.Rollout) -> None:
        live, candidate = rollout.live, rollout.candidate
        rollout.pinned, rollout.canary_percent, rollout.shadow_percent = candidate, 0.0, 0.0
        rollout.record("promoted", f"every stage passed: version {candidate} is live, labelled stable")
        self._write(rollout)
        time.sleep(SETTLE_SECONDS)
        self._configure([candidate], {"stable": candidate})
        self._wait_for(lambda versions: live not in versions or versions[live] == "END", f"version {live} to unload")
        rollout.pinned = None
        self._write(rollout)
        self.say(rollout.history[-1]["message"])

    def _roll_back(self, rollout: state.Rollout, reason: str) -> None:
        """Every call back on the live version at once (the state file), then the candidate unloaded."""
        live, candidate = rollout.live, rollout.candidate
        stage = "stopped" if rollout.stage == "preflight" else "rolled_back"
        rollout.pinned, rollout.canary_percent, rollout.shadow_percent, rollout.reason = live, 0.0, 0.0, reason
        rollout.record(stage, reason)
        self._write(rollout)
        self.say(f"{stage}: {reason}")
        self._configure([live], {"stable": live})
        with contextlib.suppress(RolloutFailed):
            self._wait_for(lambda versions: versions.get(candidate) in (None, "END"), f"version {candidate} to unload")
        rollout.pinned = None
        self._write(rollout)

    # -- judging --------------------------------------------------------------------------------

    def _judge_agreement(self, seen: evidence.Evidence, stage: str) -> None:
        if seen.compared >= self.settings.shadow_min_compared and seen.agreement < self.settings.min_agreement:
            raise RolloutFailed(f"{stage}: {seen.agreement:.1%} of {seen.compared:.0f} compared answers agreed with "
                                f"the live version's (at least {self.settings.min_agreement:.0%}); mean distance "
                                f"{seen.distance / seen.compared:.3f}")

    def _judge_canary(self, seen: evidence.Evidence, step: float) -> None:
        # Any error within a step's minimum is over the threshold: the first error of a small canary counts.
        asked = seen.canary_answers + seen.canary_errors
        if seen.canary_errors > self.settings.max_error_rate * max(asked, self.settings.step_min_answers):
            raise RolloutFailed(f"canary at {step:g}%: {seen.canary_errors:.0f} of {asked:.0f} calls to the candidate "
                                f"failed ({seen.canary_error_rate:.1%}; at most {self.settings.max_error_rate:.0%}); "
                                f"each was answered by the live version")
        factor = seen.latency_factor()
        if factor is not None and seen.canary_calls >= self.settings.step_min_answers \
                and factor > self.settings.max_latency_factor:
            raise RolloutFailed(f"canary at {step:g}%: its calls took {factor:.1f}x the live version's "
                                f"(at most {self.settings.max_latency_factor:g}x)")
        self._judge_agreement(seen, f"canary at {step:g}%")

    # -- acting ---------------------------------------------------------------------------------

    def _tick(self, rollout: state.Rollout, began: float) -> evidence.Evidence:
        """A second later: the heartbeat renewed, and what the instances saw."""
        if time.monotonic() - began > self.settings.stage_timeout_seconds:
            raise RolloutFailed(f"{rollout.stage}: not enough traffic to judge the candidate within "
                                f"{self.settings.stage_timeout_seconds:g} s")
        time.sleep(TICK_SECONDS)
        self._write(rollout)
        return self._evidence(rollout)

    def _evidence(self, rollout: state.Rollout) -> evidence.Evidence:
        return evidence.gather(self.api_instances, self.model, rollout.candidate)

    def _write(self, rollout: state.Rollout) -> None:
        rollout.heartbeat = time.time()
        state.write(self.state_dir, rollout)

    def _configure(self, versions: list[int], labels: dict[str, int]) -> None:
        config = models_config.serve(models_config.load(self.config_file), self.model, versions, labels)
        configure(self.config_file, config, self.model_servers())

    def _wait_for(self, done: Callable[[dict[int, str]], bool], what: str,
                  failed: Callable[[dict[int, str], dict[int, str]], str | None] | None = None) -> None:
        """Until `done` holds on every model server (each asked for the model's versions' states)."""
        deadline = time.monotonic() + self.settings.load_timeout_seconds
        while True:
            pending = 0
            for server in self.model_servers():
                client = ModelServerClient(server.grpc, retries=0)
                try:
                    found = client.model_status(self.model, timeout_seconds=5)
                except ModelServerError:
                    pending += 1
                    continue
                finally:
                    client.close()
                versions = {status.version: status.state for status in found}
                errors = {status.version: status.error_message for status in found if status.error_message}
                reason = failed(versions, errors) if failed else None
                if reason:
                    raise RolloutFailed(f"preflight: {what} on {server.grpc} failed: {reason}")
                pending += not done(versions)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise RolloutFailed(f"waited {self.settings.load_timeout_seconds:g} s for {what} on every model server")
            time.sleep(0.2)


def configure(config_file: Path, config: models_config.ModelServerConfig, servers: list[ModelServer]) -> None:
    """models.config written, then reloaded at once on every model server that takes the reload
    from here (the others read the file at their next poll)."""
    models_config.save(config_file, config)
    request = model_management_pb2.ReloadConfigRequest()
    request.config.CopyFrom(config)
    for server in servers:
        with grpc.insecure_channel(server.grpc) as channel:
            reload = channel.unary_unary(RELOAD_METHOD, request_serializer=request.SerializeToString,
                                         response_deserializer=model_management_pb2.ReloadConfigResponse.FromString)
            try:
                response = reload(request, timeout=30)
            except grpc.RpcError as error:
                if error.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAVAILABLE):
                    continue  # it reads the file at its next poll
                raise
            if response.status.error_code:
                raise RolloutFailed(f"model server {server.grpc} refused the config: {response.status.error_message}")
