"""The whole tree (:class:`SystemConfig`) and the component configs built from several
sections at once (:meth:`SystemConfig.trainer_loop`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from spotlight.config.build import _build
from spotlight.config.checks import ConfigError
from spotlight.config.pool import PricesSection, RewardsSection, RolloutSection, SpotSection
from spotlight.config.sections import PlannerSection, RunSection, TrainerSection
from spotlight.config.tracking import TrackingSection

if TYPE_CHECKING:
    from spotlight.actors.trainer.loop import TrainerLoopConfig

__all__ = ["SystemConfig", "trainer_loop_config"]


@dataclass(frozen=True, kw_only=True)
class SystemConfig:
    """Everything `spotlight run` needs; see the module docstring."""

    run: RunSection = field(default_factory=RunSection)
    trainer: TrainerSection = field(default_factory=TrainerSection)
    planner: PlannerSection = field(default_factory=PlannerSection)
    spot: SpotSection = field(default_factory=SpotSection)
    prices: PricesSection = field(default_factory=PricesSection)
    rewards: RewardsSection = field(default_factory=RewardsSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)

    def __post_init__(self) -> None:
        try:
            self.trainer.algo()
        except ValueError as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"trainer: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SystemConfig:
        """Build from nested plain data; unknown keys and wrong types are ConfigErrors."""
        return _build(cls, data, "")

    def trainer_loop(self) -> TrainerLoopConfig:
        """The trainer loop's config: the algorithm and model of ``trainer``, the periods of
        ``run``, the planner's deadline, and whether this host also runs the spot pool."""
        from spotlight.actors.trainer.loop import TrainerLoopConfig

        return TrainerLoopConfig(
            algo=self.trainer.algo(),
            iterations=self.run.iterations,
            time_budget_s=self.run.time_budget_s,
            val_every=self.run.val_every,
            ckpt_every=self.run.ckpt_every,
            val_per_kind=self.trainer.val_per_kind,
            val_seeds=self.trainer.val_seeds,
            seed=self.run.seed,
            reward=self.trainer.reward,
            base=self.trainer.base,
            prompts=self.trainer.prompts,
            resolution=self.trainer.resolution,
            lora=self.trainer.lora(),
            explore=self.trainer.seeds == "explored",
            plan_timeout_s=self.planner.plan_timeout_s,
            val_images=self.tracking.images_per_validation(),
            # Not when this host also runs the spot pool's explorer processes (measured 6×
            # slower).
            dedicated_torch_thread=not (self.spot.enabled and self.spot.pool == "trace"),
        )


def trainer_loop_config(cfg: SystemConfig) -> TrainerLoopConfig:
    """``cfg.trainer_loop()`` (the name `spotlight run` has always had for it)."""
    return cfg.trainer_loop()
