"""Run many ``lorashare`` command lines in one process (one interpreter start instead of one per
case): each goes through ``share_torch.cli.main`` with its real argv, and its exit code, stdout
and stderr are recorded separately.

Usage: ``python -m tests.reliability._cli_driver CASES.json RESULTS.json`` where CASES.json maps
a case id to its argv list.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys


def run(argv: list[str]) -> dict:
    from share_torch.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code: int | str = main(argv)
        except SystemExit as exc:  # argparse usage errors
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException as exc:  # main() must never let anything out
            code = f"escaped main(): {type(exc).__name__}: {exc}"
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    results = {case_id: run(argv) for case_id, argv in cases.items()}
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)
