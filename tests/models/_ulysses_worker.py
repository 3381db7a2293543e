"""One SP member for tests/models/test_ulysses.py (run as a subprocess, 4 of them).

Usage: python _ulysses_worker.py RANK STORE_PORT CASE_FILE OUT_DIR [STEPS]

The parent writes CASE_FILE (model config, state dict, inputs) and hosts the
TCPStore; every worker builds the same model from it and walks through the
group epochs below in the same process, writing its results to
OUT_DIR/rank{RANK}.pt. Epochs (each a fresh store prefix):

    ep0   degree 4 (ranks 0-3): STEPS Euler steps with sharded latents, + grads
    ep1   degree 2 (ranks 0-1; ranks 2-3 idle): STEPS steps via ulysses_forward, + grads
    bad3  degree 3 (ranks 0-2): set_group must raise ValueError (3 does not divide 4 heads)
    ep2   degree 4 (ranks 0-3) again: STEPS steps, to show re-forming 4 -> 2 -> 4 works
    (none) degree 1 on the same model: the plain diffusers processor
    dead  degree 4, then rank 3 exits abruptly: ranks 0-2 must get an error, not hang
"""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from diffusers.models.transformers.transformer_qwenimage import QwenImageTransformer2DModel

from spotlight.models.process_groups import shutdown_group, timed_new_group_from_store
from spotlight.models.ulysses import (
    allreduce_grads,
    enable_ulysses,
    gather_tokens,
    shard_tokens,
    ulysses_forward,
)

TIMEOUT = timedelta(seconds=60)
DEAD_TIMEOUT = timedelta(seconds=10)


def sharded_steps(
    model: Any, case: dict[str, Any], group: Any, steps: int
) -> tuple[torch.Tensor, list[float]]:
    """Euler steps keeping only this rank's tokens of the latent between steps."""
    x = shard_tokens(case["latent"], group)
    times = []
    for i in range(steps):
        t = 1.0 - i / steps
        t0 = time.perf_counter()
        with torch.no_grad():
            v = model(
                hidden_states=x,
                encoder_hidden_states=case["text"],
                encoder_hidden_states_mask=case["mask"],
                timestep=torch.full((x.shape[0],), t),
                img_shapes=case["img_shapes"],
                return_dict=False,
            )[0]
        times.append(time.perf_counter() - t0)
        x = x - v / steps
    return gather_tokens(x, group), times


def gathered_steps(
    model: Any, case: dict[str, Any], group: Any, steps: int
) -> tuple[torch.Tensor, list[float]]:
    """Euler steps with the full latent on every rank (ulysses_forward shards/gathers)."""
    x = case["latent"]
    times = []
    for i in range(steps):
        t = 1.0 - i / steps
        t0 = time.perf_counter()
        with torch.no_grad():
            v = ulysses_forward(
                model,
                group,
                hidden_states=x,
                encoder_hidden_states=case["text"],
                encoder_hidden_states_mask=case["mask"],
                timestep=torch.full((x.shape[0],), t),
                img_shapes=case["img_shapes"],
            )
        times.append(time.perf_counter() - t0)
        x = x - v / steps
    return x, times


def sharded_grads(model: Any, case: dict[str, Any], group: Any) -> torch.Tensor:
    """Loss on this rank's tokens only, backward, all-reduce: the full-model gradient."""
    model.zero_grad(set_to_none=True)
    out = model(
        hidden_states=shard_tokens(case["latent"], group),
        encoder_hidden_states=case["text"],
        encoder_hidden_states_mask=case["mask"],
        timestep=torch.full((case["latent"].shape[0],), 0.7),
        img_shapes=case["img_shapes"],
        return_dict=False,
    )[0]
    (out * shard_tokens(case["loss_weight"], group)).sum().backward()
    allreduce_grads(model, group)
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def gather_adjoint_error(case: dict[str, Any], group: Any) -> float:
    """Every rank's loss sum(gather(x) * w): d/dx_local must be P * w[local]."""
    x = shard_tokens(case["latent"], group).clone().requires_grad_(True)
    (gather_tokens(x, group) * case["loss_weight"]).sum().backward()
    want = group.size() * shard_tokens(case["loss_weight"], group)
    return float((x.grad - want).abs().max())


def main() -> None:
    rank, port = int(sys.argv[1]), int(sys.argv[2])
    case_file, out_dir = sys.argv[3], sys.argv[4]
    steps = int(sys.argv[5]) if len(sys.argv) > 5 else 2
    torch.set_num_threads(1)
    case = torch.load(case_file, weights_only=False)
    model = QwenImageTransformer2DModel(**case["config"])
    model.load_state_dict(case["state_dict"])
    model.eval()
    store = dist.TCPStore("127.0.0.1", port, None, False, timeout=TIMEOUT, use_libuv=False)
    res: dict[str, Any] = {"create_s": {}}

    def group(prefix: str, size: int, timeout: timedelta = TIMEOUT) -> Any:
        pg, info = timed_new_group_from_store(
            store, prefix, rank, size, timeout=timeout, gloo_hostname="127.0.0.1"
        )
        res["create_s"][prefix] = info.create_s
        return pg

    pg = group("ep0", 4)
    handle = enable_ulysses(model, pg)
    res["ep0_latent"], res["ep0_times"] = sharded_steps(model, case, pg, steps)
    res["ep0_grads"] = sharded_grads(model, case, pg)
    res["gather_adjoint_err"] = gather_adjoint_error(case, pg)
    pg.barrier().wait()
    shutdown_group(pg)

    if rank < 2:
        pg = group("ep1", 2)
        res["ep1_latent"], res["ep1_times"] = gathered_steps(model, case, pg, steps)
        res["ep1_grads"] = sharded_grads(model, case, pg)
        pg.barrier().wait()
        shutdown_group(pg)

    if rank < 3:
        pg = group("bad3", 3)
        try:
            handle.set_group(pg)
        except ValueError as e:
            res["bad3_error"] = str(e)
        pg.barrier().wait()
        shutdown_group(pg)

    pg = group("ep2", 4)
    handle.set_group(pg)
    res["ep2_latent"], res["ep2_times"] = sharded_steps(model, case, pg, steps)
    pg.barrier().wait()
    shutdown_group(pg)

    # Degree 1 on the same model: the handle falls back to diffusers' processor.
    handle.set_group(None)
    res["deg1_latent"], res["deg1_times"] = sharded_steps(model, case, None, steps)

    # A member vanishes (no goodbye, like SIGKILL) after the group formed: the others'
    # next forward must raise within the group timeout instead of hanging.
    pg = group("dead", 4, timeout=DEAD_TIMEOUT)
    handle.set_group(pg)
    if rank == 3:
        torch.save(res, f"{out_dir}/rank{rank}.pt")
        os._exit(0)
    t0 = time.perf_counter()
    try:
        sharded_steps(model, case, pg, 1)
    except RuntimeError as e:
        res["dead_error"] = f"{type(e).__name__}: {e}"[:500]
    res["dead_s"] = time.perf_counter() - t0
    shutdown_group(pg)
    torch.save(res, f"{out_dir}/rank{rank}.pt")
    # torch 2.13 + gloo: ~5-10% of interpreter exits after gloo groups abort with
    # "terminate called without an active exception"; the results are on disk, skip teardown.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
