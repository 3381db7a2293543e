"""The tracker backends: TensorBoard through ``tensorboardX`` (no TensorFlow) and W&B.

Both packages are optional (the ``tracking`` extra); each is imported only when its backend
is opened. See tracking.py for what is relayed and why only rank 0 logs.

W&B: the run id is the run directory's name and ``resume="allow"``, so ``spotlight run
--resume DIR`` continues the same W&B run (online; offline runs are merged by id when
synced). ``mode="offline"`` needs no network and no account: the run is written under
``<wandb_dir>/wandb/offline-run-*`` for ``wandb sync`` later. W&B drops a value logged at a
step lower than one it has seen, so the iterations a resumed run redoes after a crash
appear once in W&B (all of them in TensorBoard and metrics.jsonl).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spotlight.actors.monitor.tracking import Images, TrackingConfig

__all__ = ["TensorBoardBackend", "WandbBackend", "open_backends"]


class TensorBoardBackend:
    """Event files in ``logdir`` (one ``events.out.tfevents.*`` file per process start)."""

    name = "tensorboard"

    def __init__(self, logdir: str | Path) -> None:
        from tensorboardX import SummaryWriter

        self.logdir = Path(logdir)
        self._writer = SummaryWriter(logdir=str(self.logdir), flush_secs=5)

    def scalars(self, values: dict[str, float], step: int, walltime: float) -> None:
        for key, value in values.items():
            self._writer.add_scalar(key, value, global_step=step, walltime=walltime)

    def images(self, batch: Images, step: int, walltime: float) -> None:
        for i, (image, caption) in enumerate(zip(batch.images, batch.captions, strict=True)):
            tag = f"{batch.key}/{i:02d}"
            self._writer.add_image(tag, image, global_step=step, walltime=walltime,
                                   dataformats="HWC")  # fmt: skip
            self._writer.add_text(tag, caption, global_step=step, walltime=walltime)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class WandbBackend:
    """One W&B run per run directory (see the module docstring for ids and resume)."""

    name = "wandb"

    def __init__(self, config: TrackingConfig) -> None:
        import wandb

        self._wandb = wandb
        directory = Path(config.wandb_dir or config.run_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.run: Any = wandb.init(
            project=config.wandb_project,
            entity=config.wandb_entity,
            id=config.wandb_id,
            name=config.wandb_id,
            resume="allow",
            mode="offline" if config.wandb == "offline" else "online",
            dir=str(directory),
            config=config.config,
            settings=wandb.Settings(console="off", quiet=True),
        )

    def scalars(self, values: dict[str, float], step: int, walltime: float) -> None:
        self.run.log(values, step=step)

    def images(self, batch: Images, step: int, walltime: float) -> None:
        media = [
            self._wandb.Image(image, caption=caption)
            for image, caption in zip(batch.images, batch.captions, strict=True)
        ]
        self.run.log({batch.key: media}, step=step)

    def close(self) -> None:
        self.run.finish()


def open_backends(config: TrackingConfig) -> list[Any]:
    """The backends ``config`` enables, opened (W&B starts its service: seconds)."""
    backends: list[Any] = []
    if config.tensorboard_dir is not None:
        backends.append(TensorBoardBackend(config.tensorboard_dir))
    if config.wandb != "off":
        try:
            backends.append(WandbBackend(config))
        except BaseException:
            for backend in backends:
                backend.close()
            raise
    return backends
