"""The torch side of ``gpu_check.py``: each check builds what it needs and returns numbers.

Imported only after the CUDA check passed (or with ``--device cpu``, the toy smoke run the
tests use). Every check is independent: one failing does not stop the others. Shapes:
B batch, N image tokens, C channels per token, T text tokens, D text width.
"""

from __future__ import annotations

import argparse
import dataclasses
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from gpu_check import FULL_BLOCKS, run_check, scaled

from spotlight.models.dit import DiTConfig, DiTPolicy, TextEmbedding, build_transformer, get_config
from spotlight.models.lora import LoraSettings, attach_lora

GB = 1e9
LORA = LoraSettings(rank=32, alpha=64)


class Env:
    """Device, dtype and sizes shared by the checks."""

    def __init__(self, args: argparse.Namespace, device: torch.device | None = None) -> None:
        self.args = args
        self.device = device or torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        # bf16 on GPUs (the real thing); the CPU smoke run stays in float32, which every gloo
        # collective supports and which CPUs run fast
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        base = get_config("qwen-image")
        self.text_tokens = args.text_tokens or base.text_max_tokens
        self.base = dataclasses.replace(
            base,
            num_attention_heads=args.heads,
            text_max_tokens=self.text_tokens,
            dtype="bfloat16" if self.cuda else "float32",
        )

    def config(self, blocks: int, resolution: int) -> DiTConfig:
        """Qwen-Image at real width (unless --heads), ``blocks`` deep, at ``resolution`` px."""
        return dataclasses.replace(self.base, num_layers=blocks, image_size=resolution // 8)

    def policy(self, blocks: int, resolution: int, seed: int = 0) -> DiTPolicy:
        torch.manual_seed(seed)
        cfg = self.config(blocks, resolution)
        with self.device:  # initialise on the GPU: a 3072-wide block is 0.7 GB of CPU init
            transformer = build_transformer(cfg)
        return DiTPolicy(cfg, transformer.to(self.dtype)).eval()

    def inputs(
        self, cfg: DiTConfig, batch: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor, TextEmbedding]:
        g = torch.Generator().manual_seed(1)
        x_BNC = torch.randn(batch, cfg.num_tokens, cfg.token_dim, generator=g).to(self.device)
        sigma_B = torch.full((batch,), 0.9, device=self.device)
        text_BTD = torch.randn(1, self.text_tokens, cfg.joint_attention_dim, generator=g)
        mask_BT = torch.ones(1, self.text_tokens, dtype=torch.long)
        text = TextEmbedding(text_BTD.to(self.device, self.dtype), mask_BT.to(self.device))
        return x_BNC, sigma_B, text

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def timed(self, fn: Callable[[], Any], reps: int, warmup: int = 1) -> float:
        """Median seconds of ``fn`` (synchronised), after ``warmup`` untimed calls."""
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def reset_peak(self) -> None:
        """Start a peak-memory window; :meth:`transient_gb` is what it added on top."""
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._before = torch.cuda.memory_allocated(self.device)

    def transient_gb(self) -> float:
        """Peak allocation since :meth:`reset_peak` minus what was allocated then (weights,
        optimizer state): the activations and workspace of what ran (0 on the CPU)."""
        if not self.cuda:
            return 0.0
        return (torch.cuda.max_memory_allocated(self.device) - self._before) / GB

    def peak_gb(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / GB if self.cuda else None


def _bytes(params: Any) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def memory_projection(
    policy: DiTPolicy, blocks: Any, transients: list[tuple[int, float]], *, train: bool
) -> dict[str, Any]:
    """Peak GB of the 60-block model, from this reduced one: weights per block (counted),
    the activations' fit over the two depths (measured), and for training the float32
    adapters' gradient and AdamW moments (12 bytes per adapter parameter, counted)."""
    block_w = _bytes(blocks[0].parameters())
    rest_w = _bytes(policy.parameters()) - len(blocks) * block_w
    block_opt = 12 * sum(p.numel() for p in blocks[0].parameters() if p.requires_grad)
    acts = scaled(transients, "gb")
    per_block = (block_w + (block_opt if train else 0)) / GB
    return {
        "weights_gb_per_block": block_w / GB,
        "weights_gb_outside_blocks": rest_w / GB,
        "optimizer_gb_per_block": block_opt / GB if train else 0.0,
        "activations": acts,
        f"projected_{FULL_BLOCKS}_blocks_peak_gb": rest_w / GB
        + FULL_BLOCKS * per_block
        + acts[f"projected_{FULL_BLOCKS}_blocks_gb"],
    }


def _depths(env: Env) -> tuple[int, int]:
    return 1, env.args.blocks


def _dit_at(env: Env, res: int) -> dict[str, Any]:
    policy = env.policy(env.args.blocks, res)
    blocks = policy.transformer.transformer_blocks
    x, sigma, text = env.inputs(policy.config)
    secs, transients, peaks = [], [], []
    for depth in _depths(env):
        policy.transformer.transformer_blocks = blocks[:depth]
        env.reset_peak()
        with torch.no_grad():
            v = policy(x, sigma, text)
            s = env.timed(lambda: policy(x, sigma, text), env.args.reps)
        if not torch.isfinite(v).all():
            raise RuntimeError(f"non-finite velocity at {res} px, {depth} blocks")
        secs.append((depth, s))
        transients.append((depth, env.transient_gb()))
        peaks.append({"blocks": depth, "peak_gb": env.peak_gb()})
    policy.transformer.transformer_blocks = blocks
    return {
        "image_tokens": policy.config.num_tokens,
        "text_tokens": env.text_tokens,
        "forward_s": scaled(secs, "s"),
        "memory": {"measured": peaks, **memory_projection(policy, blocks, transients, train=False)},
        "velocity_dtype": str(v.dtype),
    }


def check_dit(env: Env) -> dict[str, Any]:
    """Forward seconds and peak memory per sample-step, at two depths, per resolution."""
    return {f"{res}px": _dit_at(env, res) for res in env.args.resolutions}


def check_sampler(env: Env) -> dict[str, Any]:
    """The SDE sampler over the bf16 model: float32, finite log-probs on the SDE steps."""
    from spotlight.models.sampler import SamplerConfig, sample

    res = env.args.resolutions[0]
    policy = env.policy(env.args.blocks, res)
    _, _, text = env.inputs(policy.config)
    config = SamplerConfig(num_steps=4, noise_level=1.2, sde_window=(0, 2))
    cfg = policy.config
    env.reset_peak()
    t0 = time.perf_counter()
    with torch.no_grad():
        state = sample(
            lambda x_BNC, s_B: policy(x_BNC, s_B, text),
            [0, 1],
            (cfg.num_tokens, cfg.token_dim),
            config,
        )
    env.sync()
    wall = time.perf_counter() - t0
    logp_SB = state.log_probs_SB(config.sde_steps())
    if logp_SB.dtype != torch.float32 or not torch.isfinite(logp_SB).all():
        raise RuntimeError(f"SDE log-probs must be finite float32, got {logp_SB.dtype}: {logp_SB}")
    return {
        "resolution": res,
        "steps": config.num_steps,
        "batch": 2,
        "s_per_step": wall / config.num_steps,
        "log_prob_dtype": str(logp_SB.dtype),
        "log_probs": logp_SB.tolist(),
        "latents_device": str(state.x_BNC.device),
        "peak_memory_gb": env.peak_gb(),
    }


def _train_step(
    policy: DiTPolicy,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    sigma: torch.Tensor,
    text: TextEmbedding,
) -> float:
    """One Flow-GRPO-shaped step: the recorded step's log-prob under the policy, times an
    advantage, backward through the adapters, AdamW."""
    from spotlight.models.sampler import gaussian_log_prob, sde_step

    v = policy(x, sigma, text)
    x_next = x.float() * 0.98  # a recorded next latent (any tensor of the shape will do)
    step = sde_step(v, x, sigma, sigma - 0.1, noise_level=1.2, sigma_max=0.95, x_next_BNC=x_next)
    loss = -(gaussian_log_prob(step.x_next_BNC, step.mean_BNC, step.std_B) * 1.0).mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def _lora_at(env: Env, res: int) -> dict[str, Any]:
    policy = env.policy(env.args.blocks, res)
    attach_lora(policy, LORA)
    policy.transformer.enable_gradient_checkpointing()  # type: ignore[operator]
    policy.train()
    trainable = [p for p in policy.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    blocks = policy.transformer.transformer_blocks
    x, sigma, text = env.inputs(policy.config)
    secs, transients, peaks = [], [], []
    step = lambda: _train_step(policy, opt, x, sigma, text)  # noqa: E731
    policy.transformer.transformer_blocks = blocks
    step()  # creates every block's AdamW state before any window is measured
    for depth in _depths(env):
        policy.transformer.transformer_blocks = blocks[:depth]
        env.reset_peak()
        secs.append((depth, env.timed(step, env.args.train_steps)))
        transients.append((depth, env.transient_gb()))
        peaks.append({"blocks": depth, "peak_gb": env.peak_gb()})
    policy.transformer.transformer_blocks = blocks
    moved = sum(int(not torch.equal(a, p.detach())) for a, p in zip(before, trainable, strict=True))
    if moved == 0:
        raise RuntimeError("no adapter tensor changed after the LoRA steps")
    return {
        "train_step_s": scaled(secs, "s"),
        "memory": {"measured": peaks, **memory_projection(policy, blocks, transients, train=True)},
        "adapter_params": sum(p.numel() for p in trainable),
        "adapter_tensors_moved": f"{moved}/{len(trainable)}",
        "gradient_checkpointing": True,
    }


def check_lora(env: Env) -> dict[str, Any]:
    """LoRA training steps with gradient checkpointing: seconds and peak memory per step."""
    return {f"{res}px": _lora_at(env, res) for res in env.args.resolutions}


def check_vae(env: Env) -> dict[str, Any]:
    """Decode latents with a random ``AutoencoderKLQwenImage`` at diffusers' default config."""
    from diffusers import AutoencoderKLQwenImage

    from spotlight.models.qwen_image import QwenVaeDecoder

    with env.device:
        vae = AutoencoderKLQwenImage()
    decoder = QwenVaeDecoder(vae.to(env.dtype))
    out: dict[str, Any] = {"params": sum(p.numel() for p in vae.parameters())}
    for res in env.args.resolutions:
        latents = torch.randn(1, 16, res // 8, res // 8, device=env.device)
        env.reset_peak()
        images = decoder(latents)
        if tuple(images.shape) != (1, 3, res, res):
            raise RuntimeError(
                f"decoded shape {tuple(images.shape)}, expected (1, 3, {res}, {res})"
            )
        out[f"{res}px"] = {
            "decode_s": env.timed(lambda lat=latents: decoder(lat), max(1, env.args.reps // 2)),
            "peak_memory_gb": env.peak_gb(),
        }
    return out


def check_weight_load(env: Env) -> dict[str, Any]:
    """safetensors from local disk to the device, and the 20B base's projected load time."""
    from safetensors.torch import load_file, save_file

    policy = env.policy(env.args.blocks, env.args.resolutions[0])
    state = {k: v.contiguous() for k, v in policy.transformer.state_dict().items()}
    nbytes = sum(v.numel() * v.element_size() for v in state.values())
    del policy
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        path = Path(tmp) / "weights.safetensors"
        save_file(state, str(path))
        del state
        secs = env.timed(lambda: load_file(str(path), device=str(env.device)), 3, warmup=1)
    base_bytes = 2 * 20.43e9  # bf16, the count bench_lora/bench_memory make on the meta device
    rate = nbytes / secs
    return {
        "bytes": nbytes,
        "load_s": secs,
        "gb_per_s": rate / GB,
        "projected_20b_base_load_s": base_bytes / rate,
        "note": "page cache warm (file just written); a cold disk or network volume is slower",
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_all(args: argparse.Namespace, results: dict[str, Any]) -> None:
    env = Env(args)
    results["device"] = (
        torch.cuda.get_device_name(env.device) if env.cuda else "cpu (toy smoke run)"
    )
    results["torch"] = torch.__version__
    results["model"] = {
        "config": f"qwen-image at real width ({args.heads} heads x 128), {args.blocks} of "
        f"{FULL_BLOCKS} blocks, bf16, text tokens {env.text_tokens}",
        "lora": LORA.to_dict(),
    }
    checks: dict[str, Callable[[], dict[str, Any]]] = {
        "dit": lambda: check_dit(env),
        "sampler": lambda: check_sampler(env),
        "lora": lambda: check_lora(env),
        "vae": lambda: check_vae(env),
        "weight_load": lambda: check_weight_load(env),
    }
    for name, fn in checks.items():
        if name not in args.skip:
            run_check(name, fn, results)
            if env.cuda:
                torch.cuda.empty_cache()
    world = args.world or (torch.cuda.device_count() if env.cuda else 1)
    if world >= 2 and not {"nccl", "ulysses"} <= args.skip:
        from gpu_check_dist import run_distributed

        run_distributed(args, results, port=_free_port())
    else:
        for name in ("nccl", "ulysses"):
            results["checks"].setdefault(
                name, {"ok": True, "skipped": f"{world} device(s); needs 2"}
            )
