"""`spotlight run`: the config tree (files, overrides, errors) and an end-to-end smoke run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spotlight.config import ConfigError, SystemConfig, apply_overrides, load_config, read_file
from tests.monitor_text import PANELS, is_empty, panel_bodies, render_metrics
from tests.procs import process_gone

REPO = Path(__file__).resolve().parent.parent


def test_shipped_default_config_loads_and_matches_the_built_in_defaults() -> None:
    cfg = load_config(REPO / "configs" / "default.yaml")
    assert cfg == SystemConfig()
    assert cfg.spot.trace_path().is_file()
    algo = cfg.trainer.algo()
    assert algo.batch_size == 128 and algo.objective == "nft"
    assert algo.batch_size == 2 * algo.chunks_per_update * algo.micro_batch  # two steps
    # the default pool plays the 1 h trace in about the run's time budget (7 minutes)
    assert cfg.run.time_budget_s is not None
    assert 0.8 <= (3600 / cfg.spot.time_scale) / cfg.run.time_budget_s <= 1.25


def test_yaml_and_toml_files_and_overrides_in_order(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "trainer:\n  lr: 1.0e-4\n  seeds: random\nrun:\n  iterations: 3\n"
    )
    (tmp_path / "c.toml").write_text(
        '[trainer]\nlr = 1e-4\nseeds = "random"\n[run]\niterations = 3\n'
    )
    a = load_config(tmp_path / "c.yaml")
    b = load_config(tmp_path / "c.toml")
    assert a == b and a.trainer.lr == 1e-4 and a.trainer.seeds == "random"
    c = load_config(
        tmp_path / "c.yaml",
        flags={"run.iterations": 5, "spot.enabled": False},
        overrides=["run.iterations=7", "trainer.lr=2e-5", "trainer.sde_window=all"],
    )
    assert c.run.iterations == 7 and not c.spot.enabled and c.trainer.lr == 2e-5
    assert c.trainer.window() is None
    nft = apply_overrides(c, ["trainer.objective=nft", "trainer.nft_beta=0.5"]).trainer.algo()
    assert nft.objective == "nft" and nft.nft.beta == 0.5
    # The trainer gets a dedicated torch thread unless local spot processes share its cores.
    from spotlight.config.system import trainer_loop_config

    assert not trainer_loop_config(SystemConfig()).dedicated_torch_thread
    for flags in (["spot.enabled=false"], ["spot.pool=external"]):
        assert trainer_loop_config(apply_overrides(SystemConfig(), flags)).dedicated_torch_thread
    d = apply_overrides(
        c, ["run.time_budget_s=none", "spot.enabled=yes", "prices.preset=gcp-a3-high-2026"]
    )
    assert d.run.time_budget_s is None and d.spot.enabled
    assert d.prices.build().spot_usd_per_gpu_hour == 2.25
    e = apply_overrides(d, ["prices.spot_usd_per_gpu_hour=1.5"])
    assert e.prices.build().spot_usd_per_gpu_hour == 1.5 and "overridden" in e.prices.build().name
    # frozen, and the dict form round-trips (what config.json stores for --resume)
    with pytest.raises(AttributeError):
        e.run.iterations = 1  # type: ignore[misc]
    assert SystemConfig.from_dict(json.loads(json.dumps(e.to_dict()))) == e


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.lrr=1"], r"unknown config key 'trainer.lrr'.*valid keys of 'trainer': seeds"),
        (["nope.x=1"], r"unknown config section 'nope'.*valid sections: run, trainer"),
        (["trainer.lr"], r"expected section.key=value"),
        (["lr=1"], r"one dot"),
        (["trainer.lr=fast"], r"trainer.lr='fast' is not a valid float"),
        (["trainer.seeds=some"], r"trainer.seeds='some'; valid: random, explored"),
        (["trainer.objective=ppo"], r"trainer.objective='ppo'; valid: flow_grpo, nft"),
        (["trainer.nft_beta=0"], r"trainer: NftConfig.beta must be > 0"),
        (["run.iterations=0"], r"run.iterations must be an integer >= 1"),
        (["trainer.sde_window=3"], r"start:stop"),
        (["trainer.group_size=1"], r"group_size"),
        (["prices.preset=cheap"], r"unknown price preset 'cheap'; valid presets"),
        (["spot.time_scale=-1"], r"spot.time_scale must be a finite number > 0"),
        (["spot.sp_degree=0"], r"spot.sp_degree must be an integer >= 1, got 0"),
        (["spot.sp_degree=two"], r"spot.sp_degree='two' is not a valid int"),
        (["spot.sp_degree=2"], r"spot.sp_degree=2 needs 2 GPUs per node.*valid degrees: 1$"),
        (
            ["spot.gpus_per_node=4", "spot.sp_degree=2", "spot.node_command={python} {node}"],
            r"spot.sp_degree=2 would be ignored: spot.node_command has no \{sp_degree\}",
        ),
        (["trainer.lora_rank=-1"], r"trainer.lora_rank must be an integer >= 0, got -1"),
        (["trainer.lora_alpha=1.5"], r"trainer.lora_alpha='1.5' is not a valid int"),
        (["trainer.reward=ocr"], r"trainer.reward=ocr .* give trainer.prompts=FILE"),
        (["trainer.prompts=/no/such.txt"], r"trainer.prompts: prompt file /no/such.txt does not"),
        (["rewards.workers=-1"], r"rewards.workers must be an integer >= 0, got -1"),
        (["rewards.workers=two"], r"rewards.workers='two' is not a valid int"),
        (["rewards.actors_per_worker=0"], r"rewards.actors_per_worker must be an integer >= 1"),
        (["rewards.chunk_images=0"], r"rewards.chunk_images must be an integer >= 1"),
        (["rewards.timeout_s=0"], r"rewards.timeout_s must be a finite number > 0"),
        (["rewards.start_timeout_s=inf"], r"rewards.start_timeout_s must be a finite number"),
        (["rewards.threads=2"], r"unknown config key 'rewards.threads'.*valid keys of 'rewards'"),
    ],
)
def test_bad_settings_name_the_key_and_the_valid_choices(
    overrides: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)


def test_an_ocr_run_needs_every_prompt_to_quote_its_text(tmp_path: Path) -> None:
    prompts = tmp_path / "signs.txt"
    prompts.write_text('a sign that says "OPEN"\na blank sign\n')
    with pytest.raises(ConfigError, match=r"signs.txt, prompt 2: OCR prompt 'a blank sign'"):
        load_config(overrides=["trainer.reward=ocr", f"trainer.prompts={prompts}"])
    prompts.write_text('a sign that says "OPEN"\na neon sign that reads "BAR"\n')
    cfg = load_config(overrides=["trainer.reward=ocr", f"trainer.prompts={prompts}"])
    assert cfg.trainer.prompts == str(prompts)


def test_sp_degree_must_divide_the_base_models_heads_and_tokens(
    micro_base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from spotlight.cli import main
    from spotlight.nodes.ondemand import node_command

    cfg = load_config(overrides=["spot.gpus_per_node=4", "spot.sp_degree=2"])
    assert "--gpus 4 --sp-degree 2" in node_command(cfg, "tcp://h:1")
    cfg.spot.check_sp_degree(num_heads=4, num_tokens=64)  # the tiny base: fine
    with pytest.raises(ConfigError, match=r"spot.sp_degree=2: .*valid degrees: 1, 3"):
        cfg.spot.check_sp_degree(num_heads=3, num_tokens=9)
    # the micro base has 2 heads: degree 4 is refused before anything starts (exit 2)
    bad = ["--set", f"trainer.base={micro_base}", "--set", "spot.gpus_per_node=4"]
    assert main(["run", *bad, "--set", "spot.sp_degree=4"]) == 2
    err = capsys.readouterr().err
    assert "spot.sp_degree=4" in err and "valid degrees: 1, 2" in err, err


def test_file_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("trainer:\n  learning_rate: 1\n")
    with pytest.raises(ConfigError, match=r"'trainer.learning_rate'.*valid keys: seeds"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "top.yaml").write_text("trainr:\n  lr: 1\n")
    with pytest.raises(ConfigError, match=r"'trainr' in the top level; valid keys: run, trainer"):
        load_config(tmp_path / "top.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        read_file(tmp_path / "list.yaml")
    (tmp_path / "x.ini").write_text("")
    with pytest.raises(ConfigError, match="unknown format"):
        read_file(tmp_path / "x.ini")
    with pytest.raises(ConfigError, match="no such file"):
        read_file(tmp_path / "missing.yaml")
    (tmp_path / "broken.toml").write_text("[trainer\n")
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        read_file(tmp_path / "broken.toml")
    (tmp_path / "typed.yaml").write_text("run:\n  iterations: many\n")
    with pytest.raises(ConfigError, match=r"run\.iterations='many' is not a valid int"):
        load_config(tmp_path / "typed.yaml")
    with pytest.raises(ConfigError, match=r"spot\.trace='nowhere\.csv': no such file"):
        load_config(overrides=["spot.trace=nowhere.csv"]).spot.trace_path()


def test_rewards_section_round_trips_and_old_run_dirs_get_the_default() -> None:
    cfg = apply_overrides(SystemConfig(), ["rewards.workers=0", "rewards.chunk_images=8"])
    assert (cfg.rewards.workers, cfg.rewards.chunk_images) == (0, 8)
    assert SystemConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    old = SystemConfig().to_dict()
    del old["rewards"]  # config.json of a run made before reward actors existed
    assert SystemConfig.from_dict(old).rewards == SystemConfig().rewards


def test_ondemand_gpus_default_to_the_trainers_world_size() -> None:
    from spotlight.nodes.ondemand import resolve_ondemand_gpus

    cfg = SystemConfig()
    assert cfg.spot.ondemand_gpus is None  # unresolved until the DP context is known
    assert resolve_ondemand_gpus(cfg, 1).spot.ondemand_gpus == 1  # a plain `spotlight run`
    assert resolve_ondemand_gpus(cfg, 2).spot.ondemand_gpus == 2  # torchrun, 2 DP ranks
    explicit = apply_overrides(cfg, ["spot.ondemand_gpus=8"])  # 1 process on an 8-GPU node
    assert resolve_ondemand_gpus(explicit, 1).spot.ondemand_gpus == 8
    assert apply_overrides(explicit, ["spot.ondemand_gpus=null"]).spot.ondemand_gpus is None
    with pytest.raises(ConfigError, match=r"spot.ondemand_gpus must be an integer >= 1"):
        apply_overrides(cfg, ["spot.ondemand_gpus=0"])
    with pytest.raises(ValueError, match="world_size must be an int >= 1"):
        resolve_ondemand_gpus(cfg, 0)
    # config.json keeps the unresolved value (a resume on another world size re-resolves)
    assert SystemConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))).spot.ondemand_gpus is None


def test_the_cost_table_bills_one_ondemand_gpu_per_dp_rank(tmp_path: Path) -> None:
    from spotlight.actors.trainer.loop import TrainerSummary
    from spotlight.commands.run_report import build_report
    from spotlight.nodes.ondemand import resolve_ondemand_gpus

    summary = TrainerSummary(
        start_iteration=0,
        iterations=2,
        stopped_early=False,
        wall_s=1800.0,
        train_s=1700.0,
        base_val_score=None,
        final_val_score=None,
        validations=[],
        fallback_seeds=0,
        explored_seeds=0,
        plans_reused=0,
    )
    cfg = load_config(flags={"spot.enabled": False})

    def report(world: int, config: SystemConfig = cfg) -> dict[str, Any]:
        return build_report(
            resolve_ondemand_gpus(config, world),
            tmp_path,
            summary,
            replay=None,
            trace=None,
            node_pids=[],
            spot_on=False,
            stats={},
            elapsed_s=1800.0,
            interrupted=False,
        )["cost"]

    one, two = report(1), report(2)
    assert one["ondemand_gpus"] == 1 and two["ondemand_gpus"] == 2
    assert one["this_run"]["ondemand_gpu_hours"] == pytest.approx(0.5)
    assert two["this_run"]["ondemand_gpu_hours"] == pytest.approx(1.0)
    assert two["this_run"]["ondemand_usd"] == pytest.approx(2 * one["this_run"]["ondemand_usd"])
    eight = report(2, apply_overrides(cfg, ["spot.ondemand_gpus=8"]))  # explicit wins
    assert eight["this_run"]["ondemand_gpu_hours"] == pytest.approx(4.0)
    with pytest.raises(ValueError, match="resolve_ondemand_gpus"):
        build_report(
            cfg, tmp_path, summary, replay=None, trace=None, node_pids=[], spot_on=False,
            stats={}, elapsed_s=1.0, interrupted=False,
        )  # fmt: skip


def test_cli_errors_exit_2_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from spotlight.cli import main

    assert main(["run", "--set", "trainer.lrr=1"]) == 2
    assert "valid keys" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "config.json" in capsys.readouterr().err
    assert main(["run", "--set", "spot.trace=nowhere.csv"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_help_explains_every_option() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "spotlight.cli", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    for flag in (
        "--config",
        "--set",
        "--run-dir",
        "--resume",
        "--iterations",
        "--no-spot",
        "--no-live",
    ):
        assert flag in out
    assert "spot.sp_degree" in out
    assert "report.json" in out and "spotlight monitor --attach" in out


def _spotlight_run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "spotlight.cli", "run", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )


def _reaped_report(
    proc: subprocess.CompletedProcess[str],
    run_dir: Path,
    pids_of: Callable[[dict[str, Any]], list[int]],
) -> dict[str, Any]:
    """report.json of a finished run, after SIGKILLing (by PID) any process it left behind
    among ``pids_of(report)``; fails if the run failed or left one."""
    report = json.loads((run_dir / "report.json").read_text()) if proc.returncode == 0 else {}
    leftovers = [p for p in pids_of(report) if not process_gone(p)]
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert leftovers == []
    return report


def _node_pids(report: dict[str, Any]) -> list[int]:
    return list(report.get("spot", {}).get("node_pids", []))


SMALL = [
    "--set", "trainer.prompts_per_iter=2",
    "--set", "trainer.group_size=2",
    "--set", "trainer.num_steps=3",
    "--set", "trainer.sde_window=0:2",
    "--set", "trainer.micro_batch=4",
    "--set", "trainer.val_per_kind=1",
    "--set", "trainer.val_seeds=2",
    "--set", "run.val_every=2",
    "--set", "run.ckpt_every=1",
]  # fmt: skip


@pytest.mark.timeout(120)
def test_spotlight_run_no_spot_end_to_end_and_resume(micro_base: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = _spotlight_run(
        ["--no-spot", "--iterations", "2", "--run-dir", str(run_dir),
         "--set", f"trainer.base={micro_base}", *SMALL],
        timeout=100,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert lines[0]["event"] == "start" and lines[0]["address"].startswith("tcp://127.0.0.1:")
    report = json.loads((run_dir / "report.json").read_text())
    assert lines[-1]["event"] == "report" and lines[-1]["iterations"] == 2
    assert report["iterations"] == 2 and report["ok"] and not report["spot"]["enabled"]
    assert report["exploration"]["seeds"] == "explored"
    # no explorers: every seed of the 2 iterations x 2 prompts x 2 seeds is a fallback
    assert report["exploration"]["fallback_seeds"] == 8
    cost = report["cost"]
    assert cost["this_run"]["spot_gpu_hours"] == 0 and cost["this_run"]["ondemand_gpu_hours"] > 0
    assert cost["saving_fraction"] == pytest.approx(0.0)
    assert cost["ondemand_gpus"] == 1  # the default: one per DP rank, world 1 here
    assert report["stats"]["coordinator"]["nodes"]["od0"]["gpus"] == 1
    assert report["stats"]["coordinator"]["rejoined"] == 0
    loop_stats = report["stats"]["event_loop"]  # how long the main loop could not run
    assert set(loop_stats) == {"loop_stalls", "loop_lag_max_ms", "peers_lost"}
    assert loop_stats["loop_lag_max_ms"] >= 0
    assert [v["iteration"] for v in report["validations"]] == [0, 2]
    # one trainer rank: its samples went through the rollout pool, all drawn by its own worker
    rollouts = report["rollouts"]
    assert rollouts["mode"] == "pool" and rollouts["samples"] == 8, rollouts
    assert rollouts["samples_by_trainer"] == 8 and rollouts["samples_by_spot"] == 0
    assert rollouts["stale_results"] == 0
    for name in ("curve.png", "metrics.jsonl", "plans.jsonl", "config.json"):
        assert (run_dir / name).stat().st_size > 0, name
    topics = {json.loads(x)["topic"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()}
    assert {"trainer", "validation", "exploration", "rollouts"} <= topics
    # resume, then Ctrl-C: continues from the checkpoint, stops after an iteration with a
    # checkpoint of its own, and every iteration it did has its plan recorded
    proc = subprocess.Popen(
        [sys.executable, "-m", "spotlight.cli", "run", "--json", "--resume", str(run_dir),
         "--iterations", "500", "--set", "run.ckpt_every=1000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        for line in proc.stdout:  # live JSON lines: wait until the trainer has iterated
            rec = json.loads(line)
            if rec.get("event") == "iteration":
                break
        else:
            pytest.fail(f"no trainer state before exit: {proc.stderr.read()[-2000:]}")
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=100)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-2000:]
    assert "stopping after this iteration" in err
    report = json.loads((run_dir / "report.json").read_text())
    assert report["start_iteration"] == 2 and 3 <= report["iterations"] < 500
    assert report["interrupted"] and report["stopped_early"]
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    assert state["iteration"] == report["iterations"]  # checkpointed on the way out
    plans = (run_dir / "plans.jsonl").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in plans] == list(range(report["iterations"]))


@pytest.mark.timeout(200)
def test_spotlight_run_trains_lora_adapters_publishes_only_them_and_resumes(
    micro_base: Path, tmp_path: Path
) -> None:
    import torch

    from spotlight.models.bases import load_checkpoint
    from spotlight.models.lora import tunable_state

    run_dir = tmp_path / "run"
    common = ["--no-spot", "--json", "--set", "trainer.lora_rank=2", *SMALL,
              "--set", "trainer.reward=tests.micro:redness_reward"]  # fmt: skip
    proc = _spotlight_run(
        [*common, "--iterations", "2", "--run-dir", str(run_dir),
         "--set", f"trainer.base={micro_base}"],
        timeout=100,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["ok"] and report["iterations"] == 2
    policy, card = load_checkpoint(run_dir / "checkpoint")
    assert card.lora is not None and (card.lora["rank"], card.lora["alpha"]) == (2, 4)
    assert (run_dir / "checkpoint" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    # Only the adapters trained: every base tensor is the base's, bit for bit.
    base, _ = load_checkpoint(micro_base)
    trained = policy.state_dict()
    for name, value in base.state_dict().items():
        adapted = name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(trained.get(name, trained.get(adapted)), value), name
    adapters = tunable_state(policy)
    assert any(float(v.abs().max()) > 0 for k, v in adapters.items() if "lora_B" in k)
    # A published version is the adapters, not the model.
    adapter_bytes = 4 * sum(v.numel() for v in adapters.values())
    full_bytes = sum(v.numel() * v.element_size() for v in base.state_dict().values())
    snapshot = report["stats"]["weights"]["snapshot_bytes"]
    assert adapter_bytes <= snapshot < full_bytes / 5, (snapshot, adapter_bytes, full_bytes)
    # --resume keeps training the same adapters on the same base.
    proc = _spotlight_run(["--json", "--resume", str(run_dir), "--iterations", "3"], timeout=100)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["start_iteration"] == 2 and report["iterations"] == 3
    resumed, card = load_checkpoint(run_dir / "checkpoint")
    assert resumed.lora == policy.lora
    assert not torch.equal(
        tunable_state(resumed)[next(iter(adapters))], next(iter(adapters.values()))
    )


@pytest.mark.timeout(240)
def test_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_one(
    micro_base: Path, tmp_path: Path
) -> None:
    """SIGKILL the whole `spotlight run` process mid-run; `--resume` must end with the weights
    an uninterrupted run of the same length ends with (plans are read back, noise is f(seed))."""
    import torch

    from spotlight.models.bases import load_checkpoint

    common = ["--no-spot", "--json", "--set", f"trainer.base={micro_base}", *SMALL]
    straight = tmp_path / "straight"
    proc = _spotlight_run([*common, "--iterations", "6", "--run-dir", str(straight)], timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]

    killed = tmp_path / "killed"
    child = subprocess.Popen(
        [sys.executable, "-m", "spotlight.cli", "run", *common, "--iterations", "6",
         "--run-dir", str(killed)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
        start_new_session=True,
    )  # fmt: skip
    try:
        state = killed / "checkpoint" / "state.json"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if state.exists() and json.loads(state.read_text())["iteration"] >= 3:
                break
            time.sleep(0.05)
        assert child.poll() is None, "the run ended before it could be killed"
        os.killpg(child.pid, signal.SIGKILL)  # no handler runs: a crash, not a stop
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    at_kill = json.loads(state.read_text())["iteration"]
    assert 3 <= at_kill < 6
    proc = _spotlight_run(["--json", "--resume", str(killed), "--iterations", "6"], timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((killed / "report.json").read_text())
    assert report["start_iteration"] == at_kill and report["iterations"] == 6
    a, _ = load_checkpoint(straight / "checkpoint")
    b, _ = load_checkpoint(killed / "checkpoint")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=0, msg=name)


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("lora_rank", [0, 2], ids=["full", "lora"])
def test_spotlight_run_with_the_spot_pool(micro_base: Path, tmp_path: Path, lora_rank: int) -> None:
    """The whole system: spot node processes from a trace, explored seeds, preemptions.

    With LoRA the nodes load the base from its path themselves and receive adapters only:
    their rollouts are still accepted as the trainer's (weights of another shape would be
    refused on arrival, "rejects weights" in the nodes' log).

    The base is the micro checkpoint, a config no name stands for: spot nodes build the
    coordinator's DiTConfig from its answer, so the published weights fit. A time budget,
    not an iteration count, ends it: micro iterations are so quick that a dozen of them end
    before the node processes have imported torch and diffusers on a fast machine; at
    time scale 10 the trace's nodes live 10-50 s, long enough to start and explore."""
    run_dir = tmp_path / "run"
    proc = _spotlight_run(
        ["--iterations", "2000", "--no-live", "--run-dir", str(run_dir),
         "--set", "run.time_budget_s=45",
         "--set", f"trainer.base={micro_base}", "--set", "spot.time_scale=10",
         "--set", "trainer.prompts_per_iter=4", "--set", "trainer.group_size=4",
         "--set", "trainer.val_per_kind=1", "--set", "trainer.val_seeds=2",
         "--set", f"trainer.lora_rank={lora_rank}"],
        timeout=360,
    )  # fmt: skip
    report = _reaped_report(proc, run_dir, _node_pids)
    pids = _node_pids(report)
    spot = report["spot"]
    assert spot["enabled"] and spot["nodes_started"] >= 2 and pids
    assert spot["preemptions_with_notice"] >= 1
    assert report["cost"]["this_run"]["spot_gpu_hours"] > 0
    assert report["cost"]["saving_fraction"] > 0
    assert report["stats"]["coordinator"]["nodes"]["od0"]["kind"] == "ondemand"
    assert report["cost"]["ondemand_gpus"] == 1
    nodes_log = (run_dir / "nodes.log").read_text()
    assert "rejects weights" not in nodes_log, nodes_log[-3000:]
    # micro weights were explored by the nodes (235 of 363 seeds in a 26 s run here)
    assert report["exploration"]["explored_seeds"] > 0, nodes_log[-3000:]
    # and the nodes' rollout workers drew some of the trainer's samples with its weights
    rollouts = report["rollouts"]
    assert rollouts["mode"] == "pool" and rollouts["samples_by_spot"] > 0, rollouts
    assert rollouts["samples"] == rollouts["samples_by_trainer"] + rollouts["samples_by_spot"]
    # the monitor view of the run's own metrics: every panel alive, spot nodes and preemptions
    text = render_metrics(run_dir)
    bodies = panel_bodies(text)
    assert all(bodies.get(p) and not is_empty(bodies[p][0]) for p in PANELS), text
    assert "unreadable" not in text and "spot " in text and "with notice" in text, text
    if lora_rank:  # the versions the nodes sampled with were adapters only
        from spotlight.models.bases import load_checkpoint

        base, _ = load_checkpoint(micro_base)
        full = sum(v.numel() * v.element_size() for v in base.state_dict().values())
        assert report["stats"]["weights"]["snapshot_bytes"] < full / 5


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_spotlight_run_with_sp_group_spot_nodes(micro_base: Path, tmp_path: Path) -> None:
    """`spotlight run` with spot.sp_degree=2: every spot node hosts a 2-member SP group; the
    run finishes, the nodes explore through their groups, and no node or member outlives it."""
    run_dir = tmp_path / "run"
    # Two nodes from the start (6 processes: starting them takes most of a minute on two
    # busy cores), one noticed later; the time budget ends the run after they explored.
    trace = tmp_path / "two_nodes.csv"
    trace.write_text(
        "t_s,event,node\n0,add,spot-0\n0,add,spot-1\n70,notice,spot-1\n80,remove,spot-1\n"
    )
    proc = _spotlight_run(
        ["--iterations", "400", "--no-live", "--run-dir", str(run_dir),
         "--set", f"trainer.base={micro_base}", "--set", f"spot.trace={trace}",
         "--set", "spot.time_scale=1", "--set", "run.time_budget_s=100",
         "--set", "spot.gpus_per_node=2", "--set", "spot.sp_degree=2",
         "--set", "trainer.prompts_per_iter=4", "--set", "trainer.group_size=4",
         "--set", "trainer.val_per_kind=1", "--set", "trainer.val_seeds=2"],
        timeout=360,
    )  # fmt: skip
    report = _reaped_report(proc, run_dir, _node_pids)
    nodes_log = (run_dir / "nodes.log").read_text()
    assert "SP group of 2 members (degree 2) ready" in nodes_log, nodes_log[-3000:]
    assert "cannot start the SP group" not in nodes_log and "rejects weights" not in nodes_log
    assert report["exploration"]["explored_seeds"] > 0, nodes_log[-3000:]
    # the monitor saw the nodes' SP groups (epoch, degree)
    groups = [
        json.loads(x)
        for x in (run_dir / "metrics.jsonl").read_text().splitlines()
        if '"sp_group"' in x
    ]
    assert groups and all(g["fields"]["degree"] in (0, 1, 2) for g in groups), groups[:3]
    assert any(g["fields"]["degree"] == 2 and g["fields"]["epoch"] >= 0 for g in groups)
    # no member process survived its node (they die with it, or are killed by PID)
    pairs = re.findall(r"ready: pids \[(\d+), (\d+)\]", nodes_log)
    members = [int(pid) for pair in pairs for pid in pair]
    assert members and all(process_gone(p) for p in members), members


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_rewards_through_two_reward_workers_equal_in_process_rewards(
    micro_base: Path, tmp_path: Path
) -> None:
    """`spotlight run` with rewards.workers=2 scores through reward actors; every iteration's
    rewards, loss and validation equal a rewards.workers=0 run's (prompts, seeds and SDE noise
    are functions of (run seed, iteration); remote scores are bit-identical), and the worker
    processes are gone at the end."""
    common = ["--no-spot", "--json", "--iterations", "2", "--set", f"trainer.base={micro_base}",
              *SMALL, "--set", "rewards.chunk_images=3",
              # the micro base draws saturated noise, on which GenEval finds nothing (all 0);
              # redness spreads, so equal rewards (and losses) mean something
              "--set", "trainer.reward=tests.micro:redness_reward"]  # fmt: skip
    runs: dict[int, dict[str, Any]] = {}
    for workers in (0, 2):
        run_dir = tmp_path / f"w{workers}"
        proc = _spotlight_run(
            [*common, "--run-dir", str(run_dir), "--set", f"rewards.workers={workers}"],
            timeout=280,
        )
        report = _reaped_report(proc, run_dir, lambda r: list(r.get("rewards", {}).get("pids", [])))
        records = [json.loads(x) for x in (run_dir / "trainer.jsonl").read_text().splitlines()]
        runs[workers] = {"report": report, "records": records}
    local, remote = runs[0]["report"]["rewards"], runs[2]["report"]["rewards"]
    assert local == {"workers": 0, "mode": "in-process"}
    assert remote["mode"] == "actors" and len(remote["pids"]) == 2
    assert remote["remote_images"] == remote["images"] > 0 and remote["local_images"] == 0
    actors = runs[2]["report"]["stats"]["rewards"]["pool"]["actors"]
    assert sum(a["images"] for a in actors.values()) == remote["images"]

    def comparable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        keep = ("kind", "iteration", "reward_mean", "reward_std", "zero_std_group_frac",
                "loss", "grad_norm", "val_score", "val_spread")  # fmt: skip
        return [{k: r[k] for k in keep if k in r} for r in records]

    assert comparable(runs[2]["records"]) == comparable(runs[0]["records"])
    iters = [r for r in runs[0]["records"] if r["kind"] == "iteration"]
    assert all(r["reward_std"] > 0 for r in iters)  # not a comparison of zeros
    assert len([r for r in runs[0]["records"] if r["kind"] == "iteration"]) == 2
    topics = [json.loads(x)["topic"] for x in (tmp_path / "w2" / "metrics.jsonl").open()]
    assert "rewards" in topics and "reward_pool" in topics
    assert "rewards" not in [
        json.loads(x)["topic"] for x in (tmp_path / "w0" / "metrics.jsonl").open()
    ]


