"""The Flow-GRPO step on a real (micro) DiT: exact on-policy ratio, the update's direction,
and the local trainer resuming bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from spotlight.commands import train as train_cmd
from spotlight.models.bases import load_checkpoint
from spotlight.models.checkpoint import CheckpointCard, save_checkpoint
from spotlight.models.dit import build_policy
from spotlight.models.flow_grpo import (
    flow_grpo_iteration,
    generate,
    step_log_probs,
    validate,
)
from spotlight.models.grpo import GrpoConfig, group_advantages
from spotlight.models.nft import NftConfig
from spotlight.models.sampler import SamplerConfig
from tests.micro import MICRO, PROMPTS, micro_algo, micro_pairs, redness


def test_first_pass_ratio_is_exactly_one_with_the_real_dit() -> None:
    policy = build_policy(MICRO, seed=1)
    config = micro_algo(inner_epochs=2)
    opt = torch.optim.AdamW(policy.parameters(), lr=config.lr)
    prompts, seeds = micro_pairs(config)
    stats, batch = flow_grpo_iteration(policy, opt, prompts, seeds, redness, config)
    assert stats.first_ratio_dev == 0.0
    assert [s.x_BNC.shape[0] for s in batch.chunks] == [5, 5, 2]
    assert stats.optimizer_steps == 6  # 3 chunks × 2 epochs
    assert 0.0 <= stats.reward.zero_std_group_frac <= 1.0
    # The second epoch ran after updates, so the ratio moved away from 1.
    assert stats.loss.ratio_max > 1.0


def test_one_update_raises_the_log_prob_of_better_samples() -> None:
    torch.manual_seed(0)
    policy = build_policy(MICRO, seed=2)
    config = micro_algo(micro_batch=12, lr=1e-4, grpo=GrpoConfig(clip_range=0.2))
    opt = torch.optim.SGD(policy.parameters(), lr=0.5)  # plain gradient step: first-order check
    prompts, seeds = micro_pairs(config)
    _, batch = flow_grpo_iteration(policy, opt, prompts, seeds, redness, config)
    adv = group_advantages(batch.rewards_B, batch.prompts)
    state = batch.chunks[0]
    with torch.no_grad():
        delta = sum(
            step_log_probs(policy, state, batch.chunk_prompts[0], k, config.sampler)[0]
            - state.log_probs[k]
            for k in config.sampler.sde_steps()
        )
    # The surrogate's gradient step must increase Σ A·log p (to first order).
    assert float((adv * delta).sum()) > 0


def test_validation_uses_the_ode_and_is_deterministic() -> None:
    policy = build_policy(MICRO, seed=3)
    sampler = SamplerConfig(num_steps=3)
    a = validate(policy, PROMPTS, [0, 1], redness, sampler, micro_batch=4)
    b = validate(policy, PROMPTS, [0, 1], redness, sampler, micro_batch=4)
    assert a.score == b.score and a.rewards_PS.shape == (3, 2)
    assert a.spread == pytest.approx(float(a.rewards_PS.mean(axis=0).std()))
    states, _ = generate(policy, PROMPTS, [0, 1, 2], sampler, micro_batch=2, mode="ode")
    assert all(torch.isnan(lp).all() for s in states for lp in s.log_probs)


def _settings(base: Path, iterations: int, **algo_kw: object) -> train_cmd.RunSettings:
    algo = micro_algo(prompts_per_iter=2, group_size=2, micro_batch=4, inner_epochs=2, **algo_kw)
    return train_cmd.RunSettings(
        algo=algo,
        iterations=iterations,
        val_every=1,
        val_per_kind=1,
        val_seeds=2,
        ckpt_every=1,
        seed=5,
        base=str(base),
    )


@pytest.mark.parametrize(
    "algo_kw",
    [{}, {"objective": "nft", "nft": NftConfig(beta=0.5, timesteps_per_sample=3)}],
    ids=["flow_grpo", "nft"],
)
def test_local_trainer_resumes_identically(tmp_path: Path, algo_kw: dict[str, object]) -> None:
    base = save_checkpoint(
        build_policy(MICRO, seed=4), tmp_path / "base", CheckpointCard(config=MICRO)
    )
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_cmd.train_local(
        _settings(base, 2, **algo_kw), straight, progress=False, reward_fn=redness
    )
    train_cmd.train_local(_settings(base, 1, **algo_kw), split, progress=False, reward_fn=redness)
    # Resuming reads the algorithm back from run.json (objective and NFT knobs included).
    summary = train_cmd.train_local(
        _settings(base, 2, **algo_kw), split, resume=True, progress=False, reward_fn=redness
    )
    stored = train_cmd.RunSettings.from_json(json.loads((split / "run.json").read_text()))
    assert stored.algo == _settings(base, 2, **algo_kw).algo
    assert summary["iterations"] == 2
    a, _ = load_checkpoint(straight / "checkpoint")
    b, _ = load_checkpoint(split / "checkpoint")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name

    def comparable(path: Path) -> list[dict[str, object]]:
        recs = [json.loads(line) for line in (path / "trainer.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in recs]

    assert comparable(straight) == comparable(split)
    assert (split / "curve.png").stat().st_size > 0
    rec = comparable(straight)
    assert [r["kind"] for r in rec] == [
        "validation",
        "iteration",
        "validation",
        "iteration",
        "validation",
    ]
    assert all(r["first_ratio_dev"] == 0.0 for r in rec if r["kind"] == "iteration")


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="group_size"):
        micro_algo(group_size=1)
    with pytest.raises(ValueError, match="no SDE step"):
        micro_algo(sampler=SamplerConfig(noise_level=0.0))
    with pytest.raises(ValueError, match="no checkpoint"):
        train_cmd.train_local(
            _settings(tmp_path, 1), tmp_path / "nothing", resume=True, progress=False
        )
    policy = build_policy(MICRO)
    opt = torch.optim.AdamW(policy.parameters())
    with pytest.raises(ValueError, match="pairs"):
        flow_grpo_iteration(policy, opt, ["a red circle"], [0], redness, micro_algo())


def test_cli_requires_local_and_parses_the_window(capsys: pytest.CaptureFixture[str]) -> None:
    from spotlight.cli import main

    assert main(["train"]) == 2
    assert "--local" in capsys.readouterr().err
    assert main(["train", "--local", "--sde-window", "3", "--no-progress"]) == 2
    assert "start:stop" in capsys.readouterr().err
