"""schemathesis' hooks for tests/schemathesis_run.py (loaded by the CLI from its run folder,
SCHEMATHESIS_HOOKS): a deadline is time, not the contract, so every request states a long one
unless the case is about the deadline header itself (a negative case for it: its invalid value is
what the API must refuse, 400 invalid_timeout). A short valid deadline is rightly refused for want
of time (503 deadline_unreachable), which is not what the run looks for; the header's bounds are
tests/libs/test_service_kit_deadlines.py's."""

from __future__ import annotations

import schemathesis

HEADER = "X-Request-Timeout-Ms"
LONG_DEADLINE_MS = "10000"


@schemathesis.hook
def before_call(ctx, case, **kwargs) -> None:
    if case.meta is not None and case.meta.is_negative_at("header"):
        return
    case.headers = {**(case.headers or {}), HEADER: LONG_DEADLINE_MS}
