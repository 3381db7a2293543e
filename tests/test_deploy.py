"""The cluster recipes in deploy/: valid for their tools, and in step with the real CLI.

* Kubernetes manifests go through ``kubernetes-validate`` in strict mode (a misspelled field
  fails); skipped without the ``deploy`` extra.
* SkyPilot YAML goes through SkyPilot's own loaders (``deploy/check_skypilot.py``) under a
  Python that has skypilot (this one, ``$SPOTLIGHT_SKY_PYTHON`` or ``.venv-sky``: skypilot pins
  an older click than our stack, so CI keeps it in a venv of its own); skipped without one.
* Always: each recipe's command is *run*, with the launchers in dry-run mode, and what they
  would start is parsed by the real parsers (`spotlight run`'s, the spot node's, torchrun's)
  and resolved as `spotlight run` would. Ports, Service names, env names and grace periods
  are compared across files and with the code's defaults. A recipe that drifts from the CLI
  fails here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from spotlight.runtime.config import TOKEN_ENV
from spotlight.runtime.notice import PLATFORMS

REPO = Path(__file__).resolve().parent.parent
SKY = REPO / "deploy" / "skypilot"
K8S = REPO / "deploy" / "k8s"
SKY_FILES = sorted(SKY.glob("*.yaml"))
K8S_FILES = sorted(K8S.glob("*.yaml"))
SCRIPTS = [
    REPO / "scripts" / "launch_ondemand.sh",
    REPO / "scripts" / "launch_spot.sh",
    SKY / "run.sh",
    SKY / "setup.sh",
]


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _sky_tasks() -> list[tuple[str, dict[str, Any], str | None]]:
    """(file name, task, job group name or None) for every SkyPilot task."""
    out = []
    for path in SKY_FILES:
        docs = _docs(path)
        if docs[0].get("execution") == "parallel":
            out += [(path.name, task, docs[0]["name"]) for task in docs[1:]]
        else:
            out += [(path.name, docs[0], None)]
    return out


def _k8s(kind: str, name: str) -> dict[str, Any]:
    for path in K8S_FILES:
        for doc in _docs(path):
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc
    raise AssertionError(f"no {kind} {name} in deploy/k8s")


# ------------------------------------------------------------------ tools' own validators


@pytest.mark.parametrize("version", ["1.31", "1.37"])
def test_kubernetes_manifests_are_valid_in_strict_mode(version: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="the deploy extra is not installed")
    kinds = []
    for path in K8S_FILES:
        for doc in _docs(path):
            kv.validate(doc, version, strict=True)  # raises, naming the bad field
            kinds.append(doc["kind"])
    assert sorted(kinds) == ["Deployment", "Job", "PersistentVolumeClaim",
                             "PersistentVolumeClaim", "Service", "Service"]  # fmt: skip
    bad = _k8s("Deployment", "spotlight-spot")
    bad["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 15  # a typo is caught
    with pytest.raises(Exception, match="terminationGracePeriodSecond"):
        kv.validate(bad, version, strict=True)


def _sky_python() -> str | None:
    try:
        import sky  # noqa: F401

        return sys.executable
    except ImportError:
        pass
    if os.environ.get("SPOTLIGHT_SKY_PYTHON"):
        return os.environ["SPOTLIGHT_SKY_PYTHON"]
    if (REPO / ".venv-sky" / ".installed").is_file():  # `make sky-venv` finished
        return str(REPO / ".venv-sky" / "bin" / "python")
    return None


@pytest.mark.timeout(300)
def test_skypilot_loads_every_recipe_and_the_job_group() -> None:
    python = _sky_python()
    if python is None:
        pytest.skip("no skypilot: make sky-venv (or set SPOTLIGHT_SKY_PYTHON)")
    proc = subprocess.run(
        [python, str(REPO / "deploy" / "check_skypilot.py"), *map(str, SKY_FILES)],
        capture_output=True, text=True, timeout=280, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    loaded = {Path(k).name: v for k, v in json.loads(proc.stdout).items()}
    group = loaded["jobgroup.yaml"]
    assert group["group"] == {"name": "spotlight", "execution": "parallel",
                              "primary_tasks": ["ondemand"]}  # fmt: skip
    assert [t["name"] for t in group["tasks"]] == ["ondemand", "spot-a", "spot-b"]
    (ondemand,) = loaded["ondemand.yaml"]["tasks"]
    (spot,) = loaded["spot.yaml"]["tasks"]
    for task in (ondemand, spot):  # the token is a secret SkyPilot asks for at launch
        assert task["required_secrets"] == [TOKEN_ENV] and task["secrets"] == [TOKEN_ENV]
    assert [r["use_spot"] for r in ondemand["resources"]] == [False]
    assert ondemand["resources"][0]["ports"] == [ondemand["envs"]["SPOTLIGHT_PORT"]]
    assert len(spot["resources"]) >= 2  # any_of over GPU types
    for r in spot["resources"]:
        assert r["use_spot"] and r["job_recovery"]["strategy"] and r["accelerators"]
    # the job group's tasks are the stand-alone tasks (minus what the group provides)
    by_name = {t["name"]: t for t in group["tasks"]}
    for ours, theirs in ((by_name["ondemand"], ondemand), (by_name["spot-a"], spot)):
        for key in ("run", "setup", "resources", "secrets"):
            assert ours[key] == theirs[key], (ours["name"], key)
        extra = {"SPOTLIGHT_COORDINATOR"}  # the group derives it from its task names
        assert {k: v for k, v in theirs["envs"].items() if k not in extra} == ours["envs"]


# Where SkyPilot is absent (CI: its install is large), the recipes are checked against the
# subset of SkyPilot 0.14's YAML schema they may use; with SkyPilot present the test above
# loads them for real and the one below checks this subset against SkyPilot's own schema.
SKY_TASK_KEYS = {"name", "workdir", "num_nodes", "resources", "envs", "secrets", "setup", "run",
                 "file_mounts", "volumes", "config"}  # fmt: skip
SKY_RESOURCE_KEYS = {"infra", "accelerators", "use_spot", "disk_size", "disk_tier", "ports",
                     "any_of", "ordered", "job_recovery", "cpus", "memory", "instance_type",
                     "network_tier", "labels", "image_id"}  # fmt: skip
SKY_RECOVERY_KEYS = {"strategy", "max_restarts_on_errors", "recover_on_exit_codes"}
SKY_RECOVERY_STRATEGIES = {"FAILOVER", "EAGER_NEXT_REGION"}
SKY_GROUP_KEYS = {"name", "execution", "primary_tasks", "termination_delay"}


def _check_sky_resources(where: str, res: dict[str, Any]) -> None:
    assert set(res) <= SKY_RESOURCE_KEYS, (where, set(res) - SKY_RESOURCE_KEYS)
    for option in res.get("any_of", []) + res.get("ordered", []):
        assert set(option) <= SKY_RESOURCE_KEYS - {"any_of", "ordered"}, (where, option)
        assert re.fullmatch(r"[\w-]+:\d+", str(option.get("accelerators", "x:1"))), option
    if "accelerators" in res:
        assert re.fullmatch(r"[\w-]+:\d+", str(res["accelerators"])), (where, res)
    recovery = res.get("job_recovery")
    if recovery is not None:
        assert set(recovery) <= SKY_RECOVERY_KEYS, (where, recovery)
        assert recovery["strategy"] in SKY_RECOVERY_STRATEGIES, (where, recovery)


def test_skypilot_recipes_are_well_formed_and_the_job_group_repeats_the_tasks() -> None:
    tasks = _sky_tasks()
    for name, task, _group in tasks:
        where = f"{name}:{task.get('name')}"
        assert set(task) <= SKY_TASK_KEYS, (where, set(task) - SKY_TASK_KEYS)
        _check_sky_resources(where, task["resources"])
        assert task["secrets"] == {TOKEN_ENV: None}, where  # null: SkyPilot asks at launch
        assert all(isinstance(v, str) for v in task["envs"].values()), where  # no YAML ints
        assert task["workdir"] == "." and (REPO / task["setup"].split()[0]).is_file(), where
        assert (REPO / task["run"].split()[0]).is_file(), where
        spot = task["resources"]["use_spot"]
        assert spot == ("any_of" in task["resources"]), where  # spot: any GPU type that fits
        assert spot == ("job_recovery" in task["resources"]), where
        if not spot:  # the coordinator's port is open to the spot nodes
            assert str(task["resources"]["ports"]) == task["envs"]["SPOTLIGHT_PORT"], where
    (header, *group_tasks) = _docs(SKY / "jobgroup.yaml")
    assert set(header) <= SKY_GROUP_KEYS and header["execution"] == "parallel"
    names = [t["name"] for t in group_tasks]
    assert set(header["primary_tasks"]) <= set(names) and len(set(names)) == len(names)
    for name in (header["name"], *names):  # what SkyPilot's job-group loader accepts
        assert re.fullmatch(r"[A-Za-z0-9_-]+", name), name
    assert re.fullmatch(r"\d+[smhdw]?", str(header["termination_delay"]))
    alone = {name: task for name, task, group in tasks if group is None}
    for task in group_tasks:  # the job group's tasks are the stand-alone ones, but for what
        kind = "spot.yaml" if task["resources"]["use_spot"] else "ondemand.yaml"
        theirs = alone[kind]  # the group provides (names, the coordinator's address)
        for key in ("workdir", "setup", "run", "resources", "secrets"):
            assert task[key] == theirs[key], (task["name"], key)
        envs = {k: v for k, v in theirs["envs"].items() if k != "SPOTLIGHT_COORDINATOR"}
        assert task["envs"] == envs, task["name"]
    bad = {**alone["spot.yaml"], "resources": {**alone["spot.yaml"]["resources"], "use_sopt": 1}}
    with pytest.raises(AssertionError, match="use_sopt"):  # a typo is caught
        _check_sky_resources("bad", bad["resources"])


def test_the_structural_checks_are_within_skypilots_own_schema() -> None:
    python = _sky_python()
    if python is None:
        pytest.skip("no skypilot: make sky-venv (or set SPOTLIGHT_SKY_PYTHON)")
    code = (
        "import json; from sky.utils import schemas as s; "
        "print(json.dumps({'task': sorted(s.get_task_schema()['properties']), "
        "'resources': sorted(s.get_resources_schema()['properties'])}))"
    )
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = json.loads(proc.stdout)
    assert set(theirs["task"]) >= SKY_TASK_KEYS, SKY_TASK_KEYS - set(theirs["task"])
    assert set(theirs["resources"]) >= SKY_RESOURCE_KEYS, SKY_RESOURCE_KEYS - set(
        theirs["resources"]
    )


# ------------------------------------------------------------------ commands vs the CLI


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPOTLIGHT_", "SKYPILOT_"))}
    return {**env, "SPOTLIGHT_DRY_RUN": "1", "SPOTLIGHT_PYTHON": sys.executable, **extra}


def _dry(command: list[str], env: dict[str, str]) -> list[str]:
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert proc.returncode == 0, (command, proc.stderr)
    return shlex.split(proc.stdout)


def _sky_run(task: dict[str, Any], group: str | None, **extra: str) -> list[str]:
    """The command a SkyPilot task's run: would start, as SkyPilot would run it (its envs,
    the token secret, SkyPilot's variables for node 0)."""
    res = task["resources"]
    accelerators = str(res.get("accelerators") or res["any_of"][0]["accelerators"])
    gpus = accelerators.split(":")[1]
    skypilot = {
        "SKYPILOT_NODE_RANK": "0",
        "SKYPILOT_NODE_IPS": "10.1.0.5\n10.1.0.6",
        "SKYPILOT_NUM_NODES": str(task.get("num_nodes", 1)),
        "SKYPILOT_NUM_GPUS_PER_NODE": gpus,
        "SKYPILOT_CLUSTER_INFO": json.dumps({"cloud": "AWS", "region": "us-east-1"}),
        **({"SKYPILOT_JOBGROUP_NAME": group} if group else {}),
    }
    envs = {k: str(v) for k, v in task.get("envs", {}).items()}
    env = _env(**{**envs, TOKEN_ENV: "x", **skypilot, **extra})
    return _dry(["bash", "-c", task["run"]], env)


