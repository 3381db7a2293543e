"""Pretraining of the tiny base model by flow matching on procedural scenes (the embedded default).

The default config is ``tiny-latent`` (issue 18's learning testbed): the DiT denoises 8×8×4
latents of a frozen tiny autoencoder (autoencoder.py), and a documented fraction of its
training captions is wrong the way web alt-text is wrong (noisy_captions.py), so the base is
sometimes right and sometimes wrong on one prompt: mistakes RL can learn away. The built
base ships in the package (``spotlight/assets``, see shipped.py); this module rebuilds it.

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

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

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
from spotlight.models.autoencoder import (
    DOWNSAMPLE,
    AutoencoderRecipe,
    shared_codec,
)
from spotlight.models.checkpoint import CheckpointCard
from spotlight.models.dit import DiTConfig, DiTPolicy, build_policy, get_config, uint8_to_images
from spotlight.models.noisy_captions import noisy_captions

SIGMA_SAMPLING = ("logit-normal", "uniform")


@dataclass(frozen=True, kw_only=True)
class PretrainRecipe:
    """How the base is trained; every field enters the cache key."""

    config: str = "tiny-latent"
    """Name of the DiT config (see dit.CONFIGS)."""
    steps: int = 7000
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
    pool_size: int = 24576
    """Rendered training scenes, reused across epochs under fresh noise."""
    seed: int = 0
    """Seeds init, data pool and order, noise and σ."""
    caption_noise: float = 0.3
    """Fraction of training captions made wrong (noisy_captions.py): the base's learnable
    mistakes. 0 trains on clean captions."""
    autoencoder: AutoencoderRecipe = field(default_factory=AutoencoderRecipe)
    """How a latent config's autoencoder is trained first (ignored for pixel configs)."""

    def __post_init__(self) -> None:
        get_config(self.config)  # ValueError listing valid names
        if not 0.0 <= self.caption_noise < 1.0:
            raise ValueError(f"caption_noise must lie in [0, 1), got {self.caption_noise}")
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


def progress_bar(console: Console, enabled: bool) -> Progress:
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


def to_tokens(policy: DiTPolicy, images_uint8: np.ndarray) -> Tensor:
    """Rendered scenes as the policy's clean tokens x0: packed pixels, or packed latents of
    the policy's frozen autoencoder for a latent config."""
    images_BCHW = uint8_to_images(images_uint8)
    vae = policy.config.vae
    if vae is None:
        return policy.pack(images_BCHW)
    codec = shared_codec(vae)
    return policy.pack(torch.cat([codec.encode(c) for c in images_BCHW.split(512)]))


@dataclass
class _Pool:
    """The fixed training set: clean tokens and their (possibly noisy) captions."""

    x0_PNC: Tensor
    captions: list[str]
    noisy: int


def _build_pool(
    recipe: PretrainRecipe, policy: DiTPolicy, rng: np.random.Generator, bar: Progress
) -> _Pool:
    train_prompts, _ = scenes.prompt_split()
    task = bar.add_task("rendering scenes", total=recipe.pool_size, info="")
    tokens: list[Tensor] = []
    captions: list[str] = []
    for imgs, caps in render_pool(
        recipe.pool_size, train_prompts, rng, image_size=scenes_image_size(policy.config)
    ):
        tokens.append(to_tokens(policy, imgs))
        captions.extend(caps)
        bar.advance(task, len(caps))
    bar.update(task, visible=False)
    noisy = noisy_captions(captions, rng, recipe.caption_noise)
    changed = sum(a != b for a, b in zip(captions, noisy, strict=True))
    return _Pool(x0_PNC=torch.cat(tokens), captions=noisy, noisy=changed)


def scenes_image_size(config: DiTConfig) -> int:
    """Pixels per side of the scenes a config learns from (latent cells × the VAE's factor)."""
    return config.image_size * (DOWNSAMPLE if config.vae is not None else 1)


@dataclass
class _Heldout:
    """A fixed held-out batch (fixed noise and σ) to choose between raw and EMA weights."""

    x0: Tensor
    prompts: list[str]
    sigma: Tensor
    noise: Tensor

    def loss(self, policy: DiTPolicy) -> float:
        with torch.no_grad():
            return float(flow_matching_loss(policy, self.x0, self.prompts, self.sigma, self.noise))


def _heldout(recipe: PretrainRecipe, policy: DiTPolicy) -> _Heldout:
    _, held_out = scenes.prompt_split()
    rng = np.random.default_rng(recipe.seed + 10_000)
    imgs, prompts = scenes.random_batch(
        rng, min(128, recipe.pool_size), prompts=held_out, size=scenes_image_size(policy.config)
    )
    x0 = to_tokens(policy, imgs)
    gen = torch.Generator().manual_seed(recipe.seed + 10_001)
    return _Heldout(
        x0=x0,
        prompts=prompts,
        sigma=torch.linspace(0.02, 0.98, x0.shape[0]),
        noise=torch.randn(x0.shape, generator=gen),
    )


