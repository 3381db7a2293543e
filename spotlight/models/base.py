"""Pretraining of the tiny base model by flow matching on procedural scenes (the embedded default).

RL only teaches a policy that already draws something whose reward varies with the seed, so the
base must draw recognisable scenes with a *spread* of rewards. A first feasibility run (lr and
schedule unrecorded, 2,000 steps) reached flow-matching loss 0.084 and a base too weak for RL
to move in budget; this recipe trains the same 64-token width-128 model harder per step (it
reached loss 0.089 by step 500 of 2,000; ~12 minutes on an idle 2-core CPU at ~0.33 s/step):

- data: a fixed pool of rendered training-split scenes (rendering costs about as much as a
  training step, so each scene is reused ~10 times under fresh noise and σ instead of
  rendering 160k scenes); shuffled per epoch from the seed;
- σ ~ logit-normal(0, 1) (SD3): most steps where the loss is informative, mid noise;
- AdamW with linear warm-up and cosine decay to a small floor: a short run must end at a low
  learning rate to sample cleanly;
- an EMA of the weights; at the end the raw and EMA weights are compared on a fixed held-out
  flow-matching loss and the better one is saved (the card records both).

Flow matching (velocity convention of sampler.py): x_σ = (1 − σ)·x0 + σ·ε, target v = ε − x0,
loss = mean ‖v_θ(x_σ, σ, text) − v‖².

Everything is a function of the recipe's seed (data order, noise, σ, init), so a run on the
same machine and torch build is reproducible; ``ensure_base`` caches the result under a hash of
config + recipe.

Shape legend: B batch, N tokens, C token channels, H/W pixels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import Tensor

from spotlight.models import scenes
from spotlight.models.bases import load_checkpoint
from spotlight.models.checkpoint import CheckpointCard, read_card, save_checkpoint
from spotlight.models.dit import DiTConfig, DiTPolicy, build_policy, get_config, uint8_to_images
from spotlight.models.flow_grpo import ValidationResult
from spotlight.models.sampler import SamplerConfig

SIGMA_SAMPLING = ("logit-normal", "uniform")


@dataclass(frozen=True, kw_only=True)
class PretrainRecipe:
    """How the base is trained; every field enters the cache key."""

    config: str = "tiny"
    """Name of the DiT config (see dit.CONFIGS)."""
    steps: int = 2000
    """Optimizer steps."""
    batch_size: int = 64
    """Scenes per step."""
    lr: float = 1e-3
    """Peak AdamW learning rate."""
    warmup_steps: int = 100
    """Linear warm-up from 0 to ``lr``."""
    min_lr_ratio: float = 0.02
    """Cosine decay ends at ``lr · min_lr_ratio``."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay."""
    grad_clip: float = 1.0
    """Gradient-norm clip (protects the short, high-lr run from one bad batch)."""
    ema_decay: float = 0.995
    """EMA of the weights (half-life ≈ 140 steps); 0 disables it."""
    sigma_sampling: str = "logit-normal"
    """How training noise levels are drawn: ``logit-normal`` (σ = sigmoid(N(0,1))) or ``uniform``."""
    pool_size: int = 16384
    """Rendered training scenes, reused across epochs under fresh noise."""
    seed: int = 0
    """Seeds init, data pool and order, noise and σ."""

    def __post_init__(self) -> None:
        get_config(self.config)  # ValueError listing valid names
        for name in ("steps", "batch_size", "pool_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"PretrainRecipe.{name} must be an integer >= 1, got {value!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be finite and > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.sigma_sampling not in SIGMA_SAMPLING:
            raise ValueError(
                f"sigma_sampling {self.sigma_sampling!r} unknown; valid: {', '.join(SIGMA_SAMPLING)}"
            )
        if self.pool_size < self.batch_size:
            raise ValueError(
                f"pool_size {self.pool_size} is smaller than batch_size {self.batch_size}"
            )

    @property
    def dit_config(self) -> DiTConfig:
        return get_config(self.config)

    def key(self) -> str:
        """Hash of the config's shape and this recipe: the cache key of the trained base."""
        blob = json.dumps(
            {"config": self.dit_config.to_dict(), "recipe": dataclasses.asdict(self)},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True, kw_only=True)
class PretrainResult:
    policy: DiTPolicy
    card: CheckpointCard


def default_cache_dir() -> Path:
    """``$SPOTLIGHT_CACHE`` or ``~/.cache/spotlight``."""
    env = os.environ.get("SPOTLIGHT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "spotlight"


def lr_at(step: int, recipe: PretrainRecipe) -> float:
    """Linear warm-up then cosine decay to ``lr · min_lr_ratio`` at the last step."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    span = max(1, recipe.steps - recipe.warmup_steps)
    t = min(1.0, (step - recipe.warmup_steps) / span)
    floor = recipe.lr * recipe.min_lr_ratio
    return floor + (recipe.lr - floor) * 0.5 * (1 + math.cos(math.pi * t))


def sample_sigmas(batch: int, recipe: PretrainRecipe, gen: torch.Generator) -> Tensor:
    if recipe.sigma_sampling == "logit-normal":
        return torch.sigmoid(torch.randn(batch, generator=gen))
    return torch.rand(batch, generator=gen)


def flow_matching_loss(
    policy: DiTPolicy,
    x0_BNC: Tensor,
    prompts: Sequence[str],
    sigma_B: Tensor,
    noise_BNC: Tensor,
) -> Tensor:
    """Mean squared error of the predicted velocity against v = noise − x0."""
    s = sigma_B[:, None, None]
    x_BNC = (1 - s) * x0_BNC + s * noise_BNC
    v_BNC = policy(x_BNC, sigma_B, policy.encode_prompts(prompts))
    return (v_BNC - (noise_BNC - x0_BNC)).pow(2).mean()


def render_pool(
    n: int, prompts: Sequence[str], rng: np.random.Generator, *, image_size: int, chunk: int = 256
) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Rendered scenes in chunks (so a progress bar can follow a pool that takes a minute)."""
    done = 0
    while done < n:
        k = min(chunk, n - done)
        imgs, caps = scenes.random_batch(rng, k, prompts=prompts, size=image_size)
        yield imgs, caps
        done += k


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
    )


def pretrain(
    recipe: PretrainRecipe,
    *,
    max_minutes: float | None = None,
    progress: bool = True,
    console: Console | None = None,
    dit_config: DiTConfig | None = None,
    log_every: int = 250,
    curve_every: int = 50,
) -> PretrainResult:
    """Train a base policy by flow matching; returns it with a card (val_score not yet set).

    ``max_minutes`` stops early at a wall-clock limit (the card says so; the run is then not
    reproducible in its step count). ``dit_config`` overrides the named config's shape (tests
    use a micro config); the cache never does.
    """
    console = console or Console(stderr=True)
    cfg = dit_config or recipe.dit_config
    t_start = time.perf_counter()
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed + 1)
    train_prompts, held_out = scenes.prompt_split()

    policy = build_policy(cfg, seed=recipe.seed)
    policy.train()
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    ema = [p.detach().clone() for p in params] if recipe.ema_decay > 0 else None

    # A fixed held-out batch (fixed noise and σ) to choose between raw and EMA weights.
    val_rng = np.random.default_rng(recipe.seed + 10_000)
    val_imgs, val_prompts = scenes.random_batch(
        val_rng, min(128, recipe.pool_size), prompts=held_out, size=cfg.image_size
    )
    val_gen = torch.Generator().manual_seed(recipe.seed + 10_001)
    val_x0 = policy.pack(uint8_to_images(val_imgs))
    val_sigma = torch.linspace(0.02, 0.98, val_x0.shape[0])
    val_noise = torch.randn(val_x0.shape, generator=val_gen)

    curve: list[tuple[int, float]] = []
    steps_done = 0
    stopped_early = False
    with _progress(console, progress) as bar:
        task = bar.add_task("rendering scenes", total=recipe.pool_size, info="")
        pool_imgs: list[np.ndarray] = []
        pool_prompts: list[str] = []
        for imgs, caps in render_pool(
            recipe.pool_size, train_prompts, rng, image_size=cfg.image_size
        ):
            pool_imgs.append(imgs)
            pool_prompts.extend(caps)
            bar.advance(task, len(caps))
        pool_x0 = policy.pack(uint8_to_images(np.concatenate(pool_imgs)))
        del pool_imgs
        t_render = time.perf_counter() - t_start

        bar.update(task, visible=False)
        task = bar.add_task("pretraining base", total=recipe.steps, info="")
        order = rng.permutation(recipe.pool_size)
        cursor = 0
        window: list[float] = []
        t_train = time.perf_counter()
        for step in range(recipe.steps):
            if cursor + recipe.batch_size > recipe.pool_size:
                order, cursor = rng.permutation(recipe.pool_size), 0
            idx = order[cursor : cursor + recipe.batch_size]
            cursor += recipe.batch_size
            x0_BNC = pool_x0[torch.from_numpy(idx)]
            prompts = [pool_prompts[i] for i in idx]
            sigma_B = sample_sigmas(recipe.batch_size, recipe, gen)
            noise_BNC = torch.randn(x0_BNC.shape, generator=gen)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, recipe)
            loss = flow_matching_loss(policy, x0_BNC, prompts, sigma_B, noise_BNC)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
            opt.step()
            if ema is not None:
                decay = min(recipe.ema_decay, (1 + step) / (10 + step))
                with torch.no_grad():
                    torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
            window.append(float(loss.detach()))
            steps_done = step + 1
            if steps_done % curve_every == 0 or steps_done == recipe.steps:
                curve.append((steps_done, sum(window) / len(window)))
                window = []
            bar.update(
                task, advance=1, info=f"loss {curve[-1][1] if curve else float(loss.detach()):.4f}"
            )
            if log_every and steps_done % log_every == 0:
                rate = steps_done / (time.perf_counter() - t_train)
                bar.console.print(
                    f"step {steps_done}/{recipe.steps} loss {curve[-1][1]:.4f} "
                    f"lr {lr_at(step, recipe):.2e} {rate:.2f} steps/s"
                )
            if max_minutes is not None and time.perf_counter() - t_start > 60 * max_minutes:
                stopped_early = steps_done < recipe.steps
                if window:
                    curve.append((steps_done, sum(window) / len(window)))
                break
        train_s = time.perf_counter() - t_train

    policy.eval()
    val_raw = _fixed_loss(policy, val_x0, val_prompts, val_sigma, val_noise)
    chosen = "raw"
    val_ema = None
    if ema is not None:
        raw_weights = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, e in zip(params, ema, strict=True):
                p.copy_(e)
        val_ema = _fixed_loss(policy, val_x0, val_prompts, val_sigma, val_noise)
        if val_ema <= val_raw:
            chosen = "ema"
        else:
            with torch.no_grad():
                for p, r in zip(params, raw_weights, strict=True):
                    p.copy_(r)
    wall_s = time.perf_counter() - t_start
    card = CheckpointCard(
        config=cfg,
        steps=steps_done,
        loss=curve[-1][1] if curve else None,
        recipe={**dataclasses.asdict(recipe), "key": recipe.key()},
        metrics={
            "loss_curve": curve,
            "heldout_fm_loss_raw": val_raw,
            "heldout_fm_loss_ema": val_ema,
            "weights": chosen,
            "stopped_early": stopped_early,
            "max_minutes": max_minutes,
            "render_s": round(t_render, 1),
            "train_s": round(train_s, 1),
            "steps_per_s": round(steps_done / max(train_s, 1e-9), 3),
            "wall_s": round(wall_s, 1),
            "torch_threads": torch.get_num_threads(),
        },
    )
    return PretrainResult(policy=policy, card=card)


