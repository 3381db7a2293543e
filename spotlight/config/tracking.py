"""The ``tracking`` section: relay the run's metrics to TensorBoard and W&B.

``RUN_DIR/metrics.jsonl`` is always written; this only adds copies for the tools people
watch runs in (spotlight/actors/monitor/tracking.py says what is relayed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from spotlight.config.checks import ConfigError

if TYPE_CHECKING:
    from spotlight.actors.monitor.tracking import TrackingConfig

__all__ = ["TrackingSection"]

_WANDB_MODES = ("off", "offline", "online")


@dataclass(frozen=True, kw_only=True)
class TrackingSection:
    """Experiment tracking backends (optional packages: ``pip install -e '.[tracking]'``)."""

    tensorboard: bool = False
    """Write TensorBoard event files (through tensorboardX, no TensorFlow) to
    ``tensorboard_dir``; watch with ``tensorboard --logdir RUN_DIR/tensorboard``."""
    tensorboard_dir: str | None = None
    """Where the event files go; None = RUN_DIR/tensorboard."""
    wandb: Literal["off", "offline", "online"] = "off"
    """Weights & Biases: off, offline (no network or account; ``wandb sync`` later) or
    online. The W&B run id is the run directory's name, so ``--resume`` continues it."""
    wandb_project: str = "spotlight"
    """The W&B project the run is logged under."""
    wandb_entity: str | None = None
    """W&B team or user; None = the account's default."""
    val_images: int = 8
    """Validation images logged per validation (one seed of each of the first N held-out
    prompts, captioned with prompt, reward and seed); 0 = none. Only when a backend is on."""

    def __post_init__(self) -> None:
        if not isinstance(self.tensorboard, bool):
            raise ConfigError(
                f"tracking.tensorboard must be true or false, got {self.tensorboard!r}"
            )
        if self.wandb not in _WANDB_MODES:
            raise ConfigError(f"tracking.wandb={self.wandb!r}; valid: {', '.join(_WANDB_MODES)}")
        if not isinstance(self.val_images, int) or not 0 <= self.val_images <= 64:
            raise ConfigError(
                f"tracking.val_images must be an integer from 0 to 64, got {self.val_images!r}"
            )

    @property
    def enabled(self) -> bool:
        return self.tensorboard or self.wandb != "off"

    def images_per_validation(self) -> int:
        """Validation images the trainer saves: none unless a backend will show them."""
        return self.val_images if self.enabled else 0

    def check_installed(self) -> None:
        """ConfigError naming the package an enabled backend lacks (before the run starts)."""
        from spotlight.actors.monitor.tracking import check_installed

        try:
            check_installed(tensorboard=self.tensorboard, wandb=self.wandb != "off")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def build(self, run_dir: Path, config: dict[str, Any]) -> TrackingConfig | None:
        """The monitor's tracking config for ``run_dir`` (None when every backend is off)."""
        from spotlight.actors.monitor.tracking import TrackingConfig, wandb_run_id

        if not self.enabled:
            return None
        tb_dir = self.tensorboard_dir or str(run_dir / "tensorboard")
        return TrackingConfig(
            run_dir=str(run_dir),
            tensorboard_dir=tb_dir if self.tensorboard else None,
            wandb=self.wandb,
            wandb_project=self.wandb_project,
            wandb_entity=self.wandb_entity,
            wandb_id=wandb_run_id(run_dir),
            config=config,
        )
