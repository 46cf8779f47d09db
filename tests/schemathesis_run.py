"""schemathesis (the CLI, as a user runs it) against a running stack's own OpenAPI document, through
nginx: every documented operation, every check, bounded in time and the same inputs every run.
Shared by local mode (tests/services/nginx) and compose (tests/compose)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")
# Test cases per operation and phase: 8 operations x 50 (and the coverage phase's fixed set, about
# 600 requests in all) take 11 s on 2 cores against today's local stack (22 s beside other tests),
# 100 take 17 s.
MAX_EXAMPLES = 50
# Longer than the services' longest deadline (10 s, MODEL_TIMEOUT_SECONDS), so a 504 from them is
# seen as such, not as a client time-out.
REQUEST_TIMEOUT_S = 15
# A hard stop for the whole run, far above its usual time: a hung stack fails the test instead of the suite.
RUN_TIMEOUT_S = 240
# What the API says besides the document, where JSON Schema cannot (schemathesis' defaults otherwise):
CONFIG = """\
# A body or field over a limit the document states (body_limit, MAX_LINES, MAX_TEXT_CHARS) is refused
# with 413, as the document says: as much a rejection of invalid data as a 400.
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]

# No JSON Schema says "the bytes of a decodable image": bytes valid by the document are mostly not an
# image (415 not_an_image) or hold no pixels (422 empty_image); what an image gets is tested with images.
[[operations]]
include-path-regex = "^/cv_sod"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "415", "422", "429", "5xx"]

# Nor "base64 of UTF-8 text with a word in it": base64 valid by the document mostly decodes to bytes
# that are not UTF-8 (400 invalid_utf8), or to only whitespace (422 empty_text).
[[operations]]
include-path-regex = "^/lstm"
include-method = "GET"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "422", "429", "5xx"]
"""
MESSAGE_LIMIT = 30_000  # characters of schemathesis' report in an assertion message


@dataclasses.dataclass
class SchemathesisRun:
    args: list[str]
    returncode: int
    output: str
    seconds: float
    report_dir: Path

    def __repr__(self) -> str:  # what pytest prints beside a failed assertion: the report says the rest
        return f"schemathesis exit code {self.returncode}"

    def failures(self) -> str:
        """The FAILURES and SUMMARY sections (all of the output if it has none: e.g. no document)."""
        start = self.output.find("= FAILURES =")
        if start < 0:
            start = self.output.find("= SUMMARY =")
        text = self.output[self.output.rfind("\n", 0, start) + 1:] if start >= 0 else self.output
        # `st replay` reads a crash cache left in the run's folder; blank lines make half the report.
        text = "\n".join(line for line in text.splitlines() if line.strip() and "st replay" not in line)
        if len(text) > MESSAGE_LIMIT:
            text = text[:MESSAGE_LIMIT // 2] + "\n[...]\n" + text[-MESSAGE_LIMIT // 2:]
        return (f"$ {' '.join(self.args)}\nexit code {self.returncode} after {self.seconds:.0f} s; "
                f"whole output and JUnit report in {self.report_dir}\n{text}")


def run_schemathesis(base_url: str, work_dir: Path, *extra: str) -> SchemathesisRun:
    """`schemathesis run <base_url>/openapi.json --checks all`, in work_dir: schemathesis writes its
    crash cache (.schemathesis/) and Hypothesis its files (.hypothesis/) into the current directory,
    and reads schemathesis.toml from it and its parents, so it runs in a folder of its own and is
    given an empty config file: the defaults, whatever lies around. Deterministic generation: the
    same test cases every run (a seed is ignored then, and no example database is kept)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    config = work_dir / "schemathesis.toml"
    config.write_text(CONFIG)
    shutil.copy(HOOKS, work_dir / HOOKS.name)  # the CLI imports it from its working directory
    report_dir = work_dir / "report"
    args = [
        SCHEMATHESIS, "--no-color", "--config-file", str(config),
        "run", f"{base_url}/openapi.json",
        "--checks", "all",
        "--max-examples", str(MAX_EXAMPLES),
        "--generation-deterministic",
        "--continue-on-failure",  # every distinct failure of an operation, not only its first
        "--request-timeout", str(REQUEST_TIMEOUT_S),
        "--workers", "1",  # one request at a time: the same order every run, little load on 2 cores
        "--wait-for-schema", "30",
        "--report", "junit", "--report-dir", str(report_dir),
        *extra,
    ]
    started = time.monotonic()
    try:
        done = subprocess.run(args, cwd=work_dir, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                              env={**os.environ, "SCHEMATHESIS_HOOKS": HOOKS.stem})
        returncode, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        returncode = -1
        output = f"timed out after {RUN_TIMEOUT_S} s\n" + _text(expired.stdout) + _text(expired.stderr)
    run = SchemathesisRun(args, returncode, output, time.monotonic() - started, report_dir)
    (work_dir / "schemathesis.txt").write_text(output)
    return run


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else data or ""
