"""``python -m spotlight.nodes.explorer``: one stand-alone explorer process.

Its own module, not a ``__main__`` block in ``explorer.py``: run with ``-m``, that file would
be imported twice (as ``__main__`` and, by the sampling backend, as
``spotlight.actors.exploration.explorer``), and its wire types would be registered twice under one name,
which the codec refuses, so every batch failed. Spot nodes (``nodes/spot.py``) host their
explorer themselves; this entry serves tests and experiments.
"""

from __future__ import annotations

import asyncio

import torch

from spotlight.actors.exploration.backends import _MODES, ExploreSettings
from spotlight.actors.exploration.explorer import ExplorerActor
from spotlight.actors.scheduling.work import PULL_BATCH

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """``python -m spotlight.nodes.explorer``: one explorer process (a spot node's actor).

    It joins the scheduler and announces itself to the planner, then explores until
    SIGTERM/SIGINT. Weights arrive with ``load_weights``; until then it only waits.
    """
    import argparse

    from spotlight.runtime import Runtime, RuntimeConfig, run

    ap = argparse.ArgumentParser(description="Spotlight explorer process")
    ap.add_argument("--scheduler", required=True, help="ADDRESS/NAME of the explore scheduler")
    ap.add_argument("--planner", default=None, help="ADDRESS/NAME of the planner to announce to")
    ap.add_argument("--worker-id", required=True)
    ap.add_argument(
        "--model",
        default="tiny",
        help="policy config name (a spot node gets the trainer's full config from the "
        "coordinator instead; this must match the weights the trainer sends)",
    )
    ap.add_argument("--mode", default="sde", choices=_MODES)
    ap.add_argument("--pull-batch", type=int, default=PULL_BATCH)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = ExploreSettings(mode=args.mode, pull_batch=args.pull_batch, idle_pull_s=0.05)

    def split(text: str) -> tuple[str, str]:
        address, _, name = text.rpartition("/")
        if not address or not name:
            raise ValueError(
                f"expected ADDRESS/NAME (e.g. tcp://127.0.0.1:5555/scheduler), got {text!r}"
            )
        return address, name

    async def body(rt: Runtime) -> None:
        sched = rt.ref(*split(args.scheduler))
        planner = rt.ref(*split(args.planner)) if args.planner else None
        await rt.spawn(
            ExplorerActor,
            name=args.worker_id,
            scheduler=sched,
            worker_id=args.worker_id,
            model=args.model,
            settings=settings,
            announce_to=planner,
        )
        print(f"explorer {args.worker_id} at {rt.address}", flush=True)
        await asyncio.Event().wait()  # until a signal cancels us

    run(body, RuntimeConfig())


if __name__ == "__main__":
    main()