def _run_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """`... -m spotlight.nodes.torchrun T... -m spotlight.cli run R...`: R parsed by `spotlight
    run`'s parser and T by torchrun's (an unknown flag fails either)."""
    from torch.distributed.run import get_args_parser

    from spotlight.commands import run as run_cmd

    assert argv[1:3] == ["-m", "spotlight.nodes.torchrun"], argv
    cut = argv.index("spotlight.cli")
    torchrun = get_args_parser().parse_args(argv[3 : cut + 1])
    assert torchrun.module and torchrun.max_restarts == 0, argv  # static torchrun
    assert argv[cut + 1] == "run"
    parser = argparse.ArgumentParser(exit_on_error=False)
    run_cmd.add_arguments(parser)
    return parser.parse_args(argv[cut + 2 :]), argv[3:cut]


def _resolve(args: argparse.Namespace) -> Any:
    """`spotlight run`'s own resolution of the recipe's options (config, run dir, serving)."""
    from spotlight.commands import run as run_cmd
    from spotlight.nodes.serving import Serving

    cfg, run_dir, resume = run_cmd.resolve_config(args)
    serving = Serving.from_args(args)
    return cfg, run_dir, resume, serving


def _spot_args(argv: list[str]) -> argparse.Namespace:
    from spotlight.nodes.spot import build_parser

    assert argv[1:3] == ["-m", "spotlight.nodes.spot"], argv
    return build_parser().parse_args(argv[3:])


