"""The trainer loop: resume from a checkpoint equals an uninterrupted run; plans are recorded
before use and re-used; the planner path and its random fallback."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from spotlight.actors.exploration.planner import random_plan
from spotlight.actors.trainer.loop import TrainerLoop, TrainerLoopConfig
from spotlight.actors.trainer.plan_log import PlanLog, plan_from_json, plan_seed, plan_to_json
from spotlight.models.checkpoint import CheckpointCard, save_checkpoint
from spotlight.models.dit import build_policy
from spotlight.models.flow_grpo import FlowGrpoConfig
from spotlight.models.grpo import GrpoConfig
from spotlight.models.sampler import SamplerConfig
from tests.micro import MICRO, redness


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("base") / "micro"
    policy = build_policy(MICRO, seed=3)
    save_checkpoint(policy, path, CheckpointCard(config=MICRO, steps=0))
    return path


def _config(base: Path, iterations: int, micro_batch: int = 4, **kw: object) -> TrainerLoopConfig:
    algo = FlowGrpoConfig(
        prompts_per_iter=2,
        group_size=3,
        micro_batch=micro_batch,
        sampler=SamplerConfig(num_steps=3, noise_level=0.9, sde_window=(0, 2)),
        grpo=GrpoConfig(clip_range=1e-2),
        lr=1e-3,
    )
    args: dict[str, object] = {
        "algo": algo,
        "iterations": iterations,
        "val_every": 2,
        "ckpt_every": 2,
        "val_per_kind": 1,
        "val_seeds": 2,
        "seed": 5,
        "base": str(base),
    }
    args.update(kw)
    return TrainerLoopConfig(**args)  # type: ignore[arg-type]


def _run(config: TrainerLoopConfig, run_dir: Path, *, resume: bool = False) -> TrainerLoop:
    loop = TrainerLoop(config, run_dir, resume=resume, reward_fn=redness)
    asyncio.run(loop.run())
    return loop


def _params(loop: TrainerLoop) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in loop.policy.state_dict().items()}


@pytest.mark.timeout(120)
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(base: Path, tmp_path: Path) -> None:
    straight = _run(_config(base, 4), tmp_path / "straight")
    _run(_config(base, 2), tmp_path / "split")
    resumed = _run(_config(base, 4), tmp_path / "split", resume=True)
    a, b = _params(straight), _params(resumed)
    moved = max((a[k] - build_policy(MICRO, seed=3).state_dict()[k]).abs().max().item() for k in a)
    assert moved > 0, "training changed nothing: the comparison would prove nothing"
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0, msg=name)
    assert resumed.iteration == 4 and straight.iteration == 4
    # plans: one per iteration, identical between the two runs, all random (no planner)
    lines = [json.loads(x) for x in (tmp_path / "split" / "plans.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [0, 1, 2, 3]
    assert (
        PlanLog(tmp_path / "straight" / "plans.jsonl").plans
        == PlanLog(tmp_path / "split" / "plans.jsonl").plans
    )
    assert all(r["plan"]["fallback_seeds"] == 6 for r in lines)
    # files of a finished run
    state = json.loads((tmp_path / "split" / "checkpoint" / "state.json").read_text())
    assert state == {"iteration": 4, "weight_version": 4}
    assert (tmp_path / "split" / "curve.png").stat().st_size > 0
    log = [json.loads(x) for x in (tmp_path / "split" / "trainer.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log if r["kind"] == "iteration"] == [1, 2, 3, 4]
    assert [r["iteration"] for r in log if r["kind"] == "validation"] == [0, 2, 4]


@pytest.mark.timeout(120)
def test_a_dedicated_torch_thread_does_all_torch_work_and_changes_no_result(
    base: Path, tmp_path: Path
) -> None:
    threads: list[int] = []

    def reward(images: np.ndarray, prompts: list[str]) -> np.ndarray:
        threads.append(threading.get_ident())  # rollouts and validations call it
        return redness(images, prompts)

    pooled = _run(_config(base, 2), tmp_path / "pooled")
    loop = TrainerLoop(
        _config(base, 2, dedicated_torch_thread=True), tmp_path / "dedicated", reward_fn=reward
    )
    asyncio.run(loop.run())
    assert len(set(threads)) == 1 and threads[0] != threading.get_ident()
    assert len(threads) == 2 + 2  # 2 iterations, validations at 0 and 2
    a, b = _params(pooled), _params(loop)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    with pytest.raises(RuntimeError):  # shut down when run() returned: no thread left behind
        loop._torch_thread.submit(int)  # type: ignore[union-attr]


@pytest.mark.timeout(120)
def test_a_recorded_plan_is_reused_when_an_iteration_is_redone(base: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _run(_config(base, 2), run_dir)
    # A crashed process had recorded (and maybe trained on) iteration 2 with other seeds.
    log = PlanLog(run_dir / "plans.jsonl")
    prompts = [g.prompt for g in random_plan("b2", ["x", "y"], 3, seed=0).groups]
    assert prompts == ["x", "y"]
    loop0 = TrainerLoop(_config(base, 3), run_dir, resume=True, reward_fn=redness)
    loop0._setup()
    custom = random_plan("b2", loop0.prompts_for(2), 3, seed=123)
    assert custom != random_plan("b2", loop0.prompts_for(2), 3, seed=plan_seed(5, 2))
    log.append(2, custom)
    with open(run_dir / "plans.jsonl", "a") as f:
        f.write('{"iteration": 3, "plan": {"batch')  # a torn last line
    resumed = TrainerLoop(_config(base, 3), run_dir, resume=True, reward_fn=redness)
    summary = asyncio.run(resumed.run())
    assert summary.plans_reused == 1 and summary.start_iteration == 2
    assert PlanLog(run_dir / "plans.jsonl").get(2) == custom


def test_plan_json_round_trip_and_log_rejects_a_second_plan(tmp_path: Path) -> None:
    plan = random_plan("b7", ["a red circle", "two blue squares"], 4, seed=9)
    assert plan_from_json(json.loads(json.dumps(plan_to_json(plan)))) == plan
    log = PlanLog(tmp_path / "plans.jsonl")
    log.append(7, plan)
    with pytest.raises(ValueError, match="already has a recorded plan"):
        log.append(7, plan)
    assert PlanLog(tmp_path / "plans.jsonl").get(7) == plan


def test_config_errors_name_the_field(base: Path) -> None:
    with pytest.raises(ValueError, match="val_every"):
        _config(base, 2, val_every=0)
    with pytest.raises(ValueError, match="time_budget_s"):
        _config(base, 2, time_budget_s=0.0)


@pytest.mark.timeout(120)
def test_the_overfit_control_draws_every_prompt_from_the_validation_set(base: Path) -> None:
    """train_prompts='validation' (bench_learning's control) trains on exactly the validation
    prompts, kind-balanced; the default never does (held-out prompts stay held out)."""
    from spotlight.models import scenes

    held_out = set(scenes.prompt_split()[1])
    control = TrainerLoop(
        _config(base, 2, train_prompts="validation", val_per_kind=2), Path("unused")
    )
    control._setup()
    drawn = {p for k in range(40) for p in control.prompts_for(k)}
    assert drawn <= set(control.val_prompts)
    assert len(drawn) > len(control.val_prompts) // 2  # not stuck on a few of them
    normal = TrainerLoop(_config(base, 2, val_per_kind=2), Path("unused"))
    normal._setup()
    assert not {p for k in range(40) for p in normal.prompts_for(k)} & held_out
    with pytest.raises(ValueError, match="train_prompts must be one of train, validation"):
        _config(base, 2, train_prompts="test")


@pytest.mark.timeout(120)
def test_resume_without_a_checkpoint_is_a_clear_error(base: Path, tmp_path: Path) -> None:
    loop = TrainerLoop(_config(base, 2), tmp_path / "empty", resume=True, reward_fn=redness)
    with pytest.raises(ValueError, match="no checkpoint"):
        asyncio.run(loop.run())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow  # two torch processes + a reference run: ~30 s on a busy 2-core box
@pytest.mark.timeout(240)
def test_two_data_parallel_ranks_follow_rank_0_and_match_one_rank(
    base: Path, tmp_path: Path
) -> None:
    """Rank 0 plans and broadcasts; rank 1 follows; both end with the 1-rank weights."""
    import os
    import subprocess
    import sys

    # one chunk per rank: dp_iteration makes one optimizer step over the global batch
    single = _run(_config(base, 2, micro_batch=8), tmp_path / "single")
    port = _free_port()
    procs = []
    try:
        for rank in range(2):
            env = dict(
                os.environ,
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE="2",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
                OMP_NUM_THREADS="1",
            )
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "tests.actors._dp_loop_worker",
                        str(base),
                        str(tmp_path / "dp"),
                        str(tmp_path / f"rank{rank}.pt"),
                        "2",
                    ],
                    env=env,
                    cwd=Path(__file__).resolve().parents[2],
                    stderr=subprocess.PIPE,
                )
            )
        for p in procs:
            _, err = p.communicate(timeout=200)
            assert p.returncode == 0, err.decode()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [r["iterations"] for r in results] == [2, 2]
    ref = _params(single)
    for name, value in ref.items():
        # the same update up to the order of float additions in the gradient all-reduce
        torch.testing.assert_close(results[0]["state"][name], value, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(
            results[1]["state"][name], results[0]["state"][name], atol=0, rtol=0
        )
    assert len((tmp_path / "dp" / "plans.jsonl").read_text().splitlines()) == 2  # rank 0 only


def test_a_repeated_prompt_gets_the_planned_group_once_then_random_seeds() -> None:
    from spotlight.actors.exploration.bandit import GroupChoice
    from spotlight.actors.exploration.planner import SeedPlan
    from spotlight.actors.trainer.plan_log import expand_plan

    answer = SeedPlan(
        batch_id="b1",
        groups=[GroupChoice("a", (1, 2), 0.5, 0), GroupChoice("b", (3, 4), 0.1, 1)],
        fallback_seeds=1,
        fallback_prompts=1,
        explored_seeds=5,
        budget_gpu_s=2.0,
        used_gpu_s=1.0,
    )
    prompts = ["a", "b", "a"]
    spare = random_plan("b1", prompts, 2, seed=4)
    plan = expand_plan(answer, prompts, spare)
    assert [g.prompt for g in plan.groups] == prompts
    assert plan.groups[0] == answer.groups[0] and plan.groups[1] == answer.groups[1]
    assert plan.groups[2] == spare.groups[2]
    assert (plan.fallback_seeds, plan.fallback_prompts, plan.explored_seeds) == (3, 2, 5)


@pytest.mark.timeout(120)
def test_explored_mode_asks_a_real_planner_and_publishes_metrics(
    base: Path, tmp_path: Path
) -> None:
    """Through the runtime: plan b{k+1}, take_groups b{k}; no explorers -> all fallbacks,
    recorded in plans.jsonl; trainer/validation/exploration records reach the monitor."""
    from spotlight.actors.exploration.bandit import BanditConfig
    from spotlight.actors.exploration.planner import PlannerActor, PlannerConfig
    from spotlight.actors.monitor.actor import Monitor, MonitorConfig
    from spotlight.actors.monitor.metrics import MetricsPublisher
    from spotlight.actors.scheduling.scheduler import SchedulerActor
    from spotlight.runtime import Runtime

    async def main() -> tuple[TrainerLoop, dict[str, int], object]:
        async with Runtime() as rt:
            monitor = await rt.spawn(Monitor, MonitorConfig(self_report_s=None), name="monitor")
            scheduler = await rt.spawn(SchedulerActor, name="explore_scheduler")
            planner = await rt.spawn(
                PlannerActor,
                scheduler=scheduler,
                config=PlannerConfig(bandit=BanditConfig(group_size=3)),
                name="planner",
            )
            metrics = MetricsPublisher(monitor, source="trainer", runtime=rt)
            loop = TrainerLoop(
                _config(base, 3, explore=True),
                tmp_path / "run",
                planner=planner,
                metrics=metrics,
                reward_fn=redness,
            )
            await loop.run()
            assert await metrics.flush(10.0)
            state = await monitor.snapshot.ask(timeout=10.0)
            stats = await planner.statistics.ask(timeout=10.0)
            await metrics.close()
            return loop, state.records_by_topic, stats

    loop, topics, stats = asyncio.run(main())
    assert loop.iteration == 3
    assert (
        topics["trainer"] == 3 and topics["exploration"] >= 3 and topics["validation"] == 3
    )  # at 0, 2 and the end
    # b1 and b2 were planned while the previous iteration ran, and taken by the trainer
    assert stats.batches_planned == 2 and stats.batches_answered == 2  # type: ignore[attr-defined]
    plans = PlanLog(tmp_path / "run" / "plans.jsonl").plans
    assert sorted(plans) == [0, 1, 2]
    assert all(p.fallback_seeds == 6 and p.explored_seeds == 0 for p in plans.values())


@pytest.mark.timeout(120)
def test_a_prompt_file_trains_on_its_prompts_and_validates_on_held_out_ones(
    base: Path, tmp_path: Path
) -> None:
    from spotlight.models import scenes

    lines = scenes.prompt_split()[0][:40]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# scene captions, one per line\n\n" + "\n".join(lines + lines[:3]) + "\n")
    loop = TrainerLoop(_config(base, 2, prompts=str(prompts)), tmp_path / "run")
    loop._setup()
    held = set(loop.val_prompts)
    drawn = {p for k in range(50) for p in loop.prompts_for(k)}
    assert held and held <= set(lines) and len(held) == 4  # a tenth of 40, all used (≤ 5)
    assert drawn <= set(lines) - held and len(drawn) > 20
    again = TrainerLoop(_config(base, 2, prompts=str(prompts)), tmp_path / "run2")
    again._setup()
    assert again.val_prompts == loop.val_prompts  # the split is deterministic
    # the tiny text encoder refuses words it cannot read, before the first iteration
    prompts.write_text('a red circle\na sign that says "OPEN"\n')
    with pytest.raises(ValueError, match=r"trainer.prompts=.*scene captions' words only"):
        TrainerLoop(_config(base, 2, prompts=str(prompts)), tmp_path / "run3")._setup()
