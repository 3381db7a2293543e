"""Experiment tracking: the relay's mapping, TensorBoard events read back with TensorBoard's
own reader, W&B in offline mode (no network) read back from its run file, and the config."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from spotlight.actors.monitor.metrics import MetricRecord
from spotlight.actors.monitor.records import (
    CostRecord,
    Record,
    SchedulerRecord,
    TrainerRecord,
    ValidationRecord,
    ValImagesRecord,
)
from spotlight.actors.monitor.tracking import (
    Images,
    StepClock,
    Tracker,
    TrackingConfig,
    check_installed,
    relay,
    wandb_run_id,
)
from spotlight.config import ConfigError, SystemConfig, apply_overrides

pytestmark = pytest.mark.timeout(300)

PROMPTS = ["two red circles", "a blue square left of a green triangle"]


def rec(t: float, source: str, record: Record) -> MetricRecord:
    return MetricRecord(time=t, source=source, topic=record.TOPIC, fields=record.fields())


def trainer(k: int, reward: float) -> TrainerRecord:
    return TrainerRecord(iteration=k, loss=0.1, reward_mean=reward, reward_std=0.2,
                         zero_std_fraction=0.0, iteration_s=1.5, weight_version=k, world=1)  # fmt: skip


def cost(usd: float, live: int, notice: int) -> CostRecord:
    return CostRecord(ondemand_gpu_hours=1.0, spot_gpu_hours=2.0, ondemand_usd=12.0,
                      spot_usd=6.6, total_usd=usd, usd_per_hour=22.2, live_nodes=live,
                      alive_spot_gpus=live, preemptions_notice=notice, preemptions_silent=1,
                      rejoined=0, work_lost_steps=3)  # fmt: skip


def strip(run_dir: Path, iteration: int) -> ValImagesRecord:
    """A validation strip of two 8×8 tiles (red, blue) as the trainer saves it."""
    from PIL import Image

    tiles = [np.zeros((8, 8, 3), np.uint8) for _ in PROMPTS]
    tiles[0][..., 0] = 255
    tiles[1][..., 2] = 255
    rel = f"validation/iter_{iteration:06d}.png"
    (run_dir / "validation").mkdir(exist_ok=True)
    Image.fromarray(np.concatenate(tiles, axis=1)).save(run_dir / rel)
    return ValImagesRecord(iteration=iteration, path=rel, prompts=PROMPTS, rewards=[0.75, None],
                           seeds=[7, 7])  # fmt: skip


def a_run(run_dir: Path) -> list[MetricRecord]:
    """Two iterations as `spotlight run` publishes them, with periodic cost/scheduler records."""
    sched = SchedulerRecord(queue_depth=3, active_leases=1, submitted=10, completed=6,
                            re_leases=2, expired=0, stale_results=0, steps_recomputed=1,
                            workers=2)  # fmt: skip
    return [
        rec(100.0, "trainer", ValidationRecord(iteration=0, score=0.4, spread=0.01, val_s=0.2)),
        rec(100.1, "trainer", strip(run_dir, 0)),
        rec(101.0, "coordinator", cost(1.0, 2, 0)),
        rec(101.5, "explore_scheduler", sched),
        rec(102.0, "trainer", trainer(1, 0.5)),
        rec(102.5, "coordinator", cost(2.0, 3, 1)),  # the first after iteration 1: logged
        rec(103.0, "coordinator", cost(2.5, 3, 1)),  # same iteration again: not logged
        rec(104.0, "trainer", trainer(2, 0.6)),
        rec(104.5, "coordinator", cost(3.0, 1, 2)),
        rec(105.0, "trainer", ValidationRecord(iteration=2, score=0.45, spread=0.02, val_s=0.2)),
        rec(105.1, "trainer", strip(run_dir, 2)),
        MetricRecord(time=106.0, source="x", topic="reward_pool", fields={"lost": 0}),
    ]


def test_relay_steps_records_by_iteration_and_logs_periodic_ones_once_per_iteration(
    tmp_path: Path,
) -> None:
    items = relay(a_run(tmp_path), StepClock(), tmp_path)
    scalars = [(step, v) for step, _t, v in items if isinstance(v, dict)]
    assert [(s, v["val/score"]) for s, v in scalars if "val/score" in v] == [(0, 0.4), (2, 0.45)]
    assert [(s, v["train/reward_mean"]) for s, v in scalars if "train/reward_mean" in v] == [
        (1, 0.5),
        (2, 0.6),
    ]
    spot = [
        (s, v["spot/total_usd"], v["spot/live_nodes"]) for s, v in scalars if "spot/total_usd" in v
    ]
    assert spot == [(0, 1.0, 2), (1, 2.0, 3), (2, 3.0, 1)]  # once per iteration, the first
    first_cost = next(v for _s, v in scalars if "spot/total_usd" in v)
    assert first_cost["spot/preemptions"] == 1 and first_cost["spot/usd_per_hour"] == 22.2
    assert first_cost["spot/steps_lost"] == 3
    assert [s for s, v in scalars if "sched/explore_scheduler/queue_depth" in v] == [0]
    images = [(step, v) for step, _t, v in items if isinstance(v, Images)]
    assert [s for s, _ in images] == [0, 2]
    batch = images[0][1]
    assert batch.captions == [
        f"{PROMPTS[0]} · reward 0.750 · seed 7",
        f"{PROMPTS[1]} · reward — · seed 7",
    ]
    assert [im.shape for im in batch.images] == [(128, 128, 3)] * 2  # 8 px scaled up to show
    assert batch.images[0][0, 0].tolist() == [255, 0, 0] and batch.images[1][0, 0].tolist() == [
        0,
        0,
        255,
    ]


class Broken:
    name = "broken"

    def scalars(self, values: dict[str, float], step: int, walltime: float) -> None:
        raise RuntimeError("disk full")

    def images(self, batch: Images, step: int, walltime: float) -> None:
        raise RuntimeError("disk full")

    def close(self) -> None:
        raise RuntimeError("already closed")


def test_a_failing_backend_is_counted_and_never_raises(tmp_path: Path) -> None:
    tracker = Tracker(
        TrackingConfig(run_dir=str(tmp_path), tensorboard_dir=str(tmp_path)), [Broken()]
    )
    tracker.write(a_run(tmp_path))
    tracker.close()
    stats = tracker.statistics()
    assert stats["errors"]["broken"] > 5 and "disk full" not in (stats["last_error"] or "")
    assert "already closed" in (stats["last_error"] or "")
    # an image strip that is gone is a relay error, counted too, not an exception
    tracker = Tracker(TrackingConfig(run_dir=str(tmp_path / "elsewhere")), [])
    tracker.write([rec(1.0, "trainer", ValImagesRecord(iteration=0, path="nope.png", prompts=["a"],
                                                       rewards=[0.1], seeds=[0]))])  # fmt: skip
    assert tracker.statistics()["errors"] == {"relay": 1}


def test_tensorboard_events_read_back_with_tensorboards_reader(tmp_path: Path) -> None:
    pytest.importorskip("tensorboardX")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from spotlight.actors.monitor.tracking_backends import open_backends

    logdir = tmp_path / "tensorboard"
    config = TrackingConfig(run_dir=str(tmp_path), tensorboard_dir=str(logdir))
    tracker = Tracker(config, open_backends(config))
    tracker.write(a_run(tmp_path))
    tracker.close()
    events = EventAccumulator(str(logdir), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    reward = [(e.step, round(e.value, 6)) for e in events.Scalars("train/reward_mean")]
    assert reward == [(1, 0.5), (2, 0.6)]
    assert [(e.step, e.value) for e in events.Scalars("spot/live_nodes")] == [
        (0, 2),
        (1, 3),
        (2, 1),
    ]
    assert [e.value for e in events.Scalars("spot/preemptions")] == [1, 2, 3]
    assert [e.wall_time for e in events.Scalars("val/score")] == pytest.approx([100.0, 105.0])
    assert {"val/images/00", "val/images/01"} <= set(tags["images"])
    image = events.Images("val/images/00")
    assert [i.step for i in image] == [0, 2] and (image[0].width, image[0].height) == (128, 128)
    caption = events.Tensors("val/images/00/text_summary")[0].tensor_proto.string_val[0].decode()
    assert caption == f"{PROMPTS[0]} · reward 0.750 · seed 7"


def test_wandb_offline_run_is_named_after_the_run_dir_and_holds_the_relayed_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real W&B run in offline mode: no network, no account (what CI can run)."""
    pytest.importorskip("wandb")
    from spotlight.actors.monitor.tracking_backends import open_backends
    from tests.actors.wandb_reader import read_offline_run

    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run_dir = tmp_path / "run-20261207-101010"
    run_dir.mkdir()
    config = TrackingConfig(run_dir=str(run_dir), wandb="offline", wandb_id=wandb_run_id(run_dir),
                            config={"trainer": {"lr": 2e-5}})  # fmt: skip
    tracker = Tracker(config, open_backends(config))
    tracker.write(a_run(run_dir))
    tracker.close()
    assert tracker.statistics()["errors"] == {}
    (run_file,) = (run_dir / "wandb").glob("offline-run-*-run-20261207-101010/run-*.wandb")
    run = read_offline_run(run_file)
    assert run["run_id"] == "run-20261207-101010" and run["project"] == "spotlight"
    rows = run["history"]
    assert [(r["_step"], r["train/reward_mean"]) for r in rows if "train/reward_mean" in r] == [
        (1, 0.5),
        (2, 0.6),
    ]
    spot = [r for r in rows if "spot/live_nodes" in r]
    assert [r["spot/live_nodes"] for r in spot] == [2, 3, 1] and spot[-1]["spot/preemptions"] == 3
    images = [r for r in rows if "val/images/captions" in r]
    assert images and images[0]["val/images/captions"][0] == f"{PROMPTS[0]} · reward 0.750 · seed 7"