def test_skypilot_run_sections_start_what_the_cli_accepts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(REPO)  # presets' relative paths (the OCR prompts), as in the workdir
    monkeypatch.setenv(TOKEN_ENV, "x")
    tasks = _sky_tasks()
    assert {f for f, _, _ in tasks} == {"ondemand.yaml", "spot.yaml", "jobgroup.yaml"}
    base = tmp_path / "Qwen-Image"  # setup.sh downloads it there (a pipeline directory)
    (base / "transformer").mkdir(parents=True)
    (base / "transformer" / "config.json").write_text("{}")
    for name, task, group in tasks:
        envs = task.get("envs", {})
        port = int(envs["SPOTLIGHT_PORT"])
        if task["resources"].get("use_spot"):
            coordinator = {} if group else {"SPOTLIGHT_COORDINATOR": "tcp://10.1.0.5:29600"}
            node = _spot_args(_sky_run(task, group, SPOTLIGHT_BASE=str(base), **coordinator))
            want = f"ondemand-0.{group}" if group else "10.1.0.5"
            assert node.coordinator == f"tcp://{want}:{port}", (name, node.coordinator)
            assert node.platform == "aws" and node.platform in PLATFORMS
            assert (node.bind_host, node.advertise_host) == ("0.0.0.0", "10.1.0.5")
            assert node.base == str(base)
            continue
        task = {**task, "envs": {**envs, "SPOTLIGHT_RUN_DIR": str(tmp_path / name)}}
        args, torchrun = _run_args(_sky_run(task, group, SPOTLIGHT_BASE=str(base)))
        cfg, run_dir, resume, serving = _resolve(args)
        assert run_dir == tmp_path / name and not resume and cfg.run.resume == "auto"
        assert cfg.trainer.base == str(base) and cfg.trainer.lora_rank > 0
        assert cfg.spot.enabled and cfg.spot.pool == "external"
        assert serving.runtime.port == port == int(task["resources"]["ports"]), name
        assert serving.runtime.bind_host == "0.0.0.0"
        assert serving.runtime.advertise_host == (f"ondemand-0.{group}" if group else "10.1.0.5")
        assert "--standalone" in torchrun and "--nproc-per-node" in torchrun
    # two on-demand nodes: the rendezvous is node 0's IP at SPOTLIGHT_RDZV_PORT
    (_, ondemand, _) = next(t for t in tasks if t[0] == "ondemand.yaml")
    two = {**ondemand, "num_nodes": 2}
    two["envs"] = {**ondemand["envs"], "SPOTLIGHT_RUN_DIR": str(tmp_path / "two"),
                   "SPOTLIGHT_BASE": str(base)}  # fmt: skip
    _, torchrun = _run_args(_sky_run(two, None))
    rdzv = torchrun[torchrun.index("--rdzv-endpoint") + 1]
    assert rdzv == f"10.1.0.5:{ondemand['envs']['SPOTLIGHT_RDZV_PORT']}"


