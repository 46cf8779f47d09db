"""Run one harness under atheris (libFuzzer), coverage-guided by the code it tests:

    .venv/bin/python -m tests.fuzz.run fuzz_image_decode -max_total_time=600 -timeout=2 \\
        -rss_limit_mb=1024 -artifact_prefix=/tmp/findings/ /tmp/new-inputs tests/fuzz/corpus/fuzz_image_decode

(`command()` below gives the suite's flags.) Given files instead of folders, it runs each once.

Every argument after the harness's name is libFuzzer's: its flags, then corpus folders (it writes
new inputs to the first; pass the committed corpus after a scratch folder to keep it as it is).
An input that breaks the property is written under -artifact_prefix as crash-<sha1> (timeout-,
oom- for an input past -timeout or -rss_limit_mb), and libFuzzer exits non-zero.

Only the code under test is instrumented (its coverage guides the mutations): the service's own
packages (atheris instruments whole top-level packages as they are imported) and TensorFlow's
MakeNdarray; their dependencies (OpenCV, numpy, TensorFlow, gRPC) run uninstrumented.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"
# harness -> (its module, the packages whose code guides it)
HARNESSES = {
    "fuzz_image_header": ("tests.fuzz.image_harnesses", ("vision_api", "model_preprocessing")),
    "fuzz_image_decode": ("tests.fuzz.image_harnesses", ("vision_api", "model_preprocessing")),
    "fuzz_tensor_proto": ("tests.fuzz.tensor_harness", ("model_server",)),
}
# One input taking longer than this is a finding (libFuzzer writes it as timeout-<sha1>).
INPUT_TIMEOUT_SECONDS = 2
# The process's resident memory past which libFuzzer stops with the input (oom-<sha1>): at rest the
# image harnesses take about 100 MB, the tensor harness about 700 (TensorFlow).
RSS_LIMIT_MB = {"fuzz_image_header": 1024, "fuzz_image_decode": 1024, "fuzz_tensor_proto": 1536}


def command(harness: str, seconds: int, scratch: Path) -> list[str]:
    """The fuzzer for `seconds`, starting from the committed corpus and leaving it as it is: new
    inputs go to scratch/new, findings to scratch/crash-*, timeout-*, oom-*."""
    (scratch / "new").mkdir(parents=True, exist_ok=True)
    return [sys.executable, "-m", "tests.fuzz.run", harness, f"-max_total_time={seconds}",
            f"-timeout={INPUT_TIMEOUT_SECONDS}", f"-rss_limit_mb={RSS_LIMIT_MB[harness]}", "-print_final_stats=1",
            f"-artifact_prefix={scratch}/", str(scratch / "new"), str(CORPUS / harness)]


def load(name: str):
    import atheris

    module_name, packages = HARNESSES[name]
    if name == "fuzz_tensor_proto":
        from tensorflow.python.framework import tensor_util

        atheris.instrument_func(tensor_util.MakeNdarray)
    with atheris.instrument_imports(include=list(packages)):
        return getattr(importlib.import_module(module_name), name)


# libFuzzer's exit status for a crash (its -error_exitcode).
FINDING_EXIT = 77


def reporting(harness: Callable[[bytes], None], artifact_prefix: str) -> Callable[[bytes], None]:
    """The harness, with its findings written and reported here: libFuzzer's own path for an
    uncaught Python exception exits through the interpreter's shutdown, where TensorFlow's threads
    hang it until the next SIGALRM kills it (status 142, no crash file)."""

    def one_input(data: bytes) -> None:
        try:
            harness(data)
        except BaseException:  # noqa: BLE001 - whatever escapes is the finding
            traceback.print_exc()
            path = f"{artifact_prefix}crash-{hashlib.sha1(data).hexdigest()}"
            with open(path, "wb") as file:
                file.write(data)
            print(f"Test unit written to {path}", file=sys.stderr, flush=True)
            os._exit(FINDING_EXIT)

    return one_input


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in HARNESSES:
        sys.exit(f"usage: python -m tests.fuzz.run {{{','.join(HARNESSES)}}} [libFuzzer flags] [corpus dirs]")
    flags = sys.argv[2:]
    prefix = next((flag.split("=", 1)[1] for flag in flags if flag.startswith("-artifact_prefix=")), "./")
    harness = reporting(load(sys.argv[1]), prefix)
    import atheris

    atheris.Setup([sys.argv[0], *flags], harness)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