def test_the_shipped_ocr_prompt_file_serves_the_ocr_reward() -> None:
    from spotlight.models.batches import read_prompt_file

    path = REPO / "prompts" / "ocr_signs.txt"
    cfg = load_config(overrides=["trainer.reward=ocr", f"trainer.prompts={path}"])
    assert cfg.trainer.prompts is not None and len(read_prompt_file(cfg.trainer.prompts)) == 100


@pytest.mark.timeout(240)
def test_spotlight_run_trains_lora_on_a_qwen_image_pipeline_base_and_resumes(
    tmp_path: Path,
) -> None:
    """The real model's path end to end on a toy pipeline directory: the base loads from the
    Hugging Face layout (transformer, Qwen2.5-VL text encoder, VAE), rollouts are VAE-decoded
    for the reward, checkpoints hold the adapters only and name the base, --resume loads the
    base again and continues."""
    import torch

    from spotlight.models.bases import load_checkpoint
    from spotlight.models.checkpoint import read_card
    from spotlight.models.lora import tunable_state
    from tests.qwen_fixture import LATENT_SIDE, save_tiny_qwen_pipeline

    base = save_tiny_qwen_pipeline(tmp_path / "qwen")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        "".join(f"a poster of a {w} cat\n" for w in ["red", "blue", "big", "small", "old", "new"])
    )
    run_dir = tmp_path / "run"
    proc = _spotlight_run(
        ["--no-spot", "--json", "--iterations", "2", "--run-dir", str(run_dir), *SMALL,
         "--set", f"trainer.base={base}", "--set", f"trainer.prompts={prompts}",
         "--set", f"trainer.resolution={LATENT_SIDE * 8}", "--set", "trainer.lora_rank=2",
         "--set", "trainer.reward=tests.micro:redness_reward"],
        timeout=200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["ok"] and report["iterations"] == 2
    card = read_card(run_dir / "checkpoint")
    assert card.base == str(base) and card.config.name == "qwen-image"
    assert card.config.image_size == LATENT_SIDE
    weights = (run_dir / "checkpoint" / "model.safetensors").stat().st_size
    transformer = sum(f.stat().st_size for f in (base / "transformer").glob("*.safetensors"))
    assert weights < transformer / 5  # the adapters, not a copy of the base
    policy, _ = load_checkpoint(run_dir / "checkpoint")
    adapters = tunable_state(policy)
    assert any(float(v.abs().max()) > 0 for k, v in adapters.items() if "lora_B" in k)
    # validation prompts are the file's held-out ones
    assert {v["iteration"] for v in report["validations"]} == {0, 2}
    proc = _spotlight_run(["--json", "--resume", str(run_dir), "--iterations", "3"], timeout=200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["start_iteration"] == 2 and report["iterations"] == 3
    resumed, _ = load_checkpoint(run_dir / "checkpoint")
    name = next(k for k in adapters if "lora_B" in k)
    assert not torch.equal(tunable_state(resumed)[name], adapters[name])


def test_a_pipeline_base_without_lora_is_refused_at_load(tmp_path: Path) -> None:
    from tests.qwen_fixture import save_tiny_qwen_pipeline

    base = save_tiny_qwen_pipeline(tmp_path / "qwen")
    with pytest.raises(ConfigError, match=r"Qwen-Image pipeline, which trains with LoRA only"):
        load_config(overrides=[f"trainer.base={base}"])
    with pytest.raises(ConfigError, match=r"trainer.resolution: resolution 100 must be"):
        load_config(overrides=["trainer.resolution=100"])
