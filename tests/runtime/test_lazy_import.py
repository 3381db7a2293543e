"""``import spotlight.runtime`` stays cheap: torch is imported only when a tensor travels."""

from __future__ import annotations

import subprocess
import sys

from tests.runtime.helpers import REPO

_CHECK = """
import sys
import spotlight.runtime
from spotlight.runtime.codec import decode_body, encode
assert "torch" not in sys.modules, "import spotlight.runtime imported torch"
frames = encode({"k": "x"}, [1, (2.0, "s"), {"b": b"x"}])
assert decode_body(frames[1:]) == [1, (2.0, "s"), {"b": b"x"}]
assert "torch" not in sys.modules, "a message without tensors imported torch"
import torch
t = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)
out = decode_body(encode({"k": "x"}, t)[1:])
assert out.dtype == torch.bfloat16 and torch.equal(out, t)
print("ok")
"""


def test_import_runtime_does_not_import_torch() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _CHECK], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


_DECODE_FIRST = """
import sys
from spotlight.runtime.codec import decode_body
# Frames made by another process (torch imported there), decoded here before any import.
body = bytes.fromhex(sys.argv[1])
out = decode_body([body])
assert "torch" in sys.modules
print(out.dtype, list(out.shape), out.tolist())
"""


def test_decoding_a_tensor_imports_torch_on_demand() -> None:
    import torch

    from spotlight.runtime.codec import encode

    frames = encode({"k": "x"}, torch.tensor([[1, 2]], dtype=torch.int16))
    proc = subprocess.run(
        [sys.executable, "-c", _DECODE_FIRST, bytes(frames[1]).hex()],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "torch.int16 [1, 2] [[1, 2]]"
