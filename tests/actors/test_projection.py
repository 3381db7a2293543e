"""The projection simulator on a two-node trace computed by hand (the sums are in comments)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from spotlight.actors.spot.projection import (
    Assumptions,
    CostPreset,
    IterationsToTarget,
    Range,
    parse_shaped,
    project,
)

# $1 per on-demand GPU-second, $0.5 per spot GPU-second
META = "#@ gpus_per_node: 1\n#@ ondemand_usd_per_gpu_hour: 3600\n#@ spot_usd_per_gpu_hour: 1800\n"
# 6 samples x 2 steps x 1 GPU-s = 12 GPU-s of rollouts; 6 x 1 trained step x 1 GPU-s = 6 of update
TINY = CostPreset(
    name="hand",
    gpu="test",
    sample_step_s=1.0,
    train_sample_step_s=1.0,
    samples_per_iter=6,
    denoise_steps=2,
    train_steps=1,
    sp_degree=1,
    process_launch_s=2.0,
    group_init_s=1.0,
    base_load_s=1.0,
    sp_reform_s=0.5,
    sp_join_s=0.0,
    version_bytes_full=1_000_000_000,  # 1 s at 8 Gb/s
    version_bytes_lora=0,
)
# N = 1 on-demand GPU, M = 2 spot GPUs, 8 Gb/s = 1 GB/s, liveness 0.5 s, no synthetic notices
ASSUME = Assumptions(ondemand_gpus=1, spot_gpus=2, link_gbps=8.0, loss_detect_s=0.5, notice_s=0.0)
TWO_ITERS = IterationsToTarget(random=Range(2, 2, 2), selection_speedup=Range(1, 1, 1))


def _runs(trace: str, preset: CostPreset = TINY, assume: Assumptions = ASSUME, iters=TWO_ITERS):
    shaped = parse_shaped(META + "t_s,event,node\n" + trace, source="hand.csv")
    res = project(shaped, preset=preset, assume=assume, iters=iters, starts=[0.0])
    return res.runs[res.median_scenario()], res


SILENT = "0,add,a\n0,add,b\n5.5,remove,b\n"


def test_two_node_trace_every_strategy_by_hand() -> None:
    runs, _ = _runs(SILENT)
    # (a) 1 GPU: 12 s rollouts + 6 s update per iteration -> 36 s, $36
    # (b) 3 GPUs: 12/3 + 6/3 = 6 s per iteration -> 12 s, 3 x 12 = $36
    # (c) a, b ready at 4 (launch 2 + rendezvous 1 + load 1). 0-4: 4 GPU-s; 4-5.5: 3 GPUs, 4.5;
    #     b lost at 5.5 mid-sample: 1.5 s since its last sample (2 s) boundary is redone ->
    #     12 - 8.5 + 1.5 = 5 left on 2 GPUs: 8.0; update to 14.0. Iteration 2: a pulls the full
    #     version (1 s): 14-15 one GPU (1), then 11 on 2 GPUs: 20.5; update to 26.5.
    #     $: 26.5 on-demand + 0.5 x (26.5 a + 5.5 b) = $42.5
    # (d) a, b ready at 3 (launch 2 + load 1 + join 0). 0-3: 3; 3-5.5: 7.5; b lost 0.5 s after
    #     its last step commit -> 12 - 10.5 + 0.5 = 2 left on 2 GPUs: 6.5; update to 12.5.
    #     Iteration 2: LoRA version in 0 s, 12 on 2 GPUs: 18.5; update to 24.5.
    #     $: 24.5 + 0.5 x (24.5 + 5.5) = $39.5. (e) = (d): no selection speed-up.
    expect = {
        "ondemand": (36.0, 36.0, 0.0, 0),
        "ondemand_same_gpus": (12.0, 36.0, 0.0, 0),
        "restart": (26.5, 42.5, 1.5, 1),
        "spotlight_no_explore": (24.5, 39.5, 0.5, 1),
        "spotlight": (24.5, 39.5, 0.5, 1),
    }
    for s, (wall, usd, lost, preempted) in expect.items():
        r = runs[s]
        assert r.wall_s == pytest.approx(wall, abs=1e-9), s
        assert r.usd == pytest.approx(usd, abs=1e-9), s
        assert r.steps_lost == pytest.approx(lost, abs=1e-9), s
        assert r.preemptions == preempted, s
    assert [round(t, 9) for t, _, _ in runs["restart"].timeline] == [14.0, 26.5]
    assert runs["restart"].gpu_s_spot == pytest.approx(26.5 + 5.5)
    # e explores on a during both updates: 6.5-12.5 and 18.5-24.5
    assert runs["spotlight"].explore_gpu_s == pytest.approx(12.0)


def test_selection_speedup_only_shortens_e() -> None:
    iters = replace(TWO_ITERS, selection_speedup=Range(2, 2, 2))
    runs, res = _runs(SILENT, iters=iters)
    # e needs 2 / 2 = 1 iteration: 12.5 s; $12.5 + 0.5 x (12.5 + 5.5) = $21.5
    assert runs["spotlight"].iterations == 1
    assert runs["spotlight"].wall_s == pytest.approx(12.5)
    assert runs["spotlight"].usd == pytest.approx(21.5)
    assert runs["spotlight_no_explore"].wall_s == pytest.approx(24.5)
    assert res.summary("spotlight", "speedup_vs_ondemand")["median"] == pytest.approx(36 / 12.5)


def test_sp_group_over_two_nodes_by_hand() -> None:
    """SP 2 over 1-GPU nodes: losing b takes down a's group; a restarts (c) or re-forms (d)."""
    assume = replace(ASSUME, sp_degree=2)
    runs, _ = _runs("0,add,a\n0,add,b\n5.75,remove,b\n", assume=assume)
    c, d = runs["restart"], runs["spotlight_no_explore"]
    # (c) step 0.5 s, sample 1 s. 0-4: 4; 4-5.75: 5.25. Both lose 0.75 s -> 4.25 left;
    #     a restarts: ready at 5.75 + 0.5 + 4 = 10.25, but od alone finishes at 10.0; update
    #     to 16. Iteration 2: a ready at 17 (full version): 11 left on 2 -> 22.5; update 28.5.
    assert c.wall_s == pytest.approx(28.5) and c.steps_lost == pytest.approx(1.5)
    assert c.usd == pytest.approx(28.5 + 0.5 * (28.5 + 5.75)) and c.recoveries == 1
    # (d) 0-3: 3; 3-5.75: 8.25 -> 0.75 left; both lose 0.25 s since the last 0.5 s commit ->
    #     1.25 left; a re-forms by 5.75 + 0.5 + 0.5 = 6.75: 1 GPU to 6.75 (0.25 left), then 2
    #     GPUs: 6.875; update 12.875. Iteration 2: 12 on 2 -> 18.875; update 24.875.
    assert d.wall_s == pytest.approx(24.875) and d.steps_lost == pytest.approx(0.5)
    assert d.usd == pytest.approx(24.875 + 0.5 * (24.875 + 5.75)) and d.recoveries == 1


