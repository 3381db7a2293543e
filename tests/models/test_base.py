"""Base pretraining: it learns, it is deterministic, its recipe validates, the cache builds once."""

from __future__ import annotations

import argparse
import dataclasses
import io

import pytest
import torch

from spotlight.commands import pretrain as pretrain_cmd
from spotlight.models import base_build, base_eval
from spotlight.models.base import PretrainRecipe, lr_at, pretrain
from spotlight.models.base_build import ensure_base
from spotlight.models.bases import load_checkpoint
from spotlight.models.checkpoint import CheckpointCard, save_checkpoint
from spotlight.models.dit import build_policy, get_config
from spotlight.models.sampler import SamplerConfig

MICRO = dataclasses.replace(
    get_config("tiny"),
    num_layers=1,
    num_attention_heads=2,
    attention_head_dim=16,
    joint_attention_dim=32,
    axes_dims_rope=(4, 6, 6),
    text_encoder_layers=0,
)
MICRO_RECIPE = PretrainRecipe(
    steps=20, batch_size=16, pool_size=64, warmup_steps=2, lr=3e-3, ema_decay=0.9
)


def test_twenty_steps_lower_the_loss():
    result = pretrain(MICRO_RECIPE, dit_config=MICRO, progress=False, curve_every=5)
    curve = result.card.metrics["loss_curve"]
    assert [s for s, _ in curve] == [5, 10, 15, 20]
    assert curve[-1][1] < 0.8 * curve[0][1], curve
    assert result.card.steps == 20 and result.card.loss == curve[-1][1]
    assert result.card.metrics["weights"] in ("raw", "ema")


def test_same_seed_same_weights():
    recipe = dataclasses.replace(MICRO_RECIPE, steps=3)
    a, b = (pretrain(recipe, dit_config=MICRO, progress=False) for _ in range(2))
    c = pretrain(dataclasses.replace(recipe, seed=1), dit_config=MICRO, progress=False)
    sa, sb, sc = (r.policy.state_dict() for r in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa), "same seed must give the same weights"
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_max_minutes_stops_early():
    result = pretrain(MICRO_RECIPE, dit_config=MICRO, progress=False, max_minutes=1e-6)
    assert result.card.steps == 1 and result.card.metrics["stopped_early"]


def test_lr_schedule():
    r = PretrainRecipe(steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(0, r) == pytest.approx(1e-4)
    assert lr_at(9, r) == pytest.approx(1e-3)
    assert lr_at(99, r) == pytest.approx(1e-4, rel=0.01)
    assert all(lr_at(i, r) >= lr_at(i + 1, r) for i in range(10, 99))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"config": "huge"}, "unknown DiT config 'huge'"),
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"sigma_sampling": "beta"}, "sigma_sampling 'beta' unknown; valid: logit-normal, uniform"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"pool_size": 8, "batch_size": 16}, "pool_size 8 is smaller than batch_size 16"),
    ],
)
def test_recipe_validation(change, message):
    with pytest.raises(ValueError, match=message):
        PretrainRecipe(**change)


def test_cache_key_follows_the_recipe():
    assert PretrainRecipe().key() == PretrainRecipe().key()
    assert PretrainRecipe(seed=1).key() != PretrainRecipe().key()
    assert PretrainRecipe(lr=5e-4).key() != PretrainRecipe().key()


def test_ensure_base_builds_once_and_says_so(tmp_path, monkeypatch):
    builds = []

    def fake_build(out, recipe, **kwargs):
        # The real build trains for minutes; the cache logic around it is what is tested here.
        builds.append(out)
        return save_checkpoint(build_policy(MICRO), out, CheckpointCard(config=MICRO, steps=1))

    monkeypatch.setattr(base_build, "build_base", fake_build)
    log = io.StringIO()
    first = ensure_base(tmp_path, recipe=PretrainRecipe(), log=log, progress=False)
    second = ensure_base(tmp_path, recipe=PretrainRecipe(), log=log, progress=False)
    assert first == second == base_build.cached_base_path(PretrainRecipe(), tmp_path)
    assert len(builds) == 1 and builds[0].name.endswith(".partial")
    assert "building the tiny base model once" in log.getvalue() and str(first) in log.getvalue()
    assert not builds[0].exists(), "the partial directory is renamed into place"
    load_checkpoint(first)


def test_ensure_base_uses_spotlight_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPOTLIGHT_CACHE", str(tmp_path))
    assert base_build.default_cache_dir() == tmp_path
    assert base_build.cached_base_path().parent == tmp_path


def test_validation_score_on_a_micro_policy():
    policy = build_policy(MICRO)
    prompts = base_eval.validation_prompts(2)
    result = base_eval.validation_score(
        policy, prompts=prompts, seeds=[0, 1, 2], sampler=SamplerConfig(num_steps=2)
    )
    assert result.rewards_PS.shape == (2, 3)
    assert 0.0 <= result.score <= 1.0
    assert base_eval.seed_spread(result) >= 0.0
    assert len(base_eval.validation_prompts()) == base_eval.VAL_PROMPTS


def test_testbed_diagnostics_report_the_gates():
    policy = build_policy(MICRO)
    diag = base_eval.testbed_diagnostics(
        policy,
        prompts=base_eval.validation_prompts(3),
        seeds=[0, 1],
        sampler=SamplerConfig(num_steps=2),
    )
    assert set(diag) >= {
        "score",
        "strict_acc",
        "check_pass1",
        "check_pass8",
        "shape_acc",
        "zero_std_frac",
    }
    for name in diag["check_pass1"]:
        assert 0.0 <= diag["check_pass1"][name] <= diag["check_pass8"][name] <= 1.0


def test_caption_noise_enters_the_pool_and_the_card():
    noisy = dataclasses.replace(MICRO_RECIPE, steps=2, caption_noise=0.5)
    result = pretrain(noisy, dit_config=MICRO, progress=False)
    assert 16 <= result.card.metrics["noisy_captions"] <= 48  # of 64 captions
    clean = pretrain(
        dataclasses.replace(noisy, caption_noise=0.0), dit_config=MICRO, progress=False
    )
    assert clean.card.metrics["noisy_captions"] == 0
    with pytest.raises(ValueError, match="caption_noise"):
        PretrainRecipe(caption_noise=1.0)


def test_cli_minutes_needs_out():
    parser = argparse.ArgumentParser()
    pretrain_cmd.add_arguments(parser)
    args = parser.parse_args(["--minutes", "1"])
    with pytest.raises(SystemExit, match="--out"):
        pretrain_cmd.run(args)
