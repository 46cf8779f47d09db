"""Server-side batching with TF Serving's semantics.

One scheduler shared by every model (TF Serving's SharedBatchScheduler): each servable and
signature has its own queue, `num_batch_threads` threads run the oldest ready batch of any
queue. A batch is ready when it is full (`max_batch_size`) or its first task has waited
`batch_timeout_micros`; with a timeout of 0 whatever queued while the threads were busy runs
together. `max_enqueued_batches` bounds each queue: past it, callers get UNAVAILABLE at once
instead of waiting. Variable-length inputs are padded at the end with the first element of
each task's tensor, as TF Serving does, when `pad_variable_length_inputs` is set.

Beyond TF Serving: a batch never grows past MAX_REQUEST_BYTES once merged and padded (a task that
would take it there starts the next batch). Each request is checked against that limit alone, and
padding multiplies: one long text padded the batch's 64 short ones to its length.

A task whose caller has given up (its future cancelled, or its deadline passed: the caller has
answered DEADLINE_EXCEEDED) is dropped when its batch is dispatched, not run: the model's time
goes to callers still waiting.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future

import numpy as np

from model_server.config import BatchingParameters
from model_server.errors import invalid_argument, unavailable
from model_server.monitoring import METRICS
from model_server.tensors import MAX_REQUEST_BYTES, STRING_ELEMENT_BYTES, decoded_bytes

log = logging.getLogger(__name__)

RunBatch = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclasses.dataclass
class _Task:
    inputs: dict[str, np.ndarray]
    size: int
    future: Future
    deadline: float | None  # time.monotonic(); None: the caller waits as long as it takes
    model: str  # for the metrics


@dataclasses.dataclass
class _Batch:
    created: float
    tasks: list[_Task] = dataclasses.field(default_factory=list)
    size: int = 0


@dataclasses.dataclass
class _Queue:
    run: RunBatch
    params: BatchingParameters  # the server's, or the model's own (--enable_per_model_batching_parameters)
    closed: collections.deque = dataclasses.field(default_factory=collections.deque)
    open: _Batch | None = None

    def batches(self) -> int:
        return len(self.closed) + (1 if self.open else 0)


class BatchScheduler:
    def __init__(self, params: BatchingParameters):
        self.params = params
        self._cond = threading.Condition()
        self._queues: dict[Hashable, _Queue] = {}
        self._stopping = False
        # Observability (and the proof in tests that batching happens): model calls by batch size.
        self.batch_size_counts: collections.Counter[int] = collections.Counter()
        self._threads = [
            threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
            for i in range(max(1, params.num_batch_threads))
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, key: Hashable, run: RunBatch, inputs: dict[str, np.ndarray],
               deadline: float | None = None, model: str = "", params: BatchingParameters | None = None) -> Future:
        """Queue one request's inputs; the future resolves to that request's slice of the outputs.
        Cancel it (or let `deadline` pass) to have the task dropped unrun. `params`: the queue's own
        batching parameters (only its threads are the server's)."""
        params = params or self.params
        sizes = {value.shape[0] if value.ndim else -1 for value in inputs.values()}
        if len(sizes) != 1 or -1 in sizes:
            raise invalid_argument(
                "Batching session Run() input tensors must have equal 0th-dimension size"
            )
        size = sizes.pop()
        if size > params.max_batch_size:
            raise invalid_argument(
                f"Task size {size} is larger than maximum input batch size {params.max_batch_size}"
            )
        task = _Task(inputs, size, Future(), deadline, model)
        with self._cond:
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue(run, params)
            if queue.open and (queue.open.size + size > params.max_batch_size
                               or _merged_bytes(params, [*queue.open.tasks, task]) > MAX_REQUEST_BYTES):
                queue.closed.append(queue.open)
                queue.open = None
            if queue.open is None:
                if queue.batches() >= params.max_enqueued_batches:
                    raise unavailable("The batch scheduling queue to which this task was submitted is full")
                queue.open = _Batch(created=time.monotonic())
            queue.open.tasks.append(task)
            queue.open.size += size
            if queue.open.size == params.max_batch_size:
                queue.closed.append(queue.open)
                queue.open = None
            self._cond.notify()
        return task.future

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def _next_batch(self) -> tuple[_Queue, _Batch] | None:
        """Under the lock: the oldest ready batch, or None after waiting for one to become ready."""
        now = time.monotonic()
        best: tuple[_Queue, _Batch] | None = None
        wake_at = None
        for queue in self._queues.values():
            timeout = queue.params.batch_timeout_micros / 1e6
            if queue.closed:
                candidate = queue.closed[0]
            elif queue.open and now - queue.open.created >= timeout:
                candidate = queue.open
            else:
                if queue.open:
                    due = queue.open.created + timeout
                    wake_at = due if wake_at is None else min(wake_at, due)
                continue
            if best is None or candidate.created < best[1].created:
                best = (queue, candidate)
        if best:
            queue, batch = best
            if queue.closed and queue.closed[0] is batch:
                queue.closed.popleft()
            else:
                queue.open = None
            return best
        self._cond.wait(None if wake_at is None else max(0.0, wake_at - now))
        return None

    def _work(self) -> None:
        while True:
            with self._cond:
                picked = None
                while picked is None:
                    if self._stopping:
                        return
                    picked = self._next_batch()
                self._drop_idle_queues()
            queue, batch = picked
            self._execute(queue, batch.tasks)

    def _drop_idle_queues(self) -> None:
        for key in [k for k, q in self._queues.items() if not q.closed and not q.open]:
            del self._queues[key]

    def _execute(self, queue: _Queue, tasks: list[_Task]) -> None:
        tasks = self._still_wanted(tasks)
        if not tasks:
            return
        try:
            merged, padded_size = _merge(queue.params, [t.inputs for t in tasks], sum(t.size for t in tasks))
            self.batch_size_counts[padded_size] += 1
            outputs = queue.run(merged)
            start = 0
            for task in tasks:
                task.future.set_result({k: v[start : start + task.size] for k, v in outputs.items()})
                start += task.size
        except Exception as error:  # noqa: BLE001 - every waiting caller must hear about it
            for task in tasks:
                if not task.future.done():
                    task.future.set_exception(error)

    def _still_wanted(self, tasks: list[_Task]) -> list[_Task]:
        """The tasks whose callers still wait, marked running (a caller can no longer cancel them);
        the others are dropped and counted."""
        now = time.monotonic()
        wanted = []
        for task in tasks:
            if task.deadline is not None and task.deadline <= now:
                task.future.cancel()
            if task.future.set_running_or_notify_cancel():
                wanted.append(task)
            else:
                METRICS.count_expired_task(task.model)
        return wanted

def _merge(params: BatchingParameters, inputs: list[dict[str, np.ndarray]],
           total: int) -> tuple[dict[str, np.ndarray], int]:
    padded_size = next((s for s in params.allowed_batch_sizes if s >= total), total)
    merged = {}
    for key in inputs[0]:
        parts = [task_inputs[key] for task_inputs in inputs]
        target = tuple(max(p.shape[d] for p in parts) for d in range(1, parts[0].ndim))
        if any(p.shape[1:] != target for p in parts):
            if not params.pad_variable_length_inputs:
                raise invalid_argument(
                    f"Tensors with name '{key}' from different tasks have different shapes and padding "
                    "is turned off. Set pad_variable_length_inputs to true, or ensure that all tensors "
                    "with the same name have equal dimensions starting with the first dim."
                )
            parts = [_pad_to(p, target) for p in parts]
        if padded_size > total:  # fill up to an allowed size with copies of the first row
            parts.append(np.repeat(parts[0][:1], padded_size - total, axis=0))
        merged[key] = np.concatenate(parts, axis=0)
    return merged, padded_size


def _merged_bytes(params: BatchingParameters, tasks: list[_Task]) -> int:
    """The bytes `_merge` would make of these tasks' inputs (padded, and filled up to an allowed batch
    size), counted as tensors.decoded_bytes counts a request's; without making them."""
    total = sum(task.size for task in tasks)
    padded_size = next((s for s in params.allowed_batch_sizes if s >= total), total)
    nbytes = 0
    for key in tasks[0].inputs:
        parts = [task.inputs[key] for task in tasks]
        row_elements = math.prod(max(p.shape[d] for p in parts) for d in range(1, parts[0].ndim))
        first_row = 0
        for part in parts:
            if part.dtype == object:  # padding repeats the part's first element
                fill = STRING_ELEMENT_BYTES + (len(part.flat[0]) if part.size else 0)
                part_bytes = decoded_bytes(part) + (part.shape[0] * row_elements - part.size) * fill
            else:
                part_bytes = part.shape[0] * row_elements * part.itemsize
            first_row = first_row or part_bytes // max(1, part.shape[0])
            nbytes += part_bytes
        nbytes += (padded_size - total) * first_row
    return nbytes


def _pad_to(value: np.ndarray, target: tuple[int, ...]) -> np.ndarray:
    shape = (value.shape[0], *target)
    if value.size == 0:
        return np.full(shape, b"" if value.dtype == object else 0, dtype=value.dtype)
    out = np.full(shape, value.flat[0], dtype=value.dtype)
    out[tuple(slice(0, s) for s in value.shape)] = value
    return out
