"""The runtime and the models are separate layers: neither may import the other (DESIGN.md)."""

import subprocess
import sys

import pytest


def _modules_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("spotlight.runtime", ("spotlight.models", "spotlight.actors", "diffusers")),
        ("spotlight.models", ("spotlight.runtime", "spotlight.actors", "zmq")),
    ],
)
def test_layer_does_not_import(module: str, forbidden: tuple[str, ...]) -> None:
    loaded = _modules_after_import(module)
    leaked = sorted(m for m in loaded if m.split(".")[0] in forbidden or m.startswith(forbidden))
    assert not leaked, f"importing {module} pulled in {leaked}"
