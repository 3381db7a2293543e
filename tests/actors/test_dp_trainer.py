"""Data-parallel Flow-GRPO: a 2-rank update over gloo equals the 1-rank update.

The 2 ranks are subprocesses of this file (``python test_dp_trainer.py RANK OUT_DIR``) started
the way torchrun starts them: RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT in the environment and
the store hosted by the parent (``TORCHELASTIC_USE_AGENT_STORE``), on a port the OS picked.
While they run, the parent computes the 1-rank reference with ``flow_grpo_iteration``.

Tolerances: with ``micro_batch`` = group size the chunks of both paths hold the same samples,
so rollouts, rewards and log-probs are bit-identical on the first iteration; the gradients
differ only by the order of the final sum (rank partial means scaled by n_r/n, then summed)
and by the rounding of that scale, ~1e-7 relative. AdamW turns a gradient into a step of at
most ~lr per element, so after 2 iterations parameters agree to far below 1e-6 (atol).
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist

from spotlight.models.data_parallel import (
    DPContext,
    broadcast_object,
    broadcast_parameters,
    dp_iteration,
    init_data_parallel,
    shard_groups,
    shutdown_data_parallel,
)
from spotlight.models.dit import build_policy
from spotlight.models.flow_grpo import FlowGrpoConfig, IterationStats, flow_grpo_iteration
from spotlight.models.grpo import GrpoConfig
from spotlight.models.lora import attach_lora
from spotlight.models.lora_settings import LoraSettings
from spotlight.models.sampler import SamplerConfig

WORLD = 2
ITERATIONS = 2
POLICY_SEED = 3
PROMPTS = ["a red circle", "two blue squares", "a green triangle"]
ATOL = 1e-6


def _redness(images: np.ndarray, prompts: list[str]) -> np.ndarray:
    """A deterministic reward with spread between seeds: how red the image is, in [0, 1]."""
    img = images.astype(np.float32) / 255.0
    return np.clip(0.5 + 0.5 * (img[..., 0] - img[..., 1:].mean(-1)).mean(axis=(1, 2)), 0, 1)


def _config(groups: int, objective: str = "flow_grpo") -> FlowGrpoConfig:
    # micro_batch = group size (see module docstring); one update per inner epoch on 1 rank
    # (chunks_per_update covers the batch); 2 inner epochs so the second, shuffled,
    # off-policy pass (ratio != 1, clipping) is compared too.
    return FlowGrpoConfig(
        prompts_per_iter=groups,
        group_size=2,
        micro_batch=2,
        chunks_per_update=groups,
        inner_epochs=2,
        sampler=SamplerConfig(num_steps=3, noise_level=0.9, sde_window=(0, 2)),
        grpo=GrpoConfig(clip_range=1e-2),
        lr=1e-3,
        objective=objective,  # type: ignore[arg-type]
    )


def _batch(config: FlowGrpoConfig, iteration: int) -> tuple[list[str], list[int]]:
    g = config.group_size
    prompts = [p for p in PROMPTS[: config.prompts_per_iter] for _ in range(g)]
    seeds = [1000 * iteration + i for i in range(len(prompts))]
    return prompts, seeds


def _optimizer(policy: torch.nn.Module, config: FlowGrpoConfig) -> torch.optim.Optimizer:
    # eps 1e-6, not AdamW's 1e-8: Adam divides by sqrt(v) + eps, so a gradient element that is
    # rounding noise (~1e-11, where terms cancel) becomes a step of up to lr·1e-11/eps. With
    # eps 1e-8 that is ~1e-6, the tolerance itself; the gradients agree either way.
    trainable = [p for p in policy.parameters() if p.requires_grad]
    return torch.optim.AdamW(trainable, lr=config.lr, eps=1e-6)


LORA = LoraSettings(rank=4, alpha=8)

CASES = {
    "even": (2, "flow_grpo", False),
    "uneven": (3, "flow_grpo", False),
    "nft_uneven": (3, "nft", False),
    "lora_uneven": (3, "flow_grpo", True),
}
"""Case name -> (groups per iteration, objective, LoRA); 3 groups on 2 ranks: shards of 2
and 1. With LoRA only the adapters train (and only their gradients are all-reduced)."""


def _policy(seed: int, lora: bool) -> torch.nn.Module:
    policy = build_policy("tiny", seed=seed)
    return attach_lora(policy, LORA) if lora else policy


def _run_single(groups: int, objective: str, lora: bool) -> dict[str, Any]:
    """The 1-rank reference: flow_grpo_iteration on the global batch (1 thread, like the
    ranks: the same kernels, and no spinning threads competing with them)."""
    config = _config(groups, objective)
    policy = _policy(POLICY_SEED, lora)
    opt = _optimizer(policy, config)
    stats = []
    for it in range(ITERATIONS):
        prompts, seeds = _batch(config, it)
        s, _ = flow_grpo_iteration(policy, opt, prompts, seeds, _redness, config, shuffle_seed=it)
        stats.append(s)
    return {"state": policy.state_dict(), "stats": stats}


# ----------------------------------------------------------------------------- child process


def _child_main(out_dir: Path) -> None:
    """One DP rank: both cases in one process group, results to OUT_DIR/rank{R}.pt."""
    torch.set_num_threads(1)
    ctx = init_data_parallel("gloo", timeout_s=60.0)
    results: dict[str, Any] = {"rank": ctx.rank, "world": ctx.world}
    for case, (groups, objective, lora) in CASES.items():
        config = _config(groups, objective)
        # Rank 1 starts from other weights: broadcast_parameters must make them rank 0's.
        policy = _policy(POLICY_SEED + ctx.rank, lora)
        broadcast_parameters(policy, ctx)
        opt = _optimizer(policy, config)
        stats = []
        for it in range(ITERATIONS):
            # The orchestrator's plan reaches the others by broadcast_object.
            plan = broadcast_object(_batch(config, it) if ctx.is_main else None, ctx)
            prompts, seeds = plan
            stats.append(
                dp_iteration(policy, opt, prompts, seeds, _redness, config, ctx, shuffle_seed=it)
            )
        results[case] = {
            "state": policy.state_dict(),
            "stats": stats,
            "shard": shard_groups(groups, ctx),
        }
    # A bad config is refused on every rank before any collective; the group stays usable.
    bad = dataclasses.replace(_config(2), chunks_per_update=1)
    try:
        dp_iteration(policy, opt, *_batch(bad, 0), _redness, bad, ctx)
        results["refused"] = None
    except ValueError as exc:
        results["refused"] = str(exc)
    results["after_refusal"] = broadcast_object("still in step", ctx)
    # Peer loss: rank 1 leaves without entering the next collective; rank 0's must raise
    # (bounded by the group timeout), never hang. Rank 1 waits until rank 0's results are
    # safely written, so the lost collective is the only thing that fails.
    if ctx.is_main:
        torch.save(results, out_dir / "rank0.pt")
        broadcast_object("rank0 saved", ctx)
        t0 = time.monotonic()
        try:
            broadcast_object(None, ctx, src=1)  # must receive: a send could just buffer
            outcome = "no error"
        except Exception as exc:  # the type differs by torch version; recorded, then asserted
            outcome = f"{type(exc).__name__}: {exc}"
        (out_dir / "peer_lost.txt").write_text(f"{time.monotonic() - t0:.3f}\n{outcome}")
    else:
        torch.save(results, out_dir / f"rank{ctx.rank}.pt")
        broadcast_object(None, ctx)
        shutdown_data_parallel(ctx)


if __name__ == "__main__":
    try:
        _child_main(Path(sys.argv[1]))
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    # gloo processes may abort at interpreter exit (see models/process_groups.py): results
    # are written, leave without the interpreter's teardown.
    os._exit(0)


# ----------------------------------------------------------------------------- parent


@pytest.fixture(scope="module")
def dp_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("dp")
    # The parent plays torchrun's agent: it hosts the store on a free port (port 0).
    store = dist.TCPStore(
        "127.0.0.1", 0, None, True, timeout=timedelta(seconds=60), use_libuv=False
    )
    procs: list[subprocess.Popen[bytes]] = []
    logs = [out / f"rank{r}.log" for r in range(WORLD)]
    try:
        for r in range(WORLD):
            env = {
                **os.environ,
                "RANK": str(r),
                "LOCAL_RANK": str(r),
                "WORLD_SIZE": str(WORLD),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(store.port),
                "TORCHELASTIC_USE_AGENT_STORE": "True",
                "OMP_NUM_THREADS": "1",
            }
            with logs[r].open("wb") as log:  # a file, not a pipe: a full pipe cannot stall it
                procs.append(
                    subprocess.Popen(
                        [sys.executable, __file__, str(out)], env=env, stdout=log, stderr=log
                    )
                )
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            reference = {case: _run_single(*spec) for case, spec in CASES.items()}
        finally:
            torch.set_num_threads(threads)
        deadline = time.monotonic() + 150  # generous: the box is shared
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} exited {p.returncode}:\n{logs[r].read_text()[-4000:]}"
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    lost_s, lost = (out / "peer_lost.txt").read_text().split("\n", 1)
    del store
    return {"ranks": ranks, "reference": reference, "peer_lost": (float(lost_s), lost)}


def _stats_close(a: IterationStats, b: IterationStats, iteration: int) -> None:
    # The first iteration's rollouts are bit-identical, so are its rewards. Later rollouts
    # come from parameters that agree to ~1e-7 (module doc), and the reward's shape
    # descriptors pass that on: a 2-rank NFT run's second-iteration mean differed by 1.6e-7
    # on one VM (every run there).
    tol = 1e-7 if iteration == 0 else 1e-5
    assert a.reward.mean == pytest.approx(b.reward.mean, abs=tol)
    assert a.reward.std == pytest.approx(b.reward.std, abs=tol)
    assert a.reward.zero_std_group_frac == b.reward.zero_std_group_frac
    for name in a.loss.__dataclass_fields__:
        x, y = getattr(a.loss, name), getattr(b.loss, name)
        # Clip fractions count ratios beyond 1 ± ε: exact unless a ratio sits at the edge.
        assert x == pytest.approx(y, rel=1e-4, abs=1e-6), name
    assert a.first_ratio_dev == b.first_ratio_dev == 0.0
    assert a.grad_norm == pytest.approx(b.grad_norm, rel=1e-5)
    assert a.optimizer_steps == b.optimizer_steps


@pytest.mark.timeout(240)
@pytest.mark.parametrize("case", list(CASES))
def test_two_rank_update_equals_one_rank(dp_results: dict[str, Any], case: str) -> None:
    ref = dp_results["reference"][case]
    worst = 0.0
    for res in dp_results["ranks"]:
        state = res[case]["state"]
        assert state.keys() == ref["state"].keys()
        for name, want in ref["state"].items():
            diff = float((state[name] - want).abs().max()) if want.numel() else 0.0
            worst = max(worst, diff)
            assert diff <= ATOL, f"{case} {name}: max |diff| {diff:.2e}"
        for i, (got, want) in enumerate(zip(res[case]["stats"], ref["stats"], strict=True)):
            _stats_close(got, want, i)
    print(f"{case}: max |param diff| vs 1 rank = {worst:.2e}")
    # The update actually moved the weights (a no-op would also "match").
    start = _policy(POLICY_SEED, CASES[case][2]).state_dict()
    moved = max(float((ref["state"][k] - v).abs().max()) for k, v in start.items() if v.numel())
    assert moved > 100 * ATOL
    if CASES[case][2]:  # LoRA: the base stays frozen on every rank
        for res in dp_results["ranks"]:
            for name, value in start.items():
                if "lora_" not in name:
                    assert torch.equal(res[case]["state"][name], value), name


@pytest.mark.timeout(240)
@pytest.mark.parametrize("case", list(CASES))
def test_ranks_stay_bit_identical(dp_results: dict[str, Any], case: str) -> None:
    a, b = (res[case] for res in dp_results["ranks"])
    for name, x in a["state"].items():
        assert torch.equal(x, b["state"][name]), name
    assert a["stats"] == b["stats"]  # global stats, the same numbers on every rank


@pytest.mark.timeout(240)
def test_shards_are_whole_contiguous_groups(dp_results: dict[str, Any]) -> None:
    shards = [res["uneven"]["shard"] for res in dp_results["ranks"]]
    assert shards == [range(0, 2), range(2, 3)]


@pytest.mark.timeout(240)
def test_bad_config_is_refused_on_every_rank(dp_results: dict[str, Any]) -> None:
    for res in dp_results["ranks"]:
        assert res["refused"] is not None and "chunks_per_update >= 2" in res["refused"]
        assert res["after_refusal"] == "still in step"


# ----------------------------------------------------------------------------- world 1


def test_shard_groups_covers_every_group_once() -> None:
    for world in range(1, 6):
        for groups in range(0, 12):
            shards = [
                shard_groups(groups, DPContext(rank=r, world=world, group=None, backend="gloo"))
                for r in range(world)
            ]
            assert [g for s in shards for g in s] == list(range(groups))
            assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError, match="num_groups"):
        shard_groups(-1, DPContext(rank=0, world=1, group=None, backend="gloo"))


def test_init_without_torchrun_env_is_world_one(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    ctx = init_data_parallel()
    assert (ctx.rank, ctx.world, ctx.group) == (0, 1, None)
    assert ctx.backend == ("nccl" if torch.cuda.is_available() else "gloo")
    assert ctx.is_main and broadcast_object({"a": 1}, ctx) == {"a": 1}
    shutdown_data_parallel(ctx)  # nothing to destroy
    assert ctx.device == torch.device("cpu")
    # Under NCCL the device comes from LOCAL_RANK, not the (per-thread) current device.
    assert DPContext(rank=3, world=4, group=None, backend="nccl", local_rank=1).device == (
        torch.device("cuda", 1)
    )
    with pytest.raises(ValueError, match="valid: gloo, nccl"):
        init_data_parallel("mpi")
    with pytest.raises(ValueError, match="timeout_s"):
        init_data_parallel("gloo", timeout_s=0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="RANK"):
        init_data_parallel("gloo")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="out of range"):
        init_data_parallel("gloo")


def test_world_one_is_flow_grpo_iteration() -> None:
    """With one rank dp_iteration is the local trainer's step, any chunks_per_update."""
    config = dataclasses.replace(_config(2), chunks_per_update=1, inner_epochs=1)  # 2 steps
    ctx = DPContext(rank=0, world=1, group=None, backend="gloo")
    a, b = build_policy("tiny", seed=1), build_policy("tiny", seed=1)
    opt_a = _optimizer(a, config)
    opt_b = _optimizer(b, config)
    prompts, seeds = _batch(config, 0)
    got = dp_iteration(a, opt_a, prompts, seeds, _redness, config, ctx)
    want, _ = flow_grpo_iteration(b, opt_b, prompts, seeds, _redness, config)
    assert got.optimizer_steps == want.optimizer_steps == 2
    assert math.isclose(got.reward.mean, want.reward.mean)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def test_grad_sync_runs_before_clipping_and_the_step() -> None:
    """The hook sees every accumulated gradient once per update, and what it leaves is what
    clipping and the optimizer use: zeroed gradients give norm 0 and an unchanged policy."""
    config = dataclasses.replace(_config(2), chunks_per_update=1, inner_epochs=1)
    policy = build_policy("tiny", seed=1)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    calls: list[int] = []

    def zero(grads: list[torch.Tensor]) -> None:
        assert any(float(g.abs().max()) > 0 for g in grads)  # real, not yet zeroed
        calls.append(len(grads))
        for g in grads:
            g.zero_()

    opt = torch.optim.SGD(policy.parameters(), lr=1.0)
    prompts, seeds = _batch(config, 0)
    stats, _ = flow_grpo_iteration(policy, opt, prompts, seeds, _redness, config, grad_sync=zero)
    assert len(calls) == stats.optimizer_steps == 2
    assert calls[0] == sum(1 for p in policy.parameters() if p.grad is not None)
    assert stats.grad_norm == 0.0
    for name, x in policy.state_dict().items():
        assert torch.equal(x, before[name]), name


