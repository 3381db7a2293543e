"""Ulysses SP over gloo on CPU equals the single-process model, across group epochs.

Tolerance 1e-5 (float32): the sharded path runs the same per-head arithmetic
as diffusers' processor; only the order of some reductions differs (attention
over a head subset, gathered text heads), which moves results by ~1e-7.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from diffusers.models.transformers.transformer_qwenimage import QwenImageTransformer2DModel

from spotlight.models.ulysses import (
    enable_ulysses,
    gather_tokens,
    largest_valid_degree,
    shard_tokens,
    ulysses_forward,
    valid_degrees,
    validate_degree,
)

CONFIG = dict(
    patch_size=1,
    in_channels=48,
    out_channels=48,
    num_layers=4,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=64,
    axes_dims_rope=(8, 12, 12),
)
STEPS = 2
WORKER = Path(__file__).with_name("_ulysses_worker.py")
TOL = 1e-5


def make_case(batch: int = 2) -> dict[str, Any]:
    torch.manual_seed(0)
    model = QwenImageTransformer2DModel(**CONFIG)
    # diffusers zero-initialises nothing that matters here, but perturb all weights so no
    # branch is trivially zero (e.g. gates) and a wrong shard order cannot hide.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(batch, 10, dtype=torch.bool)
    mask[1, 6:] = False  # padded text in the second sample
    return {
        "config": CONFIG,
        "state_dict": model.state_dict(),
        "latent": torch.randn(batch, 64, 48, generator=g),
        "text": torch.randn(batch, 10, 64, generator=g),
        "mask": mask,
        "img_shapes": [(1, 8, 8)] * batch,
        "loss_weight": torch.randn(batch, 64, 48, generator=g),
    }


def build(case: dict[str, Any]) -> QwenImageTransformer2DModel:
    model = QwenImageTransformer2DModel(**case["config"])
    model.load_state_dict(case["state_dict"])
    return model.eval()


def reference(case: dict[str, Any], steps: int) -> dict[str, torch.Tensor]:
    model = build(case)
    x = case["latent"]
    with torch.no_grad():
        for i in range(steps):
            t = 1.0 - i / steps
            v = model(
                hidden_states=x,
                encoder_hidden_states=case["text"],
                encoder_hidden_states_mask=case["mask"],
                timestep=torch.full((x.shape[0],), t),
                img_shapes=case["img_shapes"],
                return_dict=False,
            )[0]
            x = x - v / steps
    out = model(
        hidden_states=case["latent"],
        encoder_hidden_states=case["text"],
        encoder_hidden_states_mask=case["mask"],
        timestep=torch.full((x.shape[0],), 0.7),
        img_shapes=case["img_shapes"],
        return_dict=False,
    )[0]
    (out * case["loss_weight"]).sum().backward()
    grads = torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
            for p in model.parameters()
        ]
    )
    return {"latent": x, "grads": grads}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    diff = float((a - b).abs().max())
    print(f"max |diff| = {diff:.2e}")
    return diff


# ----------------------------------------------------------------------------- multi-process


@pytest.fixture(scope="module")
def sp_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run 4 worker processes through epochs 4 -> 2 -> (3: refused) -> 4 once."""
    tmp = tmp_path_factory.mktemp("ulysses")
    case = make_case()
    torch.save(case, tmp / "case.pt")
    # The store outlives every group epoch; port 0 lets the OS pick a free port.
    # use_libuv=False: the libuv store server aborted at interpreter exit next to gloo.
    store = dist.TCPStore(
        "127.0.0.1", 0, None, True, timeout=timedelta(seconds=60), use_libuv=False
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = [tmp / f"rank{r}.log" for r in range(4)]
    procs = []
    deadline = time.monotonic() + 150
    try:
        for r in range(4):
            with logs[r].open("wb") as log:  # a file, not a pipe: no full-pipe stall
                cmd = [sys.executable, str(WORKER), str(r), str(store.port), str(tmp / "case.pt")]
                procs.append(
                    subprocess.Popen([*cmd, str(tmp), str(STEPS)], env=env, stdout=log, stderr=log)
                )
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    for r, p in enumerate(procs):
        assert p.returncode == 0, (
            f"worker {r} exited {p.returncode}:\n{logs[r].read_text()[-4000:]}"
        )
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(4)]
    del store
    return {"ranks": ranks, "ref": reference(case, STEPS)}