@torch.no_grad()
def _fixed_loss(
    policy: DiTPolicy, x0: Tensor, prompts: Sequence[str], sigma: Tensor, noise: Tensor
) -> float:
    return float(flow_matching_loss(policy, x0, prompts, sigma, noise))


VAL_PROMPTS = 64
"""Held-out prompts in the base validation score (evenly spaced over the sorted held-out split)."""
VAL_SEEDS: tuple[int, ...] = tuple(range(1_000_000, 1_000_008))
"""Fixed evaluation seeds, far from the small seeds RL rollouts use."""


def validation_prompts(n: int = VAL_PROMPTS) -> list[str]:
    """A fixed, kind-mixed subset of the held-out prompts (all of them if ``n`` ≥ their count)."""
    held_out = sorted(scenes.prompt_split()[1])
    if n >= len(held_out):
        return held_out
    idx = np.linspace(0, len(held_out) - 1, n).round().astype(int)
    return [held_out[i] for i in idx]


def validation_score(
    policy: DiTPolicy,
    *,
    prompts: Sequence[str] | None = None,
    seeds: Sequence[int] = VAL_SEEDS,
    sampler: SamplerConfig | None = None,
    reward: str = "geneval",
) -> ValidationResult:
    """Mean ``reward`` over held-out prompts × ``seeds`` with the ODE sampler (flow_grpo.validate)."""
    from spotlight.models.flow_grpo import validate
    from spotlight.models.rewards import build_reward

    return validate(
        policy,
        list(prompts) if prompts is not None else validation_prompts(),
        list(seeds),
        build_reward(reward),
        sampler or SamplerConfig(),
    )


