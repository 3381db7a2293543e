"""One frozen base per spot node: the explorer and the rollout worker share its storage.

Counted by storage (data pointer), so a second copy of any frozen tensor fails the tests; a
control builds the roles the old way (one ``spec.build()`` each) and sees the count double.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from spotlight.actors.cluster.coordinator import Coordinator
from spotlight.actors.rollout.worker import RolloutSettings
from spotlight.actors.scheduling.scheduler import SchedulerActor, SchedulingConfig
from spotlight.actors.spot.prices import Prices
from spotlight.actors.weights.node_base import NodeBase
from spotlight.actors.weights.policy_spec import PolicySpec
from spotlight.models.lora import attach_lora, load_tunable_state, tunable_state
from spotlight.models.lora_settings import LoraSettings
from spotlight.models.sampler import SamplerConfig
from spotlight.models.shared_base import policy_on_shared_base, storage_count
from spotlight.runtime import Runtime
from tests.micro import MICRO, nudge_adapters
from tests.runtime.helpers import FAST, REPO, arun

LORA = LoraSettings(rank=2, alpha=4)


def _velocity(policy: torch.nn.Module, config: object) -> torch.Tensor:
    cfg: object = config
    x = torch.randn(
        2,
        cfg.num_tokens,  # type: ignore[attr-defined]
        cfg.token_dim,  # type: ignore[attr-defined]
        generator=torch.Generator().manual_seed(1),
    )
    with torch.no_grad():
        return policy(x, torch.tensor([0.8, 0.3]), policy.encode_prompts(["a cat", "a sign"]))


@pytest.mark.timeout(240)
def test_the_roles_of_a_node_share_one_base_of_the_toy_pipeline(tmp_path: Path) -> None:
    from spotlight.models.bases import base_config, load_base
    from tests.qwen_fixture import LATENT_SIDE, save_tiny_qwen_pipeline

    base = save_tiny_qwen_pipeline(tmp_path / "qwen")
    config = base_config(base, image_size=LATENT_SIDE)
    spec = PolicySpec(config=config, lora=LORA, base=str(base))
    node = NodeBase(spec, device="cpu")
    explorer = node.policy_for("explorer")
    rollout = node.policy_for("rollout")

    one = storage_count(explorer)
    both = storage_count(explorer, rollout)
    assert one.frozen_bytes > 50 * one.trainable_bytes > 0  # a base, small adapters
    assert both.frozen_bytes == one.frozen_bytes  # the base once, however many roles
    assert both.trainable_bytes == 2 * one.trainable_bytes  # adapters per role
    frozen_e = {n: p for n, p in explorer.named_parameters() if not p.requires_grad}
    frozen_r = {n: p for n, p in rollout.named_parameters() if not p.requires_grad}
    assert frozen_e.keys() == frozen_r.keys()
    assert all(frozen_e[n].data_ptr() == frozen_r[n].data_ptr() for n in frozen_e)
    assert explorer._prompt_encoder is rollout._prompt_encoder  # the 16.6 GB text encoder too
    assert explorer._image_decoder is rollout._image_decoder
    stats = node.statistics()
    assert stats.roles == ["explorer", "rollout"] and stats.shared
    assert (stats.frozen_bytes, stats.trainable_bytes) == (
        both.frozen_bytes,
        2 * one.trainable_bytes,
    )

    # The control: roles built the way nodes did before (one load each) count two bases.
    twice = storage_count(spec.build("cpu"), spec.build("cpu"))
    assert twice.frozen_bytes == 2 * one.frozen_bytes

    # Each role holds its own version: θ_k in the rollout worker leaves the explorer's
    # θ_{k−1} alone, and both compute exactly what a policy of their own would.
    trainer_k = attach_lora(load_base(base, image_size=LATENT_SIDE), LORA)
    nudge_adapters(trainer_k, 0.1)
    trainer_k1 = attach_lora(load_base(base, image_size=LATENT_SIDE), LORA)
    nudge_adapters(trainer_k1, -0.07)
    load_tunable_state(rollout, tunable_state(trainer_k))
    load_tunable_state(explorer, tunable_state(trainer_k1))
    torch.testing.assert_close(
        _velocity(rollout, config), _velocity(trainer_k, config), atol=0, rtol=0
    )
    torch.testing.assert_close(
        _velocity(explorer, config), _velocity(trainer_k1, config), atol=0, rtol=0
    )
    assert not torch.equal(_velocity(explorer, config), _velocity(rollout, config))

    with pytest.raises(ValueError, match="already has its policy"):
        node.policy_for("rollout")


def test_full_fine_tuning_roles_keep_their_own_copy_and_say_why() -> None:
    node = NodeBase(PolicySpec(config=MICRO), device="cpu")
    a, b = node.policy_for("explorer"), node.policy_for("rollout")
    assert storage_count(a, b).bytes == 2 * storage_count(a).bytes
    assert not node.statistics().shared
    with pytest.raises(ValueError, match="only a LoRA policy has a frozen base"):
        policy_on_shared_base(a)


def _launch(coordinator: str, ready: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "spotlight.nodes.spot", "--coordinator", coordinator,
             "--node-id", "sL", "--ready-file", str(ready), "--heartbeat-s", "0.25",
             "--log-level", "INFO"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip


@pytest.mark.timeout(600)
def test_a_spot_node_process_holds_one_base_for_its_explorer_and_rollout_worker(
    micro_base: Path, tmp_path: Path
) -> None:
    """The real process: the coordinator offers LoRA on the micro base and rollouts; the node
    spawns both roles; its agent counts the storages of both roles' policies."""
    spec = PolicySpec(config=MICRO, lora=LORA, base=str(micro_base))
    single = storage_count(spec.build("cpu"))
    procs: list[subprocess.Popen[bytes]] = []

    async def body() -> None:
        async with Runtime(FAST) as rt:
            sched = await rt.spawn(SchedulerActor, name="explore_scheduler")
            rollouts = await rt.spawn(SchedulerActor, name="rollout_scheduler")
            sampler = SamplerConfig(num_steps=2, noise_level=0.7, sde_window=(0, 1))
            coord = await rt.spawn(
                Coordinator,
                name="coordinator",
                prices=Prices(),
                run_id="t",
                scheduler=sched,
                model=spec,
                sampler=sampler,
                rollouts={
                    "scheduler": rollouts,
                    "settings": RolloutSettings.like(sampler),
                    "timing": SchedulingConfig(),
                },
            )
            ready = tmp_path / "sL.ready"
            proc = _launch(rt.address, ready, tmp_path / "sL.log")
            procs.append(proc)
            give_up = time.monotonic() + 420  # imports alone took 190 s on a loaded 2-core box
            while not ready.exists():
                assert proc.poll() is None, (tmp_path / "sL.log").read_text()[-3000:]
                assert time.monotonic() < give_up, "spot node not ready in 420 s"
                await asyncio.sleep(0.1)  # polling a file another process writes
            assert (await coord.statistics.ask()).nodes["sL"].status == "alive"
            agent = rt.ref(ready.read_text().strip(), "node")
            stats = await agent.base_statistics.ask(timeout=20.0)
            assert stats is not None and stats.roles == ["explorer", "rollout"] and stats.shared
            assert stats.frozen_bytes == single.frozen_bytes, (stats, single)
            assert stats.trainable_bytes == 2 * single.trainable_bytes

    try:
        arun(body())
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