@pytest.mark.timeout(200)
@pytest.mark.parametrize("epoch", ["ep0", "ep2"])
def test_degree4_matches_single_process(sp_results: dict[str, Any], epoch: str) -> None:
    """ep0: first degree-4 epoch; ep2: degree 4 again after re-forming through degree 2."""
    ref = sp_results["ref"]["latent"]
    for res in sp_results["ranks"]:
        assert max_diff(res[f"{epoch}_latent"], ref) < TOL


@pytest.mark.timeout(200)
def test_degree2_epoch_matches_single_process(sp_results: dict[str, Any]) -> None:
    ranks = sp_results["ranks"]
    for res in ranks[:2]:
        assert max_diff(res["ep1_latent"], sp_results["ref"]["latent"]) < TOL
    for res in ranks[2:]:
        assert "ep1_latent" not in res  # idle during the degree-2 epoch


@pytest.mark.timeout(200)
def test_degree1_after_sp_is_the_plain_model(sp_results: dict[str, Any]) -> None:
    for res in sp_results["ranks"]:
        assert torch.equal(res["deg1_latent"], sp_results["ref"]["latent"])


@pytest.mark.timeout(200)
@pytest.mark.parametrize("epoch", ["ep0", "ep1"])
def test_sharded_grads_after_allreduce_match(sp_results: dict[str, Any], epoch: str) -> None:
    ref = sp_results["ref"]["grads"]
    scale = float(ref.abs().max())
    for res in sp_results["ranks"][: 4 if epoch == "ep0" else 2]:
        # Gradients sum P partial contributions; compare relative to the largest gradient.
        assert max_diff(res[f"{epoch}_grads"], ref) < TOL * max(scale, 1.0)


@pytest.mark.timeout(200)
def test_gather_tokens_backward_is_reduce_scatter(sp_results: dict[str, Any]) -> None:
    for res in sp_results["ranks"]:
        assert res["gather_adjoint_err"] < 1e-6


@pytest.mark.timeout(200)
def test_degree3_group_is_refused_with_valid_choices(sp_results: dict[str, Any]) -> None:
    for res in sp_results["ranks"][:3]:
        assert res["bad3_error"] == "SP degree 3 does not divide 4 heads; valid degrees: 1, 2, 4"


@pytest.mark.timeout(200)
def test_lost_member_makes_forward_raise_not_hang(sp_results: dict[str, Any]) -> None:
    for res in sp_results["ranks"][:3]:
        assert "dead_error" in res, "forward with a vanished member returned normally"
        assert res["dead_error"].startswith(("RuntimeError", "DistBackendError"))
        assert res["dead_s"] < 30  # group timeout is 10 s; a dropped socket fails sooner
    print(
        "lost member detected after", [round(r["dead_s"], 3) for r in sp_results["ranks"][:3]], "s"
    )


@pytest.mark.timeout(200)
def test_report_timings(sp_results: dict[str, Any]) -> None:
    """Not an assertion on speed (shared 2-core CI); prints what the workers measured."""
    r0 = sp_results["ranks"][0]
    for key in ("deg1_times", "ep1_times", "ep0_times", "ep2_times"):
        assert len(r0[key]) == STEPS
    print(
        f"forward s/step (rank 0): deg1 {min(r0['deg1_times']):.4f} "
        f"deg2 {min(r0['ep1_times']):.4f} deg4 {min(r0['ep2_times']):.4f}; "
        f"group create s: { {k: round(v, 4) for k, v in r0['create_s'].items()} }"
    )