def seed_spread(result: ValidationResult) -> float:
    """Mean over prompts of the std of rewards across seeds: the variance GRPO groups see."""
    return float(result.rewards_PS.std(axis=1).mean())


def score_checkpoint(path: str | os.PathLike[str], **kwargs: Any) -> ValidationResult:
    """Compute the validation score of a saved checkpoint and write it into its card."""
    policy, card = load_checkpoint(path)
    sampler = kwargs.get("sampler") or SamplerConfig()
    result = validation_score(policy, **kwargs)
    metrics = {
        **card.metrics,
        "val_score_seed_spread": seed_spread(result),
        "val_score_spread_over_seed_sets": result.spread,
        "val_protocol": {
            "prompts": len(result.per_prompt),
            "seeds": list(kwargs.get("seeds", VAL_SEEDS)),
            "sampler": dataclasses.asdict(sampler),
            "reward": kwargs.get("reward", "geneval"),
        },
        "val_per_prompt": {
            p: [round(float(r), 4) for r in row]
            for p, row in zip(result.per_prompt, result.rewards_PS, strict=True)
        },
    }
    save_checkpoint(
        policy, path, dataclasses.replace(card, val_score=result.score, metrics=metrics)
    )
    return result


def build_base(
    out: str | os.PathLike[str],
    recipe: PretrainRecipe | None = None,
    *,
    max_minutes: float | None = None,
    evaluate: bool = True,
    progress: bool = True,
    console: Console | None = None,
) -> Path:
    """Pretrain, save to ``out`` and (``evaluate``) score the base on held-out prompts."""
    recipe = recipe or PretrainRecipe()
    result = pretrain(recipe, max_minutes=max_minutes, progress=progress, console=console)
    path = save_checkpoint(result.policy, out, result.card)
    if evaluate:
        score_checkpoint(path)
    return path


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock so two processes asking for the same base build it once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cached_base_path(
    recipe: PretrainRecipe | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    recipe = recipe or PretrainRecipe()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"base-{recipe.config}-{recipe.key()}"


def ensure_base(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    recipe: PretrainRecipe | None = None,
    progress: bool = True,
    log: TextIO | None = None,
) -> Path:
    """The cached base checkpoint for ``recipe``, building it first if absent (says so).

    The build runs once per cache key; concurrent callers wait on a file lock and then reuse
    it. A build is written to a temporary directory and renamed, so an interrupted build never
    leaves a checkpoint that looks complete.
    """
    recipe = recipe or PretrainRecipe()
    path = cached_base_path(recipe, cache_dir)
    log = log or sys.stderr
    if (path / "card.json").is_file():
        return path
    with _file_lock(path.with_name(path.name + ".lock")):
        if (path / "card.json").is_file():
            return path
        print(
            f"spotlight: building the tiny base model once ({recipe.steps} steps, roughly 15 "
            f"minutes on a 2-core CPU); it will be cached at {path}",
            file=log,
            flush=True,
        )
        tmp = path.with_name(path.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        build_base(tmp, recipe, progress=progress)
        tmp.replace(path)
    read_card(path)
    return path
