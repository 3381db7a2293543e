"""Size bars of ``spotlight/`` (STYLE.md, issue 19): no file over 500 lines, no function over
80 lines, except the entries below, each with its one-line reason. A file that shrinks under
its bar must leave the list (a stale entry fails too), so the list only ever gets shorter."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80

TESTBED = "issue 18 testbed rewrite owns this file"
LATER = "not split yet: issue 19 follow-up (moved as is)"
ALLOWED_FILES: dict[str, str] = {
    "spotlight/models/flow_grpo.py": TESTBED,
    "spotlight/runtime/transport.py": "CURVE encryption is being added here on another branch",
    "spotlight/runtime/codec.py": "one wire format; split after the CURVE branch lands",
    "spotlight/actors/cluster/coordinator.py": LATER,
    "spotlight/actors/exploration/planner.py": LATER,
    "spotlight/actors/monitor/metrics.py": LATER,
    "spotlight/actors/rollout/worker.py": LATER + "; shares a pull-worker base with the explorer",
    "spotlight/actors/scheduling/journal.py": LATER,
    "spotlight/actors/scheduling/leases.py": LATER,
    "spotlight/actors/sp/group.py": LATER,
    "spotlight/actors/trainer/loop.py": LATER,
    "spotlight/actors/weights/publish.py": LATER,
    "spotlight/commands/demo.py": LATER,
}
ALLOWED_FUNCTIONS: dict[str, str] = {
    "spotlight/models/flow_grpo.py:train_on_rollout": TESTBED,
    "spotlight/models/ulysses.py:_sharded": "one autograd-symmetric all-to-all; reads best whole",
    "spotlight/actors/cluster/coordinator.py:register_node": LATER + " (a typed NodeOffer)",
    "spotlight/actors/trainer/loop.py:_setup": LATER,
    "spotlight/actors/trainer/loop.py:_run": LATER,
    "spotlight/commands/run_report.py:build_report": LATER,
    "spotlight/nodes/spot.py:_node_body": LATER,
}


def _sizes() -> tuple[dict[str, int], dict[str, int]]:
    files: dict[str, int] = {}
    functions: dict[str, int] = {}
    for path in sorted((ROOT / "spotlight").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        files[rel] = len(text.splitlines())
        for node in ast.walk(ast.parse(text, rel)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                span = node.end_lineno - node.lineno + 1
                key = f"{rel}:{node.name}"
                functions[key] = max(span, functions.get(key, 0))
    return files, functions


def test_no_file_over_the_bar() -> None:
    files, _ = _sizes()
    over = {f: n for f, n in files.items() if n > MAX_FILE_LINES}
    new = {f: n for f, n in over.items() if f not in ALLOWED_FILES}
    stale = sorted(f for f in ALLOWED_FILES if f not in over)
    assert not new, (
        f"files over {MAX_FILE_LINES} lines (split them, or allow-list with a reason): {new}"
    )
    assert not stale, f"allow-listed files now within the bar (remove them from the list): {stale}"


def test_no_function_over_the_bar() -> None:
    _, functions = _sizes()
    over = {f: n for f, n in functions.items() if n > MAX_FUNCTION_LINES}
    new = {f: n for f, n in over.items() if f not in ALLOWED_FUNCTIONS}
    stale = sorted(f for f in ALLOWED_FUNCTIONS if f not in over)
    assert not new, f"functions over {MAX_FUNCTION_LINES} lines (split them, or allow-list): {new}"
    assert not stale, f"allow-listed functions now within the bar (remove them): {stale}"


def test_every_exception_has_a_reason() -> None:
    for name, reason in {**ALLOWED_FILES, **ALLOWED_FUNCTIONS}.items():
        assert reason.strip() and "\n" not in reason, f"{name}: give a one-line reason"
