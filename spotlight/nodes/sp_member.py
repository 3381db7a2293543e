"""Process entry point of one SP member: ``python -m spotlight.nodes.sp_member ...``.

Starts a runtime hosting an :class:`~spotlight.actors.sp.member.SPMember` named ``sp_member``
and writes the runtime's address to ``--ready-file`` once the model is built and the store is
reached. Runs until killed; exits with ``os._exit`` (torch 2.13 + gloo can abort at
interpreter exit after groups were used).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL us when the parent exits (a spot node SIGKILLed must not leave its
    members running); the kernel ties this to the parent *thread* that forked us, so the
    parent launches members from its main thread."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the parent kills by PID
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store-host", default="127.0.0.1")
    ap.add_argument("--store-port", type=int, required=True)
    ap.add_argument("--node", default="node0")
    ap.add_argument("--model", default="tiny", help="config name, or a DiTConfig as a JSON object")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default=None, help="weights, or with --lora the base")
    ap.add_argument("--lora", default=None, help="LoRA settings as a JSON object")
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--heartbeat-s", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        help="die (SIGKILL) when this process's parent exits; refuse to start if the parent "
        "is not this PID any more (it died while we started): no orphan members",
    )
    args = ap.parse_args(argv)
    if args.parent_pid is not None:
        _die_with_parent(args.parent_pid)

    import torch

    torch.set_num_threads(args.threads)

    from spotlight.actors.sp.member import MEMBER_NAME, SPMember, SPMemberConfig
    from spotlight.models.dit import DiTConfig
    from spotlight.runtime import Runtime, RuntimeConfig, run

    model: str | DiTConfig = args.model
    if args.model.lstrip().startswith("{"):
        model = DiTConfig.from_dict(json.loads(args.model))
    cfg = SPMemberConfig(
        store_host=args.store_host,
        store_port=args.store_port,
        node=args.node,
        model=model,
        seed=args.seed,
        checkpoint=args.checkpoint,
        lora=None if args.lora is None else json.loads(args.lora),
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
