"""The profile report's arithmetic on py-spy's collapsed stacks (the stack run itself is slow)."""

from __future__ import annotations

from bench.profile import top_functions


def test_own_and_inclusive_samples_from_collapsed_stacks(tmp_path):
    raw = tmp_path / "worker.txt"
    raw.write_text(
        "run (hub.py:1);handle (app.py:10);segment (jieba/__init__.py:5) 5\n"
        "run (hub.py:1);handle (app.py:10);send (socket.py:3) 3\n"
        "run (hub.py:1);idle (hub.py:2) 2\n"
    )
    samples, functions = top_functions(raw)
    assert samples == 10
    by_name = {name: (own, inclusive) for name, own, inclusive in functions}
    assert by_name["handle (app.py:10)"] == (0, 8)
    assert by_name["segment (jieba/__init__.py:5)"] == (5, 5)
    assert "run (hub.py:1)" not in by_name, "frames on (nearly) every sample say nothing"
