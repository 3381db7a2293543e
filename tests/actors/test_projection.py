"""The projection simulator on small cases checked by hand (numbers in the comments)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from spotlight.actors.spot.prices import Prices
from spotlight.actors.spot.projection import (
    IterationsNeeded,
    ProjectionConfig,
    project,
    simulate,
)
from spotlight.actors.spot.trace import parse_trace

PRICES = Prices(
    ondemand_usd_per_gpu_hour=3600.0, spot_usd_per_gpu_hour=1800.0
)  # $1 / $0.5 per GPU-s
# one GPU per node and per SP group, one GPU-second per step, 100 GPU-s of rollouts
SMALL = ProjectionConfig(
    ondemand_gpus=1,
    gpus_per_node=1,
    sp_degree=1,
    step_gpu_s=1.0,
    denoise_steps=10,
    rollout_samples=10,
    train_step_s=0.0,
    weight_load_s=0.0,
    sp_reform_s=0.0,
    loss_detect_s=0.0,
    commit_interval_steps=1,
    restart_checkpoint_steps=10,
)
ONE_NODE = "t_s,event,node\n0,add,n0\n"


def _run(strategy: str, trace_text: str, cfg: ProjectionConfig = SMALL, iters: int = 1):
    return simulate(strategy, parse_trace(trace_text), config=cfg, prices=PRICES, iterations=iters)


def test_ondemand_hand_computed() -> None:
    cfg = replace(SMALL, ondemand_gpus=2, denoise_steps=2, rollout_samples=3, train_step_s=1.0)
    r = _run("ondemand", ONE_NODE, cfg, iters=5)
    # rollouts 3 x 2 x 1 GPU-s on 2 GPUs = 3 s, + 1 s training = 4 s per iteration
    assert r.timeline == [(pytest.approx(4.0 * i), i) for i in range(1, 6)]
    assert r.wall_s == pytest.approx(20.0)
    assert r.cost.gpu_hours["spot"] == 0.0  # the trace's spot nodes are not used or billed
    assert r.cost.total_dollars == pytest.approx(2 * 20.0 * 1.0)
    assert r.preemptions == 0 and r.gpu_s_lost == 0.0


def test_no_preemption_restart_equals_spotlight() -> None:
    cfg = replace(SMALL, weight_load_s=10.0, train_step_s=5.0)
    a = _run("restart", ONE_NODE, cfg, iters=3)
    b = _run("spotlight", ONE_NODE, cfg, iters=3)
    # it 1: 10 s alone (10 GPU-s), then 2 GPUs for 45 s -> rollouts end at 55, train to 60
    assert a.timeline[0] == (pytest.approx(60.0), 1)
    assert a.timeline == b.timeline
    assert a.cost.to_dict() == pytest.approx(b.cost.to_dict())
    assert a.gpu_s_lost == b.gpu_s_lost == 0.0
    # spot billed for the whole run, busy or idle: 1 GPU x wall
    assert a.cost.gpu_hours["spot"] == pytest.approx(a.wall_s / 3600)
    assert b.explore_gpu_s == pytest.approx(3 * 5.0)  # the node explores during training


def test_silent_loss_restart_loses_since_checkpoint_spotlight_since_commit() -> None:
    trace = ONE_NODE + "7.5,remove,n0\n"
    restart, spot = _run("restart", trace), _run("spotlight", trace)
    # until 7.5 s: 2 GPUs -> 15 GPU-s done. Restart's checkpoint is every 10 steps = 10 s:
    # loses 7.5 GPU-s -> 92.5 left on 1 GPU -> done at 100. Spotlight commits every step
    # (1 s): loses 0.5 -> 85.5 left -> done at 93.
    assert restart.gpu_s_lost == pytest.approx(7.5)
    assert spot.gpu_s_lost == pytest.approx(0.5)
    assert spot.steps_lost <= SMALL.commit_interval_steps
    assert restart.wall_s == pytest.approx(100.0)
    assert spot.wall_s == pytest.approx(93.0)
    assert restart.preemptions == spot.preemptions == 1
    assert restart.preemptions_with_notice == 0
    # costs: on-demand 1 GPU x wall at $1/s, spot 7.5 GPU-s at $0.5/s
    assert restart.cost.total_dollars == pytest.approx(100.0 + 3.75)
    assert spot.cost.total_dollars == pytest.approx(93.0 + 3.75)


def test_noticed_loss_spotlight_loses_nothing_restart_ignores_the_notice() -> None:
    trace = ONE_NODE + "5,notice,n0\n7.5,remove,n0\n"
    restart, spot = _run("restart", trace), _run("spotlight", trace)
    # Spotlight stops pulling at the notice (5 s, 10 GPU-s done), commits, loses nothing
    assert spot.gpu_s_lost == 0.0
    assert spot.wall_s == pytest.approx(95.0)
    assert spot.preemptions_with_notice == 1
    # restart works until the removal and loses back to its checkpoint, as if silent
    assert restart.gpu_s_lost == pytest.approx(7.5)
    assert restart.wall_s == pytest.approx(100.0)
    # spot billing runs to the removal in both cases
    assert spot.cost.gpu_hours["spot"] == pytest.approx(7.5 / 3600)


def test_notice_shorter_than_a_step_loses_at_most_one_step() -> None:
    spot = _run("spotlight", ONE_NODE + "7.25,notice,n0\n7.5,remove,n0\n")
    # lead 0.25 s < one 1 s step: the step in flight (0.25 s of it) is lost
    assert spot.gpu_s_lost == pytest.approx(0.25)
    assert spot.steps_lost <= 1.0
    assert spot.wall_s == pytest.approx(93.0)


def test_multi_node_group_restart_vs_reform() -> None:
    cfg = replace(SMALL, sp_degree=2, step_gpu_s=2.0, weight_load_s=4.0, sp_reform_s=0.5)
    trace = "t_s,event,node\n0,add,a\n0,add,b\n7.5,remove,a\n"
    restart, spot = _run("restart", trace, cfg), _run("spotlight", trace, cfg)
    # 200 GPU-s; a and b ready at 4; by 7.5: 7.5 + 2 x 3.5 = 14.5 done.
    # restart: both lose 3.5 s (checkpoint every 10 s) = 7 GPU-s; b reloads until 11.5:
    # 192.5 left, 4 s at rate 1 -> 188.5, then rate 2 -> 94.25 s -> 105.75
    assert restart.gpu_s_lost == pytest.approx(7.0)
    assert restart.wall_s == pytest.approx(105.75)
    # spotlight: step = 2 GPU-s / 2 GPUs = 1 s, lose 0.5 s each = 1 GPU-s; b re-forms in
    # 0.5 s: 186.5 left, 0.5 s at rate 1 -> 186, then rate 2 -> 93 s -> 101.0
    assert spot.gpu_s_lost == pytest.approx(1.0)
    assert spot.wall_s == pytest.approx(101.0)
    assert restart.restarts == spot.restarts == 1


def test_pool_scope_restart_restarts_every_spot_node() -> None:
    group = replace(SMALL, weight_load_s=4.0)
    pool = replace(group, restart_scope="pool")
    trace = "t_s,event,node\n0,add,a\n0,add,b\n7.5,remove,a\n"
    # a and b ready at 4; by 7.5: 4 + 3 x 3.5 = 14.5 done; each worked 3.5 s since ready
    # pool: both lose 3.5 GPU-s (checkpoint every 10 s): 92.5 left; b reloads until 11.5
    # (rate 1: 88.5 left), then rate 2 -> 44.25 s -> 55.75
    restart = _run("restart", trace, pool)
    assert restart.gpu_s_lost == pytest.approx(7.0)
    assert restart.wall_s == pytest.approx(55.75)
    assert restart.restarts == 1
    # group (one node per group): only a's 3.5 s; b goes on: 89 left at rate 2 -> 52.0
    assert _run("restart", trace, group).wall_s == pytest.approx(52.0)
    # spotlight commits every step: a loses 0.5 s, 86 left at rate 2 -> 50.5
    assert _run("spotlight", trace, pool).wall_s == pytest.approx(50.5)


def test_pool_scope_restart_acts_at_the_notice() -> None:
    pool = replace(SMALL, weight_load_s=4.0, restart_scope="pool")
    trace = "t_s,event,node\n0,add,a\n0,add,b\n5,notice,a\n7.5,remove,a\n"
    restart = _run("restart", trace, pool)
    # at 5: 4 + 3 x 1 = 7 done; a is killed, both lose their 1 s since ready (95 left);
    # b reloads until 9 (rate 1: 91 left), then rate 2 -> 45.5 s -> 54.5
    assert restart.gpu_s_lost == pytest.approx(2.0)
    assert restart.wall_s == pytest.approx(54.5)
    assert restart.restarts == 1
    assert restart.preemptions == restart.preemptions_with_notice == 1
    # the noticed node is billed to its removal all the same
    assert restart.cost.gpu_hours["spot"] == pytest.approx((7.5 + restart.wall_s) / 3600)


def test_loss_during_training_does_not_touch_rollouts() -> None:
    cfg = replace(SMALL, train_step_s=100.0)
    # rollouts end at 50 s (2 GPUs), training to 150; the silent loss at 80 is in training
    trace = ONE_NODE + "80,remove,n0\n"
    restart, spot = _run("restart", trace, cfg), _run("spotlight", trace, cfg)
    assert restart.gpu_s_lost == spot.gpu_s_lost == 0.0
    assert restart.wall_s == spot.wall_s == pytest.approx(150.0)
    assert spot.explore_gpu_s == pytest.approx(30.0)  # explored 50..80
    assert spot.explore_gpu_s_lost == pytest.approx(0.0)  # committed at the 80 s boundary


def test_project_reports_ratios_from_iterations_needed() -> None:
    trace = parse_trace(ONE_NODE)
    needed = IterationsNeeded(ondemand=4, restart=4, spotlight=2)
    res = project(trace, config=SMALL, prices=PRICES, iterations_needed=needed)
    d = json.loads(json.dumps(res.to_dict()))
    assert d["iters_ratio_vs_ondemand"]["spotlight"] == pytest.approx(2.0)
    # on-demand: 100 s / iteration -> 400 s, $400; spotlight: 50 s / it, 100 s,
    # $100 on-demand + 100 GPU-s spot at $0.5 = $150
    assert res.results["ondemand"].cost.total_dollars == pytest.approx(400.0)
    assert res.results["spotlight"].cost.total_dollars == pytest.approx(150.0)
    assert res.ratio_vs_ondemand("spotlight", "cost") == pytest.approx(400 / 150)
    assert "projection" in d["label"]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"ondemand_gpus": 0}, "ondemand_gpus"),
        ({"step_gpu_s": 0.0}, "step_gpu_s"),
        ({"sp_reform_s": -1.0}, "sp_reform_s"),
        ({"restart_scope": "job"}, "restart_scope"),
    ],
)
def test_config_validates(kwargs: dict[str, float], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        ProjectionConfig(**kwargs)  # type: ignore[arg-type]


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="iterations needed"):
        IterationsNeeded(ondemand=0, restart=1, spotlight=1)
    with pytest.raises(ValueError, match="valid"):
        _run("elastic", ONE_NODE)
    with pytest.raises(ValueError, match="max_sim_s"):
        _run("ondemand", ONE_NODE, replace(SMALL, max_sim_s=50.0), iters=2)
