"""Run TF Serving's own integration suite, unmodified, with our model server as its binary.

    .venv/bin/python -m tests.tfserving.tf_serving_suite --serving PATH [TEST ...]

PATH is a tensorflow/serving checkout, or a bare clone of it (read with `git archive`). Nothing
of that repository is committed here: this builds, in a temporary folder, the layout its Bazel
test expects (`$TEST_SRCDIR/tf_serving/tensorflow_serving/...`: its test models under
`servables/tensorflow/testdata`, and `model_servers/tensorflow_model_server`, here a two-line
script that starts ours), and runs `tensorflow_model_server_test.py` as its authors do: the file
with Python, absl flags, `tf.test.main()`. Left out are only the tests that need what a CPU
Python server cannot have (TF Lite, tf_text's ops, the profiler service), listed in EXCLUDED.
Its imports (`tensorflow_serving.model_servers.test_util`) are served from the temporary
folder, which holds the wheel's `tensorflow_serving` package with the suite's two modules added.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import tensorflow_serving

REPO_ROOT = Path(__file__).resolve().parents[2]
SUITE = "tensorflow_serving/model_servers/tensorflow_model_server_test.py"
SUITE_PATHS = (SUITE, "tensorflow_serving/model_servers/test_util", "tensorflow_serving/servables/tensorflow/testdata")
CLASS = "TensorflowModelServerTest"
EXCLUDED = {
    "testPredictOnTfLite": "TF Lite model",
    "testPredictWithSignatureDefOnTfLite": "TF Lite model",
    "test_tf_text": "needs tf_text's custom ops",
    "test_profiler_service_with_valid_trace_request": "TensorFlow's profiler service",
}

# ONE_PROCESS_EACH: each test runs in a process of its own, as `bazel test --test_filter=...`
# would: in one process, test_distrat_sequential_keras_saved_model_save cannot create its virtual
# CPUs once an earlier test has started TensorFlow's runtime in the test process ("Virtual
# devices cannot be modified after being initialized"), whatever the server. Servers a process
# started die with it.


def export_suite(serving: Path, into: Path) -> None:
    """The suite's files from a checkout, or from a bare clone's HEAD."""
    if (serving / SUITE).exists():
        for relative in SUITE_PATHS:
            source, target = serving / relative, into / relative
            if source.is_dir():
                shutil.copytree(source, target)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
        return
    git = ["git", "--git-dir", str(serving)]
    listing = subprocess.run([*git, "ls-tree", "-r", "HEAD", *SUITE_PATHS], check=True, capture_output=True,
                             text=True).stdout
    for line in listing.splitlines():
        meta, path = line.split("\t", 1)
        blob = meta.split()[2]
        shown = subprocess.run([*git, "cat-file", "blob", blob], capture_output=True)
        if shown.returncode:  # a snapshot may lack its largest files (the TF Lite models)
            print(f"not in this clone, left out: {path}", file=sys.stderr)
            continue
        target = into / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(shown.stdout)


def build_layout(serving: Path, root: Path) -> tuple[Path, Path]:
    """(TEST_SRCDIR, import root) under `root`."""
    exported = root / "exported"
    exported.mkdir()
    export_suite(serving, exported)
    srcdir = root / "srcdir"
    bazel_tree = srcdir / "tf_serving" / "tensorflow_serving"
    (bazel_tree / "servables" / "tensorflow").mkdir(parents=True)
    shutil.copytree(exported / "tensorflow_serving/servables/tensorflow/testdata",
                    bazel_tree / "servables/tensorflow/testdata")
    binary = bazel_tree / "model_servers" / "tensorflow_model_server"
    binary.parent.mkdir(parents=True)
    binary.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m model_server "$@"\n')
    binary.chmod(0o755)

    imports = root / "imports"
    package = imports / "tensorflow_serving"
    shutil.copytree(Path(tensorflow_serving.__path__[0]), package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    servers = package / "model_servers"
    servers.mkdir(exist_ok=True)
    (servers / "__init__.py").touch()
    shutil.copy2(exported / SUITE, servers / Path(SUITE).name)
    shutil.copytree(exported / "tensorflow_serving/model_servers/test_util", servers / "test_util",
                    dirs_exist_ok=True)
    (servers / "test_util" / "__init__.py").touch()
    return srcdir, imports


def tf_version() -> str:
    from importlib.metadata import version

    return version("tensorflow-cpu")


def suite_tests(suite_file: Path) -> list[str]:
    names = [line.split("def ", 1)[1].split("(", 1)[0] for line in suite_file.read_text().splitlines()
             if line.lstrip().startswith("def test")]
    return [name for name in names if name not in EXCLUDED]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serving", type=Path, required=True, help="tensorflow/serving checkout or bare clone")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("tests", nargs="*", help="test names (default: all but EXCLUDED)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="tf-serving-suite-"))
    try:
        srcdir, imports = build_layout(args.serving.resolve(), root)
        tests = args.tests or suite_tests(imports / "tensorflow_serving/model_servers" / Path(SUITE).name)
        print(f"running {len(tests)} tests of {SUITE} (left out: {', '.join(sorted(EXCLUDED))})", flush=True)
        # The suite's Keras tests build models with tf.keras as TF Serving's build has it, Keras 2
        # (tf_keras): Keras 3 names a Sequential model's input `inputs`, not its layer's `x`, and
        # the suite's request for `x` would be refused by any server.
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(imports),
                        f"tf-keras=={tf_version()}"], check=True)
        env = {**os.environ, "TEST_SRCDIR": str(srcdir), "TF_USE_LEGACY_KERAS": "1"}
        failed = []
        for name in tests:  # one process each: see ONE_PROCESS_EACH
            command = [sys.executable, "-m", "tensorflow_serving.model_servers.tensorflow_model_server_test",
                       f"--test_tmpdir={root / 'test_tmpdir' / name}", f"{CLASS}.{name}"]
            if subprocess.run(command, cwd=imports, env=env).returncode:
                failed.append(name)
        print(f"\n{len(tests) - len(failed)} of {len(tests)} passed", f"; failed: {', '.join(failed)}" * bool(failed))
        return 1 if failed else 0
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
