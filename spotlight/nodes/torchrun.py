"""torchrun for `spotlight run` (scripts/launch_ondemand.sh), with an exit status that says
whether a signalled launch stopped cleanly.

``python -m spotlight.nodes.torchrun TORCHRUN-ARGS...`` is torchrun itself (its
``main``, in this process: the signals the launcher's process receives reach torchrun as
before, and torchrun forwards them to its workers), except for how it exits after SIGINT,
SIGTERM, SIGHUP or SIGQUIT. torchrun then raises its ``SignalException`` and exits 1 whatever
the workers did; here every worker of this node leaves an exit record instead:

* launcher: a fresh directory in ``$SPOTLIGHT_EXIT_DIR`` (torchrun passes its environment to
  its workers), removed at exit;
* worker: :func:`record_exit` writes ``local-rank-R.json`` (its exit status and
  ``$LOCAL_WORLD_SIZE``) as `spotlight run` returns; a worker that crashes, or that torchrun
  SIGKILLs past ``--shutdown-timeout``, writes nothing.

Exit status (:func:`exit_status`)::

    workers ended without a signal           torchrun's own: 0, or 1 if a worker failed
    signal, every local worker recorded 0    0 (a graceful stop: checkpoint and report written)
    signal, any other outcome                128 + the signal (130 SIGINT, 143 SIGTERM)

Records are per node: each node's launch answers for its own workers.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spotlight.nodes.process import write_atomic

__all__ = ["EXIT_DIR_ENV", "exit_status", "main", "record_exit"]

EXIT_DIR_ENV = "SPOTLIGHT_EXIT_DIR"


def record_exit(code: int) -> None:
    """Worker side: note this rank's exit status for the launcher (no-op outside it)."""
    exits = os.environ.get(EXIT_DIR_ENV)
    if not exits:
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    record = {
        "local_rank": local_rank,
        "local_world_size": int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        "code": code,
    }
    write_atomic(Path(exits) / f"local-rank-{local_rank}.json", json.dumps(record) + "\n")


def exit_status(signum: int, records: Sequence[dict[str, Any]]) -> tuple[int, list[str]]:
    """The launch's exit status after ``signum``, from the workers' exit records, and what
    kept it from 0 (one line per worker; empty when every worker stopped cleanly)."""
    if not records:
        return 128 + signum, ["no worker left an exit record"]
    expected = max(r["local_world_size"] for r in records)
    codes = {r["local_rank"]: r["code"] for r in records}
    problems = [
        f"local rank {rank} " + (f"exited {codes[rank]}" if rank in codes else "left no record")
        for rank in range(expected)
        if codes.get(rank) != 0
    ]
    return (128 + signum if problems else 0), problems


def main(argv: Sequence[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.run import main as torchrun

    with tempfile.TemporaryDirectory(prefix="spotlight-exits-") as exits:
        os.environ[EXIT_DIR_ENV] = exits
        try:
            torchrun(list(sys.argv[1:] if argv is None else argv))
        except SignalException as exc:  # torchrun has forwarded it and waited for the workers
            records = [json.loads(p.read_text()) for p in Path(exits).glob("local-rank-*.json")]
            code, problems = exit_status(exc.sigval, records)
            name = signal.Signals(exc.sigval).name
            if code == 0:
                print(f"launch: {name}: every worker stopped cleanly; exit 0", file=sys.stderr)
            else:
                why = "; ".join(problems)
                print(f"launch: {name}: not a clean stop ({why}); exit {code}", file=sys.stderr)
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