class _Trainer:
    """The optimizer, EMA and loss curve of one pretraining run."""

    def __init__(self, recipe: PretrainRecipe, policy: DiTPolicy, curve_every: int) -> None:
        self.recipe = recipe
        self.policy = policy
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=recipe.lr, weight_decay=recipe.weight_decay)
        self.ema = [p.detach().clone() for p in self.params] if recipe.ema_decay > 0 else None
        self.curve: list[tuple[int, float]] = []
        self.window: list[float] = []
        self.curve_every = curve_every

    def step(self, step: int, x0_BNC: Tensor, prompts: list[str], gen: torch.Generator) -> None:
        recipe = self.recipe
        sigma_B = sample_sigmas(x0_BNC.shape[0], recipe, gen)
        noise_BNC = torch.randn(x0_BNC.shape, generator=gen)
        for group in self.opt.param_groups:
            group["lr"] = lr_at(step, recipe)
        loss = flow_matching_loss(self.policy, x0_BNC, prompts, sigma_B, noise_BNC)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, recipe.grad_clip)
        self.opt.step()
        if self.ema is not None:
            decay = min(recipe.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1 - decay)
        self.window.append(float(loss.detach()))
        if (step + 1) % self.curve_every == 0 or step + 1 == recipe.steps:
            self.flush(step + 1)

    def flush(self, steps_done: int) -> None:
        if self.window:
            self.curve.append((steps_done, sum(self.window) / len(self.window)))
            self.window = []

    @property
    def last_loss(self) -> float:
        return self.curve[-1][1] if self.curve else float("nan")

    def choose_weights(self, heldout: _Heldout) -> tuple[str, float, float | None]:
        """Keep the raw or the EMA weights, whichever has the lower held-out loss."""
        self.policy.eval()
        val_raw = heldout.loss(self.policy)
        if self.ema is None:
            return "raw", val_raw, None
        raw = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, e in zip(self.params, self.ema, strict=True):
                p.copy_(e)
        val_ema = heldout.loss(self.policy)
        if val_ema <= val_raw:
            return "ema", val_raw, val_ema
        with torch.no_grad():
            for p, r in zip(self.params, raw, strict=True):
                p.copy_(r)
        return "raw", val_raw, val_ema


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
    use a micro config; ``build_base`` points a latent config at a freshly trained autoencoder).
    """
    console = console or Console(stderr=True)
    cfg = dit_config or recipe.dit_config
    t_start = time.perf_counter()
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed + 1)
    policy = build_policy(cfg, seed=recipe.seed)
    policy.train()
    heldout = _heldout(recipe, policy)
    trainer = _Trainer(recipe, policy, curve_every)
    stopped_early = False
    with progress_bar(console, progress) as bar:
        pool = _build_pool(recipe, policy, rng, bar)
        t_render = time.perf_counter() - t_start
        task = bar.add_task("pretraining base", total=recipe.steps, info="")
        batches = _batches(recipe, rng)
        t_train = time.perf_counter()
        steps_done = 0
        for step in range(recipe.steps):
            idx = next(batches)
            trainer.step(step, pool.x0_PNC[idx], [pool.captions[i] for i in idx], gen)
            steps_done = step + 1
            bar.update(task, advance=1, info=f"loss {trainer.last_loss:.4f}")
            if log_every and steps_done % log_every == 0:
                rate = steps_done / (time.perf_counter() - t_train)
                bar.console.print(
                    f"step {steps_done}/{recipe.steps} loss {trainer.last_loss:.4f} "
                    f"lr {lr_at(step, recipe):.2e} {rate:.2f} steps/s"
                )
            if max_minutes is not None and time.perf_counter() - t_start > 60 * max_minutes:
                stopped_early = steps_done < recipe.steps
                trainer.flush(steps_done)
                break
        train_s = time.perf_counter() - t_train
    chosen, val_raw, val_ema = trainer.choose_weights(heldout)
    card = CheckpointCard(
        config=cfg,
        steps=steps_done,
        loss=trainer.curve[-1][1] if trainer.curve else None,
        recipe={**dataclasses.asdict(recipe), "key": recipe.key()},
        metrics={
            "loss_curve": trainer.curve,
            "heldout_fm_loss_raw": val_raw,
            "heldout_fm_loss_ema": val_ema,
            "weights": chosen,
            "noisy_captions": pool.noisy,
            "stopped_early": stopped_early,
            "max_minutes": max_minutes,
            "render_s": round(t_render, 1),
            "train_s": round(train_s, 1),
            "steps_per_s": round(steps_done / max(train_s, 1e-9), 3),
            "wall_s": round(time.perf_counter() - t_start, 1),
            "torch_threads": torch.get_num_threads(),
        },
    )
    return PretrainResult(policy=policy, card=card)


def _batches(recipe: PretrainRecipe, rng: np.random.Generator) -> Iterator[Tensor]:
    """Pool indices, ``batch_size`` at a time, reshuffled every epoch."""
    while True:
        order = torch.from_numpy(rng.permutation(recipe.pool_size))
        for start in range(0, recipe.pool_size - recipe.batch_size + 1, recipe.batch_size):
            yield order[start : start + recipe.batch_size]