_MISSING_MEMBER = """
import os, sys, time
from datetime import timedelta
import torch.distributed as dist
from spotlight.models.process_groups import new_group_from_store
store = dist.TCPStore("127.0.0.1", 0, None, True, timeout=timedelta(seconds=30),
                      wait_for_workers=False, use_libuv=False)
t0 = time.perf_counter()
try:
    new_group_from_store(store, "epoch7", 0, 2, timeout=timedelta(seconds=1),
                         gloo_hostname="127.0.0.1")
    print("CREATED")
except RuntimeError as e:
    print(f"RAISED {type(e).__name__} after {time.perf_counter() - t0:.2f} s")
sys.stdout.flush()
os._exit(0)
"""


@pytest.mark.timeout(60)
def test_group_creation_times_out_when_a_member_never_arrives() -> None:
    """Re-forming must never hang on a member that died before joining the new epoch."""
    proc = subprocess.run(
        [sys.executable, "-c", _MISSING_MEMBER], capture_output=True, text=True, timeout=50
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RAISED" in proc.stdout, proc.stdout
    waited = float(proc.stdout.split(" after ")[1].split()[0])
    assert 0.9 < waited < 20


# ----------------------------------------------------------------------------- in-process


def test_validate_degree_messages() -> None:
    validate_degree(4, 4, 64)
    with pytest.raises(
        ValueError, match=r"^SP degree 3 does not divide 4 heads; valid degrees: 1, 2, 4$"
    ):
        validate_degree(3, 4, 64)
    with pytest.raises(
        ValueError, match=r"SP degree 8 does not divide 4 heads; valid degrees: 1, 2, 4"
    ):
        validate_degree(8, 4)
    with pytest.raises(
        ValueError,
        match=r"SP degree 4 exceeds 2 image tokens \(more members than tokens\); valid degrees: 1, 2$",
    ):
        validate_degree(4, 8, 2)
    with pytest.raises(
        ValueError, match=r"SP degree 4 does not divide 6 image tokens; valid degrees: 1, 2$"
    ):
        validate_degree(4, 8, 6)
    with pytest.raises(ValueError, match=r"SP degree 0 must be at least 1"):
        validate_degree(0, 4)
    assert valid_degrees(24) == [1, 2, 3, 4, 6, 8, 12, 24]
    assert largest_valid_degree(3, 4, 64) == 2
    assert largest_valid_degree(7, 24, 4096) == 4  # gcd(24, 4096) = 8
    assert largest_valid_degree(7, 24) == 6
    with pytest.raises(ValueError, match="at least 1 member"):
        largest_valid_degree(0, 4)


def test_no_group_is_exactly_the_plain_model() -> None:
    case = make_case()
    plain, sp = build(case), build(case)
    handle = enable_ulysses(sp, None)
    kwargs = dict(
        hidden_states=case["latent"],
        encoder_hidden_states=case["text"],
        encoder_hidden_states_mask=case["mask"],
        timestep=torch.full((2,), 0.5),
        img_shapes=case["img_shapes"],
    )
    with torch.no_grad():
        want = plain(**kwargs, return_dict=False)[0]
        assert torch.equal(sp(**kwargs, return_dict=False)[0], want)
        assert torch.equal(ulysses_forward(sp, None, **kwargs), want)
        assert shard_tokens(case["latent"], None) is case["latent"]
        assert gather_tokens(case["latent"], None) is case["latent"]
    handle.disable()
    assert not handle.enabled
    with pytest.raises(RuntimeError, match="disabled"):
        handle.set_group(None)
    assert all(
        type(b.attn.processor).__name__ == "QwenDoubleStreamAttnProcessor2_0"
        for b in sp.transformer_blocks
    )
    enable_ulysses(sp, None)  # can be enabled again after disable
    with pytest.raises(RuntimeError, match="already enabled"):
        enable_ulysses(sp, None)
