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


def test_library_layers_do_not_import_commands() -> None:
    """`spotlight.commands` are the CLI's front ends; the library (actors, models, runtime)
    must not reach back into them (shared helpers live in the library)."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "spotlight"
    offenders = [
        str(path.relative_to(root))
        for layer in ("actors", "models", "runtime")
        for path in (root / layer).rglob("*.py")
        if "spotlight.commands" in path.read_text()
    ]
    assert not offenders, f"library modules import spotlight.commands: {offenders}"
