"""`python -m roster_files [--repo DIR] [--check]` (./stack generate): see roster_files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import roster_files
from roster_files import generated_files, stale_files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=roster_files.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=Path("."), help="the repository (default: here)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file differs")
    args = parser.parse_args(argv)
    repo = args.repo
    files = generated_files(repo)
    changed = [path for path, text in files.items()
               if not (repo / path).is_file() or (repo / path).read_text() != text]
    stale = stale_files(repo)
    if args.check:
        for path in changed:
            print(f"{path}: not what `./stack generate` writes from the roster")
        for path in stale:
            print(f"{path}: generated for a service the roster no longer has")
        return 1 if changed or stale else 0
    for path in changed:
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(files[path])
        print(f"wrote {path}")
    for path in stale:
        (repo / path).unlink()
        if not any((repo / path).parent.iterdir()):
            (repo / path).parent.rmdir()
        print(f"removed {path}")
    if not changed and not stale:
        print(f"{len(files)} generated files, all up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