def test_notice_drains_spotlight_at_once_and_loses_nothing() -> None:
    runs, _ = _runs("0,add,a\n0,add,b\n4.5,notice,b\n5.5,remove,b\n")
    d = runs["spotlight_no_explore"]
    # b drains at 4.5 (lead 1 s >= one 1 s step: it commits): 0-3: 3; 3-4.5: 4.5; 4.5 left
    # on 2 GPUs: 6.75; update 12.75; iteration 2: 18.75; update 24.75. Billed to 5.5.
    assert d.steps_lost == 0.0 and d.preemptions_noticed == 1
    assert d.wall_s == pytest.approx(24.75)
    assert d.usd == pytest.approx(24.75 + 0.5 * (24.75 + 5.5))
    assert runs["restart"].preemptions_noticed == 1  # counted, but TorchElastic ignores it


@pytest.mark.parametrize("t_remove", [4.1, 4.3, 4.6, 5.2, 5.75, 6.4, 7.9])
def test_restart_strictly_worse_when_a_preemption_hits_a_busy_group(t_remove: float) -> None:
    """With the weight version the same for both (LoRA), only the preemption differs."""
    assume = replace(ASSUME, sp_degree=2, restart_version="lora")
    runs, _ = _runs(f"0,add,a\n0,add,b\n{t_remove},remove,b\n", assume=assume)
    c, d = runs["restart"], runs["spotlight_no_explore"]
    assert c.preemptions == d.preemptions == 1
    assert c.wall_s > d.wall_s + 1e-6
    assert c.usd > d.usd


def test_costs_scale_linearly_with_prices() -> None:
    base_runs, _ = _runs(SILENT)
    k = 3.7
    meta = (
        "#@ gpus_per_node: 1\n#@ ondemand_usd_per_gpu_hour: 13320\n#@ spot_usd_per_gpu_hour: 6660\n"
    )
    shaped = parse_shaped(meta + "t_s,event,node\n" + SILENT, source="k.csv")
    res = project(shaped, preset=TINY, assume=ASSUME, iters=TWO_ITERS, starts=[0.0])
    for s, r in res.runs[res.median_scenario()].items():
        assert r.wall_s == base_runs[s].wall_s
        assert r.usd == pytest.approx(k * base_runs[s].usd, rel=1e-12)
        assert r.usd_spot == pytest.approx(k * base_runs[s].usd_spot, rel=1e-12)


def test_spot_cap_takes_offered_nodes_in_order_and_bills_only_held() -> None:
    trace = "0,add,a\n0,add,b\n0,add,c\n5.5,remove,b\n"
    runs, _ = _runs(trace)
    r = runs["spotlight_no_explore"]
    # a and b held from 0; c offered but over the cap until b goes at 5.5, then taken
    assert r.preemptions == 1
    assert r.gpu_s_spot == pytest.approx(r.wall_s + 5.5 + (r.wall_s - 5.5))
