"""Process entry point of one SP member: ``python -m spotlight.actors.sp_worker ...``.

Starts a runtime hosting an :class:`~spotlight.actors.sp_member.SPMember` named ``sp_member``
and writes the runtime's address to ``--ready-file`` once the model is built and the store is
reached. Runs until killed; exits with ``os._exit`` (torch 2.13 + gloo can abort at
interpreter exit after groups were used).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

MEMBER_NAME = "sp_member"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store-host", default="127.0.0.1")
    ap.add_argument("--store-port", type=int, required=True)
    ap.add_argument("--node", default="node0")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--heartbeat-s", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)

    from spotlight.actors.sp_member import SPMember, SPMemberConfig
    from spotlight.runtime import Runtime, RuntimeConfig, run

    cfg = SPMemberConfig(
        store_host=args.store_host,
        store_port=args.store_port,
        node=args.node,
        model=args.model,
        seed=args.seed,
        checkpoint=args.checkpoint,
    )

    async def serve(rt: Runtime) -> None:
        await rt.spawn(SPMember, cfg, name=MEMBER_NAME)
        ready = Path(args.ready_file)
        tmp = ready.with_name(ready.name + ".tmp")
        tmp.write_text(rt.address)
        os.replace(tmp, ready)
        await asyncio.Event().wait()

    code = 0
    try:
        run(serve, RuntimeConfig(heartbeat_s=args.heartbeat_s, missed_heartbeats=4))
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    main()