def test_wandb_run_id_is_the_run_dir_name_and_a_resume_continues_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the W&B backend asks of wandb.init (a fake module: instant, no service)."""
    calls: list[dict[str, Any]] = []

    class FakeRun:
        def log(self, values: dict[str, Any], step: int) -> None:
            calls.append({"log": values, "step": step})

        def finish(self) -> None:
            calls.append({"finish": True})

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls.append(kw) or FakeRun()  # type: ignore[attr-defined]
    fake.Settings = lambda **kw: kw  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    from spotlight.actors.monitor.tracking_backends import WandbBackend

    cfg = apply_overrides(SystemConfig(), ["tracking.wandb=online", "tracking.wandb_project=p"])
    for _ in range(2):  # the first run, then `spotlight run --resume` of the same directory
        tracking = cfg.tracking.build(tmp_path / "runs" / "my run:1", cfg.to_dict())
        assert tracking is not None and tracking.tensorboard_dir is None
        WandbBackend(tracking).close()
    inits = [c for c in calls if "id" in c]
    assert [c["id"] for c in inits] == ["my-run-1"] * 2  # W&B refuses spaces and colons
    assert all(
        c["resume"] == "allow" and c["mode"] == "online" and c["project"] == "p" for c in inits
    )
    assert inits[0]["config"]["tracking"]["wandb"] == "online"


def test_tracking_config_errors_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = SystemConfig()
    assert not cfg.tracking.enabled and cfg.tracking.build(Path("r"), {}) is None
    assert cfg.trainer_loop().val_images == 0  # no images saved unless a tracker shows them
    on = apply_overrides(cfg, ["tracking.tensorboard=true"])
    assert on.trainer_loop().val_images == 8
    built = on.tracking.build(Path("runs/a"), {})
    assert built is not None and built.tensorboard_dir == "runs/a/tensorboard"
    for override, message in (
        ("tracking.wandb=cloud", r"tracking.wandb='cloud'; valid: off, offline, online"),
        ("tracking.val_images=-1", r"tracking.val_images must be an integer from 0 to 64"),
        ("tracking.tb=1", r"unknown config key 'tracking.tb'"),
    ):
        with pytest.raises(ConfigError, match=message):
            apply_overrides(cfg, [override])
    old = cfg.to_dict()
    del old["tracking"]  # config.json of a run made before tracking existed
    assert SystemConfig.from_dict(old).tracking == cfg.tracking
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n: None if n == "wandb" else real(n))
    with pytest.raises(ValueError, match=r"needs wandb, which is not installed.*\[tracking\]"):
        check_installed(tensorboard=False, wandb=True)
    with pytest.raises(ConfigError, match=r"tracking.wandb=off"):
        apply_overrides(cfg, ["tracking.wandb=offline"]).tracking.check_installed()