@pytest.mark.parametrize(
    ("cloud", "platform"),
    [("AWS", "aws"), ("GCP", "gcp"), ("Azure", "azure"), ("Kubernetes", "gke"), ("Lambda", "generic")],
)  # fmt: skip
def test_a_skypilot_spot_node_takes_its_notice_platform_from_the_cloud(
    cloud: str, platform: str
) -> None:
    (_, spot, _) = next(t for t in _sky_tasks() if t[0] == "spot.yaml")
    info = json.dumps({"cloud": cloud, "region": "r"})
    node = _spot_args(
        _sky_run(spot, None, SPOTLIGHT_COORDINATOR="tcp://h:1", SKYPILOT_CLUSTER_INFO=info,
                 SPOTLIGHT_BASE="")
    )  # fmt: skip
    assert node.platform == platform


def test_a_recipe_launched_without_the_token_says_what_to_do() -> None:
    for name, task, _group in _sky_tasks():
        env = _env(**{k: str(v) for k, v in task.get("envs", {}).items()},
                   SKYPILOT_NODE_IPS="10.1.0.5", SKYPILOT_NUM_NODES="1")  # fmt: skip
        proc = subprocess.run(["bash", "-c", task["run"]], capture_output=True, text=True,
                              env=env, cwd=REPO, timeout=60)  # fmt: skip
        assert proc.returncode == 2, (name, proc.stdout)
        assert f"--secret {TOKEN_ENV}" in proc.stderr, (name, proc.stderr)
    spot = _k8s("Deployment", "spotlight-spot")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value", "") for e in spot["env"] if e["name"] != TOKEN_ENV}
    proc = subprocess.run([spot["command"][0], "--coordinator", env["SPOTLIGHT_COORDINATOR"]],
                          capture_output=True, text=True, env=_env(), cwd=REPO, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "needs the cluster token" in proc.stderr
    assert "Secret spotlight-token" in proc.stderr


def _container_command(container: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """A container's command and env as the kubelet would start it ($(VAR) expanded; secret
    and downward-API values filled with stand-ins)."""
    stand_in = {"status.podIP": "10.8.0.7",
                "metadata.annotations['batch.kubernetes.io/job-completion-index']": "0"}  # fmt: skip
    env: dict[str, str] = {}
    for e in container["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "secretKeyRef" in e["valueFrom"]:
            env[e["name"]] = "x"
        else:
            env[e["name"]] = stand_in[e["valueFrom"]["fieldRef"]["fieldPath"]]
    expand = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in container["args"]]
    return [container["command"][0], *expand], env


def test_kubernetes_commands_names_ports_and_grace_periods_match_the_cli(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(REPO)
    job = _k8s("Job", "spotlight-ondemand")
    pod = job["spec"]["template"]["spec"]
    (trainer,) = pod["containers"]
    command, env = _container_command(trainer)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    run_dir = next(a for a in command if a.startswith("/runs/"))
    command[command.index(run_dir)] = str(tmp_path / "run")  # the PVC's path, here
    args, torchrun = _run_args(_dry(command, _env(**env)))
    cfg, _, resume, serving = _resolve(args)
    assert cfg.run.resume == "auto" and cfg.spot.pool == "external" and not resume
    # Services: the coordinator's name is what it advertises and what spot pods dial
    coord = _k8s("Service", "spotlight-coordinator")
    headless = _k8s("Service", "spotlight-ondemand")
    labels = job["spec"]["template"]["metadata"]["labels"]
    for svc in (coord, headless):
        assert svc["spec"]["clusterIP"] == "None"
        selector = dict(svc["spec"]["selector"])
        selector.pop("batch.kubernetes.io/job-completion-index", None)
        assert selector.items() <= labels.items(), svc["metadata"]["name"]
    assert coord["spec"]["selector"]["batch.kubernetes.io/job-completion-index"] == "0"
    assert pod["subdomain"] == headless["metadata"]["name"]
    assert job["spec"]["completionMode"] == "Indexed" and pod["restartPolicy"] == "OnFailure"
    assert serving.runtime.advertise_host == coord["metadata"]["name"]
    ports = {p["name"]: p["containerPort"] for p in trainer["ports"]}
    assert serving.runtime.port == ports["runtime"] == coord["spec"]["ports"][0]["port"]
    assert {p["name"]: p["port"] for p in headless["spec"]["ports"]} == ports
    # a deleted trainer pod finishes its iteration and checkpoints before SIGKILL
    shutdown = int(torchrun[torchrun.index("--shutdown-timeout") + 1])
    assert pod["terminationGracePeriodSeconds"] >= shutdown + 10
    # spot pods: the coordinator by Service name, a platform whose lead fits the grace period
    deploy = _k8s("Deployment", "spotlight-spot")
    spec = deploy["spec"]["template"]["spec"]
    command, env = _container_command(spec["containers"][0])
    node = _spot_args(_dry(command, _env(**env)))
    assert node.coordinator == f"tcp://{coord['metadata']['name']}:{serving.runtime.port}"
    assert node.advertise_host == "10.8.0.7" and node.bind_host == "0.0.0.0"
    platform = PLATFORMS[node.platform]
    assert platform.sigterm_grace_s < spec["terminationGracePeriodSeconds"]
    if node.platform == "gke":  # GKE kills a spot pod 15 s after SIGTERM, whatever it asks
        from spotlight.nodes.spot import _EXIT_MARGIN_S

        assert platform.kill_after_s == 15.0
        assert platform.sigterm_grace_s + _EXIT_MARGIN_S + 2.0 <= platform.kill_after_s
        assert spec["nodeSelector"] == {"cloud.google.com/gke-spot": "true"}
    # the trainer never lands on spot capacity: it avoids every spot label a recipe names
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    avoided = {e["key"]: e for e in term["matchExpressions"]}
    spot_labels = {**spec["nodeSelector"], "karpenter.sh/capacity-type": "spot",
                   "eks.amazonaws.com/capacityType": "SPOT"}  # fmt: skip
    for key, value in spot_labels.items():
        rule = avoided[key]
        assert rule["operator"] == "DoesNotExist" or (
            rule["operator"] == "NotIn" and value in rule["values"]
        ), rule
    # the same Secret and volumes everywhere
    claims = {d["metadata"]["name"] for d in _docs(K8S / "storage.yaml")}
    for p in (pod, spec):
        assert {v["persistentVolumeClaim"]["claimName"] for v in p["volumes"]
                if "persistentVolumeClaim" in v} <= claims  # fmt: skip
        token = next(e for e in p["containers"][0]["env"] if e["name"] == TOKEN_ENV)
        assert token["valueFrom"]["secretKeyRef"] == {"name": "spotlight-token", "key": "token"}


def test_every_env_name_in_a_recipe_is_read_by_a_script() -> None:
    scripts = "\n".join(p.read_text() for p in SCRIPTS)
    names: set[str] = set()
    for _, task, _ in _sky_tasks():
        names |= set(task.get("envs", {})) | set(task.get("secrets", {}))
    for path in K8S_FILES:
        for doc in _docs(path):
            for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                names |= {e["name"] for e in c.get("env", [])}
    names -= {"POD_IP"}  # the manifest's own, passed as $(POD_IP)
    unread = [n for n in sorted(names) if not re.search(rf"\${{?{n}\b", scripts)]
    assert unread == [], f"set in a recipe, read by no launcher: {unread}"


def test_the_image_holds_what_the_manifests_run() -> None:
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    workdir = re.search(r"^WORKDIR (\S+)", dockerfile, re.M)
    assert workdir is not None
    for src in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for part in src.split():
            assert (REPO / part).exists(), part
    for kind, name in (("Job", "spotlight-ondemand"), ("Deployment", "spotlight-spot")):
        container = _k8s(kind, name)["spec"]["template"]["spec"]["containers"][0]
        assert container["workingDir"] == workdir.group(1)
        assert (REPO / container["command"][0]).is_file()
    extras = re.search(r"-e '\.\[([\w,]+)\]'", dockerfile)
    assert extras is not None
    pyproject = (REPO / "pyproject.toml").read_text()
    for extra in extras.group(1).split(","):
        assert re.search(rf"^{extra} = \[", pyproject, re.M), extra