def test_bad_batches_are_refused_before_any_collective() -> None:
    """Checked on arguments every rank holds, so every rank raises alike (no group needed)."""
    ctx = DPContext(rank=0, world=2, group=None, backend="gloo")
    policy = build_policy("tiny", seed=1)
    opt = _optimizer(policy, _config(2))
    config = _config(2)
    prompts, seeds = _batch(config, 0)
    swapped = [prompts[0], prompts[2], prompts[1], prompts[3]]  # groups not contiguous
    with pytest.raises(ValueError, match=r"group 0 .* mixes prompts"):
        dp_iteration(policy, opt, swapped, seeds, _redness, config, ctx)
    with pytest.raises(ValueError, match="expected 4"):
        dp_iteration(policy, opt, prompts[:2], seeds[:2], _redness, config, ctx)
    one = dataclasses.replace(config, prompts_per_iter=1, chunks_per_update=1)
    with pytest.raises(ValueError, match="prompts_per_iter >= 2"):
        dp_iteration(policy, opt, *_batch(one, 0), _redness, one, ctx)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs CUDA"):
            init_data_parallel("nccl")


@pytest.mark.timeout(240)
def test_collective_with_a_lost_peer_raises(dp_results: dict[str, Any]) -> None:
    elapsed, outcome = dp_results["peer_lost"]
    print(f"lost peer: raised after {elapsed:.2f} s: {outcome[:200]}")
    assert outcome != "no error"
    assert elapsed < 60 + 10  # the group timeout (60 s) bounds it; typically immediate
