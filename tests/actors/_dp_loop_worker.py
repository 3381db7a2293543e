"""One rank of the 2-rank trainer-loop test (run by test_trainer_loop.py under a torchrun-like env)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import torch

from tests.actors.test_trainer_loop import _config
from tests.micro import redness as _redness


def main(base: str, run_dir: str, out: str, iterations: int) -> None:
    from spotlight.actors.trainer.loop import TrainerLoop, init_context

    ctx = init_context()
    loop = TrainerLoop(
        _config(Path(base), iterations, micro_batch=8), run_dir, ctx=ctx, reward_fn=_redness
    )
    summary = asyncio.run(loop.run())
    torch.save(
        {"state": loop.policy.state_dict(), "iterations": summary.iterations, "rank": ctx.rank},
        out,
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
