"""The trainer loop of `spotlight run`: Flow-GRPO iterations with planned seeds, resumable.

Map (one loop per DP rank; rank 0 talks to the rest of the system, the others follow)::

    rank 0, iteration k (θ_k in hand):
      1. planner.plan("b{k+1}", prompts_{k+1})          ask (timeout)  explorers, holding θ_k,
                                                                       explore batch k+1 on spot
      2. plan_k = plans.jsonl[k]  (a resumed run re-does k with the plan it recorded)
              or planner.take_groups("b{k}")            answers at once (never waits on spot)
              or random_plan(run seed, k)               seeds: random / unplanned / planner down
         append plan_k to RUN_DIR/plans.jsonl (fsync) BEFORE it is used
      3. broadcast {plan_k | stop} to the DP ranks      torch.distributed (H1's broadcast_object)
      4. rollout + GRPO update on the global batch      in a worker thread (_torch_call): the
                                                        runtime keeps serving while torch works
         (with a RolloutPool: rollouts.sample(k) first: requests pulled by the trainer's own
          rollout worker and the spot nodes', each with θ_k exactly; then the update)
      5. publisher.publish(k+1, policy)                 one flat copy; streamed in background
      6. planner.record_iteration(seconds); metrics "trainer", "exploration"
         validation every val_every ("validation"), checkpoint every ckpt_every (atomic)
    ranks > 0: wait for step 3's broadcast, run step 4 on their shard, repeat; stop on "stop".

What waits on what: the planner asks are bounded by ``plan_timeout_s`` (past it the batch
uses random seeds, counted as fallbacks); metrics and weight publication never wait on
their consumers (ring buffer / background stream). Nothing in the loop waits on a spot node.

Determinism: prompts, random seeds, SDE noise and minibatch order are functions of (run
seed, iteration); explored seeds are recorded in plans.jsonl before use. A checkpoint holds
weights, optimizer state and the iteration, so a run killed and resumed from it computes
the same weights as an uninterrupted one whenever the plans are the same (tested).

Stop: ``stop`` (an event; Ctrl-C sets it) or the time budget ends the loop after the current
iteration; the last state is validated and checkpointed before ``run`` returns.

Files in RUN_DIR: plans.jsonl, trainer.jsonl (the loop's own iteration/validation log, the
curve's source), curve.png, checkpoint/ (policy, optimizer.pt, state.json).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

import numpy as np

from spotlight.actors.exploration.planner import SeedPlan, flatten, random_plan, seeds_for_iteration
from spotlight.actors.monitor.records import (
    ExplorationRecord,
    Record,
    RolloutsRecord,
    TrainerRecord,
    ValidationRecord,
    ValImagesRecord,
)
from spotlight.actors.rollout.pool import spot_share
from spotlight.actors.trainer.plan_log import (
    PlanLog,
    RecordLog,
    expand_plan,
    plan_from_json,
    plan_seed,
    plan_to_json,
)
from spotlight.models.data_parallel import (
    DPContext,
    broadcast_object,
    dp_iteration,
    init_data_parallel,
)
from spotlight.runtime.errors import SpotlightError

if TYPE_CHECKING:
    from spotlight.actors.monitor.metrics import MetricsPublisher
    from spotlight.actors.rollout.pool import RolloutPool
    from spotlight.actors.weights.publish import WeightPublisher
    from spotlight.models.flow_grpo import FlowGrpoConfig, IterationStats
    from spotlight.models.lora_settings import LoraSettings
    from spotlight.runtime import ActorRef

__all__ = ["TrainerLoop", "TrainerLoopConfig", "TrainerSummary", "init_context"]

log = logging.getLogger("spotlight.actors.trainer.loop")
_T = TypeVar("_T")

RewardFn = Callable[[np.ndarray, list[str]], np.ndarray]

TrainPrompts = Literal["train", "validation"]
TRAIN_PROMPTS: tuple[str, ...] = get_args(TrainPrompts)


@dataclass(frozen=True, kw_only=True)
class TrainerLoopConfig:
    """What the loop runs; `spotlight run` builds it from the system config."""

    algo: FlowGrpoConfig
    """One iteration's algorithm."""
    iterations: int
    """Iterations to reach (a resumed run continues up to it)."""
    time_budget_s: float | None = None
    """Stop after the iteration that crosses this many wall seconds of this process."""
    val_every: int = 4
    """Validate every this many iterations, at 0 (fresh runs) and at the end."""
    ckpt_every: int = 2
    """Checkpoint every this many iterations and at the end."""
    val_per_kind: int = 4
    val_seeds: int = 4
    seed: int = 0
    """Run seed (prompts, random seeds, noise, minibatch order)."""
    reward: str = "geneval"
    base: str | None = None
    """Base checkpoint directory; None = the cached tiny base."""
    resolution: int = 512
    """Pixel side of generated images with a Qwen-Image pipeline base (a multiple of 16);
    a tiny-format checkpoint has its own size."""
    prompts: str | None = None
    """A prompt file (one per line; a seeded tenth held out for validation); None = the
    procedural scene captions."""
    lora: LoraSettings | None = None
    """Train these LoRA adapters on the frozen base instead of every weight; published
    versions then carry the adapters only, and the KL reference is the base itself."""
    explore: bool = False
    """Ask the planner for explored seeds (False: random seeds, no planner calls)."""
    plan_timeout_s: float = 5.0
    """Deadline of each planner ask; past it the batch falls back to random seeds."""
    val_images: int = 0
    """At each validation, save the first N held-out prompts' images (first seed) as one
    strip, RUN_DIR/validation/iter_K.png, and publish a ``val_images`` record for the
    experiment trackers; 0 = none."""
    train_prompts: TrainPrompts = "train"
    """Where iteration prompts come from: the training split (every real run), or
    ``validation``, the held-out validation prompts themselves (a diagnostic control, never
    a result: the validation score then measures how well the estimator *fits* prompts it
    sees, not how it generalises; other seeds than the validation's are still used). It
    separates "the update cannot climb" from "what it learns does not transfer"."""
    dedicated_torch_thread: bool = False
    """Run the torch work on one thread of its own instead of ``asyncio.to_thread``'s pool.

    Measured on a 2-core CPU (tiny model): OpenMP keeps a thread team per calling thread, and
    one hot team is 1.42× faster when the trainer has the cores (446 vs 315 iterations in
    600 s), but ~6× SLOWER when CPU-bound explorer processes share them (12–20 s vs 2.4–4.7 s
    per iteration: the spinning workers fight them). So: on when the trainer owns its host,
    off for `spotlight run`'s local spot pool."""

    def __post_init__(self) -> None:
        for name in ("iterations", "val_every", "ckpt_every", "val_per_kind", "val_seeds"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainerLoopConfig.{name} must be an integer >= 1, got {value!r}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s must be > 0 or None, got {self.time_budget_s!r}")
        if not self.plan_timeout_s > 0:
            raise ValueError(f"plan_timeout_s must be > 0, got {self.plan_timeout_s!r}")
        if self.train_prompts not in TRAIN_PROMPTS:
            raise ValueError(
                f"train_prompts must be one of {', '.join(TRAIN_PROMPTS)}, "
                f"got {self.train_prompts!r}"
            )


@dataclass(frozen=True)
class TrainerSummary:
    """What a finished (or stopped) loop did."""

    start_iteration: int
    iterations: int
    """The iteration reached (θ_iterations is the final policy)."""
    stopped_early: bool
    wall_s: float
    train_s: float
    """Seconds spent inside iterations (rollout + reward + update)."""
    base_val_score: float | None
    final_val_score: float | None
    validations: list[dict[str, Any]]
    fallback_seeds: int
    explored_seeds: int
    plans_reused: int
    """Iterations that re-used a plan recorded by an earlier (killed) process."""


# ------------------------------------------------------------------------- DP helpers


def init_context() -> DPContext:
    """The DP context from the torchrun environment (world 1 without one)."""
    return init_data_parallel()


def _broadcast(obj: Any, ctx: DPContext) -> Any:
    return obj if ctx.world == 1 else broadcast_object(obj, ctx)


# ------------------------------------------------------------------------- the loop


class TrainerLoop:
    """The trainer's iterations; see the module map. Call :meth:`run` on every DP rank."""

    def __init__(
        self,
        config: TrainerLoopConfig,
        run_dir: str | Path,
        *,
        resume: bool = False,
        ctx: DPContext | None = None,
        planner: ActorRef | None = None,
        publisher: WeightPublisher | None = None,
        metrics: MetricsPublisher | None = None,
        reward_fn: RewardFn | None = None,
        progress: Callable[[str], None] | None = None,
        rollouts: RolloutPool | None = None,
    ) -> None:
        """``rollouts``: sample each iteration's batch through the pull-scheduled rollout
        workers (rank 0 of a single-rank trainer only) instead of in this thread."""
        self.config = config
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.ctx = (
            ctx if ctx is not None else DPContext(rank=0, world=1, group=None, backend="gloo")
        )
        self.planner = planner if self.ctx.rank == 0 else None
        self.publisher = publisher if self.ctx.rank == 0 else None
        self.metrics = metrics if self.ctx.rank == 0 else None
        self._reward_fn = reward_fn
        self._progress = progress
        if rollouts is not None and self.ctx.world > 1:
            raise ValueError(
                f"pooled rollouts need a single trainer rank, this run has {self.ctx.world}; "
                "set rollout.workers=trainer (each rank then samples its own shard)"
            )
        self.rollouts = rollouts
        self.iteration = 0
        self.weight_version = 0
        self.policy: Any = None
        self.base: Path | None = None
        """The base the run trains on (after setup): a checkpoint or a pipeline directory."""
        self.optimizer: Any = None
        self._planned: set[int] = set()
        self._n = {"fallback_seeds": 0, "explored_seeds": 0, "plans_reused": 0}
        self._torch_thread = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainer-torch")
            if config.dedicated_torch_thread
            else None
        )

    @property
    def is_leader(self) -> bool:
        return bool(self.ctx.rank == 0)

    # -- setup ---------------------------------------------------------------------------

    def _setup(self) -> None:
        """Load weights (base or checkpoint), optimizer, reward, prompts (in a thread)."""
        import torch

        from spotlight.models import scenes
        from spotlight.models.bases import is_pipeline, latent_side, load_base, load_checkpoint
        from spotlight.models.batches import file_prompt_set, scene_prompt_set
        from spotlight.models.lora import AdapterFreeReference, attach_lora

        cfg = self.config
        device = self.ctx.device  # the rank's GPU under NCCL, else the CPU
        self.run_dir.mkdir(parents=True, exist_ok=True)
        ckpt = self.run_dir / "checkpoint"
        if cfg.base is not None:
            base = Path(cfg.base)
        else:
            from spotlight.models.base_build import ensure_base

            base = ensure_base(progress=False)
        self.base = base
        on_pipeline = is_pipeline(base)
        image_size = latent_side(cfg.resolution) if on_pipeline else None
        if on_pipeline and cfg.lora is None:
            raise ValueError(
                f"the pipeline base {base} trains with LoRA only (full fine-tuning of the 20B "
                "transformer does not fit a GPU without FSDP, which is not built): set "
                "trainer.lora_rank, e.g. 32"
            )
        if self.resume:
            if not (ckpt / "state.json").is_file():
                raise ValueError(
                    f"--resume {self.run_dir}: no checkpoint/state.json to resume from"
                )
            self.policy, _ = load_checkpoint(ckpt, device=device)
            if self.policy.lora != cfg.lora:
                raise ValueError(
                    f"--resume {self.run_dir}: the checkpoint trains LoRA {self.policy.lora}, "
                    f"the config asks for {cfg.lora}; resume with the run's own settings"
                )
            state = json.loads((ckpt / "state.json").read_text())
            self.iteration = int(state["iteration"])
            self.weight_version = int(state.get("weight_version", self.iteration))
        else:
            self.policy = load_base(base, image_size=image_size, device=device)
            if self.policy.lora is not None:
                raise ValueError(
                    f"base {base} carries LoRA adapters {self.policy.lora}; give the plain base "
                    "it was trained on (a run's checkpoint resumes with --resume)"
                )
            if cfg.lora is not None:
                attach_lora(self.policy, cfg.lora)  # same seeded adapters on every DP rank
        self.policy.to(device)
        if on_pipeline:
            # 60 blocks of activations per sample at 512²+ would not fit beside the base:
            # recompute them in the backward pass (diffusers' non-reentrant checkpointing; the
            # gradients are the same, checked on the toy pipeline).
            self.policy.transformer.enable_gradient_checkpointing()
        self.ref_policy: Any = None
        if cfg.algo.grpo.kl_beta > 0 and cfg.lora is not None:
            self.ref_policy = AdapterFreeReference(self.policy)  # the base, without a copy
        elif cfg.algo.grpo.kl_beta > 0:
            self.ref_policy = load_base(base, device=device).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.policy.parameters() if p.requires_grad],
            lr=cfg.algo.lr,
            weight_decay=cfg.algo.weight_decay,
        )
        if self.resume:
            self.optimizer.load_state_dict(
                torch.load(ckpt / "optimizer.pt", weights_only=True, map_location=device)
            )
        if self._reward_fn is None:
            from spotlight.models.rewards import build_reward

            self._reward_fn = build_reward(cfg.reward)
        fit = cfg.train_prompts == "validation"
        if cfg.prompts is None:
            prompt_set = scene_prompt_set(cfg.val_per_kind, cfg.val_seeds, fit_validation=fit)
        else:
            prompt_set = file_prompt_set(
                cfg.prompts, cfg.val_per_kind * len(scenes.KINDS), cfg.val_seeds, fit_validation=fit
            )
            used = [p for ps in prompt_set.train_by_kind.values() for p in ps]
            self._check_vocabulary(cfg.prompts, used + prompt_set.val_prompts)
        self.train_by_kind = prompt_set.train_by_kind
        self.val_prompts, self.val_seeds = prompt_set.val_prompts, prompt_set.val_seeds

    def _check_vocabulary(self, path: str, prompts: list[str]) -> None:
        """ValueError before the first iteration when the tiny model cannot read one of the
        run's ``prompts`` from the file ``path`` (its text encoder knows the scene captions'
        words only)."""
        from spotlight.models.vocab import PromptError

        if self.policy.text_encoder is None:
            return  # a real text encoder reads any text
        try:
            self.policy.text_encoder.tokenize(prompts)
        except PromptError as e:
            raise ValueError(
                f"trainer.prompts={path}: {e}; the {self.policy.config.name!r} model's text "
                "encoder knows the scene captions' words only"
            ) from None

    def prompts_for(self, iteration: int) -> list[str]:
        from spotlight.models.batches import iteration_prompts

        return iteration_prompts(
            self.train_by_kind, self.config.seed, iteration, self.config.algo.prompts_per_iter
        )

    # -- rank 0 helpers ------------------------------------------------------------------

    async def _plan_next(self, k: int, started_at: float) -> None:
        """Ask the planner to explore batch k's prompts (explorers hold θ_{k-1})."""
        if self.planner is None or not self.config.explore or k >= self.config.iterations:
            return
        if k in self._planned or k in self.plans.plans:
            return
        unique = list(dict.fromkeys(self.prompts_for(k)))  # the bandit has one arm per prompt
        try:
            await self.planner.plan.ask(
                f"b{k}", unique, started_at, timeout=self.config.plan_timeout_s
            )
            self._planned.add(k)
        except (SpotlightError, TimeoutError, ValueError) as exc:
            log.warning("planner.plan(b%d) failed (%r); batch %d will use random seeds", k, exc, k)

    async def _plan_for(self, k: int) -> SeedPlan:
        """Iteration k's plan: recorded, else the planner's, else random; recorded first."""
        recorded = self.plans.get(k)
        if recorded is not None:
            self._n["plans_reused"] += 1
            return recorded
        prompts = self.prompts_for(k)
        g = self.config.algo.group_size
        seed = plan_seed(self.config.seed, k)
        if self.planner is not None and self.config.explore and k in self._planned:
            unique = list(dict.fromkeys(prompts))
            answer = await seeds_for_iteration(
                self.planner, f"b{k}", unique, g, timeout=self.config.plan_timeout_s, seed=seed
            )
            spare = random_plan(f"b{k}", prompts, g, seed=seed)
            if [gr.prompt for gr in answer.groups] != unique or any(
                len(gr.seeds) != g for gr in answer.groups
            ):
                log.warning("planner answered batch b%d with a different shape; random seeds", k)
                plan = spare
            else:
                # A prompt nothing was explored for takes the run's own random group, so a
                # batch's seeds do not depend on whether this process planned it (a resumed
                # run did not plan its first batch; without explorers it stays bit-identical).
                first = {p: spare.groups[prompts.index(p)] for p in unique}
                groups = [
                    first[gr.prompt] if gr.fallback_seeds == len(gr.seeds) else gr
                    for gr in answer.groups
                ]
                plan = expand_plan(dataclasses.replace(answer, groups=groups), prompts, spare)
        else:
            plan = random_plan(f"b{k}", prompts, g, seed=seed)
        self.plans.append(k, plan)
        return plan

    def _publish(self, record: Record) -> None:
        if self.metrics is not None:
            self.metrics.publish_record(record)

    async def _record_iteration(self, seconds: float, rollout_s: float) -> None:
        """Tell the planner the iteration's length and how long its pooled rollouts kept the
        spot GPUs from exploring (0 when the trainer samples alone)."""
        if self.planner is None or not self.config.explore:
            return
        try:
            await self.planner.record_iteration.ask(
                seconds, rollout_s, timeout=self.config.plan_timeout_s
            )
        except (SpotlightError, TimeoutError) as exc:
            log.warning("planner.record_iteration failed (%r)", exc)

    def _validate(self, iteration: int) -> tuple[dict[str, Any], ValImagesRecord | None]:
        from spotlight.models.flow_grpo import validate

        assert self._reward_fn is not None
        t0 = time.perf_counter()
        res = validate(
            self.policy,
            self.val_prompts,
            self.val_seeds,
            self._reward_fn,
            self.config.algo.sampler,
            micro_batch=64,
            keep_images=self.config.val_images,
        )
        rec = {
            "kind": "validation",
            "iteration": iteration,
            "val_score": res.score,
            "val_spread": res.spread,
            "val_s": time.perf_counter() - t0,
        }
        images = None
        if res.images_uint8 is not None and len(res.images_uint8):
            images = self._save_val_images(iteration, res.images_uint8, res.rewards_PS[:, 0])
        return rec, images

    def _save_val_images(
        self, iteration: int, images_NHWC: np.ndarray, rewards_P: np.ndarray
    ) -> ValImagesRecord:
        """One PNG strip of the images, side by side, and the record that describes it."""
        from PIL import Image

        rel = f"validation/iter_{iteration:06d}.png"
        path = self.run_dir / rel
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(np.concatenate(list(images_NHWC), axis=1)).save(path)
        n = len(images_NHWC)
        return ValImagesRecord(
            iteration=iteration,
            path=rel,
            prompts=list(self.val_prompts[:n]),
            rewards=[float(r) for r in rewards_P[:n]],
            seeds=[int(self.val_seeds[0])] * n,
        )

    async def _validation(self, iteration: int) -> dict[str, Any]:
        rec, images = await self._torch_call(self._validate, iteration)
        self.trainer_log.write(rec)
        self._publish(
            ValidationRecord(
                iteration=iteration,
                score=rec["val_score"],
                spread=rec["val_spread"],
                val_s=rec["val_s"],
            )
        )
        if images is not None:
            self._publish(images)
        return rec

    def _save(self, iteration: int) -> None:
        """RUN_DIR/checkpoint, atomically: write checkpoint.partial, then rename."""
        import torch

        from spotlight.models.bases import is_pipeline
        from spotlight.models.checkpoint import CheckpointCard, save_checkpoint
        from spotlight.models.lora import save_diffusers_lora

        assert self.base is not None, "setup loads the base before any checkpoint"
        tmp = self.run_dir / "checkpoint.partial"
        if tmp.exists():
            shutil.rmtree(tmp)
        card = CheckpointCard(
            config=self.policy.config,
            base=str(self.base) if is_pipeline(self.base) else None,  # then adapters only
            steps=iteration,
            recipe={
                "trainer_loop": {"seed": self.config.seed, "iterations": self.config.iterations}
            },
        )
        save_checkpoint(self.policy, tmp, card)
        if self.policy.lora is not None:  # for inference: QwenImagePipeline.load_lora_weights
            save_diffusers_lora(self.policy, tmp / "lora")
        torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
        state = {"iteration": iteration, "weight_version": self.weight_version}
        (tmp / "state.json").write_text(json.dumps(state) + "\n")
        final, old = self.run_dir / "checkpoint", self.run_dir / "checkpoint.old"
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            final.replace(old)
        tmp.replace(final)
        if old.exists():
            shutil.rmtree(old)

    def _publish_weights(self, version: int) -> None:
        """θ_version to every subscriber: all tensors, or the adapters only with LoRA."""
        from spotlight.models.lora import tunable_state

        if self.publisher is not None:
            self.publisher.publish(version, tunable_state(self.policy))

    def _curve(self) -> None:
        from spotlight.models.curves import plot_curve

        plot_curve(self.trainer_log.records, self.run_dir / "curve.png")

    # -- the loop ------------------------------------------------------------------------

    async def _torch_call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Torch work off the event loop (see ``TrainerLoopConfig.dedicated_torch_thread``)."""
        if self._torch_thread is None:
            return await asyncio.to_thread(fn, *args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._torch_thread, functools.partial(fn, *args, **kwargs)
        )

    async def run(self, stop: asyncio.Event | None = None) -> TrainerSummary:
        """Run (or resume) up to ``config.iterations``; every DP rank calls this."""
        try:
            return await self._run(stop)
        finally:
            if self._torch_thread is not None:
                self._torch_thread.shutdown(wait=False)

    async def _run(self, stop: asyncio.Event | None) -> TrainerSummary:
        cfg = self.config
        await self._torch_call(self._setup)
        start = self.iteration
        leader = self.is_leader
        if self.rollouts is not None:
            # The trainer's own rollout worker steps on the trainer's torch thread (when it
            # has one): all torch work of this process on one thread, one hot OpenMP team.
            await self.rollouts.attach(
                self.policy, lambda: self.weight_version, executor=self._torch_thread
            )
        if leader:
            self.plans = PlanLog(self.run_dir / "plans.jsonl")
            self.trainer_log = RecordLog(
                self.run_dir / "trainer.jsonl", keep_through=start if self.resume else None
            )
        else:
            self.plans = PlanLog.__new__(PlanLog)  # followers never read or write plans
            self.plans.plans = {}
        t_start = time.perf_counter()
        train_s = 0.0
        stopped_early = False
        last_validated = -1
        last_saved = start if self.resume else -1
        if leader:
            self._publish_weights(self.weight_version)
            if not self.resume:
                await self._validation(0)
                last_validated = 0
        k = start
        while k < cfg.iterations:
            t_iter = time.time()
            if leader:
                out_of_time = cfg.time_budget_s is not None and (
                    time.perf_counter() - t_start >= cfg.time_budget_s
                )
                halt = (stop is not None and stop.is_set()) or out_of_time
                if not halt:
                    await self._plan_next(k + 1, t_iter)
                    plan: SeedPlan | None = await self._plan_for(k)
                else:
                    plan = None
            else:
                plan = None
            message = await self._torch_call(
                _broadcast, None if plan is None else plan_to_json(plan), self.ctx
            )
            if message is None:
                stopped_early = True
                break
            plan = plan_from_json(message)
            prompts, seeds = flatten(plan)
            t0 = time.perf_counter()
            pooled = None
            if self.rollouts is not None:
                pooled = await self.rollouts.sample(
                    k, self.weight_version, prompts, seeds, cfg.algo.sampler.num_steps
                )
            stats = await self._torch_call(
                dp_iteration,
                self.policy,
                self.optimizer,
                prompts,
                seeds,
                self._reward_fn,
                cfg.algo,
                self.ctx,
                shuffle_seed=cfg.seed * 7919 + k,
                ref_policy=self.ref_policy,
                trajectories=None if pooled is None else pooled.states,
            )
            if pooled is not None:
                stats = dataclasses.replace(stats, rollout_s=pooled.seconds)
                spot_samples, spot_workers = spot_share(pooled.by_worker)
                self._publish(
                    RolloutsRecord(
                        iteration=k + 1,
                        seconds=pooled.seconds,
                        samples=len(pooled.states),
                        spot_samples=spot_samples,
                        spot_workers=spot_workers,
                        by_worker=dict(pooled.by_worker),
                    )
                )
            train_s += time.perf_counter() - t0
            k += 1
            self.iteration = k
            self.weight_version = k
            if not leader:
                continue
            self._publish_weights(k)
            seconds = time.time() - t_iter
            await self._record_iteration(seconds, 0.0 if pooled is None else pooled.seconds)
            self._n["fallback_seeds"] += plan.fallback_seeds
            self._n["explored_seeds"] += plan.explored_seeds
            self._after_iteration(k, stats, plan, seconds, time.perf_counter() - t_start)
            last = k == cfg.iterations
            if k % cfg.val_every == 0 or last:
                await self._validation(k)
                last_validated = k
                # Redrawn with each validation, not each iteration: a matplotlib render costs
                # ~0.12 s, ~8% of a tiny-model iteration on the leader's critical path.
                await self._torch_call(self._curve)
            if k % cfg.ckpt_every == 0 or last:
                await self._torch_call(self._save, k)
                last_saved = k
            if self._progress is not None:
                self._progress(f"iteration {k}/{cfg.iterations} reward {stats.reward.mean:.3f}")
        if leader:
            if last_validated != self.iteration:
                await self._validation(self.iteration)
            if last_saved != self.iteration:
                await self._torch_call(self._save, self.iteration)
            await self._torch_call(self._curve)
        vals = [r for r in self.trainer_log.records if r["kind"] == "validation"] if leader else []
        return TrainerSummary(
            start_iteration=start,
            iterations=self.iteration,
            stopped_early=stopped_early,
            wall_s=time.perf_counter() - t_start,
            train_s=train_s,
            base_val_score=vals[0]["val_score"] if vals and vals[0]["iteration"] == 0 else None,
            final_val_score=vals[-1]["val_score"] if vals else None,
            validations=vals,
            fallback_seeds=self._n["fallback_seeds"],
            explored_seeds=self._n["explored_seeds"],
            plans_reused=self._n["plans_reused"],
        )

    def _after_iteration(
        self, k: int, stats: IterationStats, plan: SeedPlan, seconds: float, wall_s: float
    ) -> None:
        rec = {
            "kind": "iteration",
            "iteration": k,
            "reward_mean": stats.reward.mean,
            "reward_std": stats.reward.std,
            "zero_std_group_frac": stats.reward.zero_std_group_frac,
            "loss": stats.loss.loss,
            "grad_norm": stats.grad_norm,
            "first_ratio_dev": stats.first_ratio_dev,
            "iteration_s": seconds,
            "wall_s": wall_s,
        }
        self.trainer_log.write(rec)
        self._publish(
            ExplorationRecord(
                iteration=k,
                batch_id=plan.batch_id,
                mode="explored" if self.config.explore else "random",
                seeds=plan.explored_seeds,
                fallbacks=plan.fallback_seeds,
                fallback_prompts=plan.fallback_prompts,
                budget_s=plan.budget_gpu_s,
                budget_used_s=plan.used_gpu_s,
                seeds_total=self._n["explored_seeds"],
                fallbacks_total=self._n["fallback_seeds"],
            )
        )
        self._publish(  # non-finite floats arrive as None (metrics.plain)
            TrainerRecord(
                iteration=k,
                loss=stats.loss.loss,
                reward_mean=stats.reward.mean,
                reward_std=stats.reward.std,
                zero_std_fraction=stats.reward.zero_std_group_frac,
                grad_norm=stats.grad_norm,
                first_ratio_dev=stats.first_ratio_dev,
                approx_kl=stats.loss.approx_kl,
                rollout_s=stats.rollout_s,
                reward_s=stats.reward_s,
                train_s=stats.train_s,
                iteration_s=seconds,
                weight_version=k,
                world=self.ctx.world,
            )
        )
