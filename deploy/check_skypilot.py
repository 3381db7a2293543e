"""Load the SkyPilot recipes with SkyPilot itself, offline, and print what it understood.

    python deploy/check_skypilot.py deploy/skypilot/*.yaml      # with skypilot installed

Each file goes through SkyPilot's own loaders, the ones ``sky launch`` / ``sky jobs launch``
use (``sky.Task.from_yaml`` for a task, the job-group loader for a multi-document group), so
a misspelled field, a bad resource or an unknown header key fails here instead of at launch.
No cloud credentials and no network are needed.

Prints one JSON object: file -> {"group": header or null, "tasks": [task summary, ...]}.
tests/test_deploy.py runs this (under a Python that has skypilot, e.g. ``.venv-sky``: the
skypilot package pins an older click than our stack, so it lives in a venv of its own) and
checks the summaries against spotlight's real flags and defaults.

Only the standard library and skypilot are imported: spotlight need not be installed.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

TOKEN = "SPOTLIGHT_CLUSTER_TOKEN"
GROUP_HEADER_KEYS = {"name", "execution", "primary_tasks", "termination_delay", "inter_connection"}


def _summary(task: Any) -> dict[str, Any]:
    resources = []
    for r in sorted(task.resources, key=str):
        resources.append(
            {
                "accelerators": r.accelerators,
                "use_spot": r.use_spot,
                "ports": r.ports,
                "job_recovery": r.job_recovery,
            }
        )
    return {
        "name": task.name,
        "num_nodes": task.num_nodes,
        "workdir": task.workdir,
        "setup": task.setup,
        "run": task.run,
        "envs": dict(task.envs),
        "secrets": sorted(task.secrets),
        "resources": resources,
    }


def _load(path: str) -> dict[str, Any]:
    import yaml
    from sky import Task
    from sky.utils import dag_utils

    overrides = [(TOKEN, "x")]
    if dag_utils.is_job_group_yaml(path):
        with open(path, encoding="utf-8") as f:
            header = next(yaml.safe_load_all(f))
        unknown = set(header) - GROUP_HEADER_KEYS
        if unknown:  # SkyPilot only warns about these; a recipe must not carry them
            raise ValueError(f"{path}: unknown job group header keys {sorted(unknown)}")
        dag = dag_utils.load_job_group_from_yaml(path, secrets_overrides=overrides)
        group = {
            "name": dag.name,
            "execution": str(dag.execution.value),
            "primary_tasks": dag.primary_tasks,
        }
        return {"group": group, "tasks": [_summary(t) for t in dag.tasks]}
    required = [ref.name for ref in Task.from_yaml(path)._managed_secret_refs]
    task = Task.from_yaml_config(_read(path), secrets_overrides=overrides)
    return {"group": None, "tasks": [{**_summary(task), "required_secrets": required}]}


def _read(path: str) -> dict[str, Any]:
    import yaml

    with open(path, encoding="utf-8") as f:
        data: dict[str, Any] = yaml.safe_load(f)
    return data


def main(paths: list[str]) -> int:
    logging.disable(logging.WARNING)
    out: dict[str, Any] = {}
    for path in paths:
        try:
            out[path] = _load(path)
        except Exception as exc:  # report every file's problem, then fail
            out[path] = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out, indent=2, default=str))
    return 1 if any("error" in v for v in out.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
