"""The wire codec: bit-exact round trips, zero copy, and only CodecError on bad input."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from fractions import Fraction
from typing import Any

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spotlight.runtime import codec
from spotlight.runtime.codec import (
    VERSION_KEY,
    WIRE_VERSION,
    CodecError,
    WireVersionError,
    decode_body,
    decode_header,
    encode,
    register_extension,
    register_wire_type,
)

TORCH_DTYPES = [
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.complex64,
    torch.complex128,
    torch.uint16,
    torch.uint32,
    torch.uint64,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
]


def random_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Random bits of the right size reinterpreted as ``dtype`` (NaN payloads included)."""
    gen = torch.Generator().manual_seed(seed)
    itemsize = torch.empty((), dtype=dtype).element_size()
    n = math.prod(shape)
    raw = torch.randint(0, 256, (n * itemsize,), dtype=torch.uint8, generator=gen)
    if dtype == torch.bool:
        raw = raw % 2
    return raw.view(dtype).reshape(shape)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


def same(a: Any, b: Any) -> bool:
    """Structural equality with exact types; tensors and arrays compared bit for bit."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))
    if isinstance(a, np.ndarray | np.generic):
        a, b = np.asarray(a), np.asarray(b)
        return (
            a.dtype == b.dtype
            and a.shape == b.shape
            and a.reshape(-1).view(np.uint8).tobytes() == b.reshape(-1).view(np.uint8).tobytes()
        )
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if dataclasses.is_dataclass(a):
        return same(dataclasses.asdict(a), dataclasses.asdict(b))  # type: ignore[arg-type]
    return bool(a == b)


def roundtrip(body: Any, **kw: Any) -> Any:
    frames = encode({"kind": "ask"}, body, **kw)
    assert decode_header(frames[0]) == {"kind": "ask"}
    return decode_body(frames[1:])


@register_wire_type
@dataclasses.dataclass(frozen=True)
class Sample:
    prompt: str
    seed: int
    latent: torch.Tensor
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@register_wire_type(name="tests.Validated")
@dataclasses.dataclass
class Validated:
    n: int

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"n must be >= 0, got {self.n}")


@dataclasses.dataclass
class NotRegistered:
    x: int


register_extension(
    Fraction, "fraction", lambda f: [f.numerator, f.denominator], lambda v: Fraction(*v)
)


# ------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(), (0,), (3, 5), (2, 0, 3), (40_000,)], ids=str)
def test_tensor_roundtrip_bit_exact(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    t = random_tensor(dtype, shape)
    for threshold in (0, 1 << 30):  # every tensor as its own frame / every tensor inline
        out = roundtrip({"t": t, "nested": [(t,)]}, zero_copy_threshold=threshold)
        assert same(out["t"], t)
        assert same(out["nested"][0][0], t)
        assert out["t"].is_contiguous()


def test_noncontiguous_conj_grad_and_parameter_tensors() -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    view = base.t()[1:, ::2]
    assert not view.is_contiguous()
    assert same(roundtrip(view), view.contiguous())
    c = torch.randn(5, dtype=torch.complex64).conj()
    assert torch.equal(roundtrip(c), c.resolve_conj())
    p = torch.nn.Parameter(torch.randn(3, 3))
    out = roundtrip(p)
    assert type(out) is torch.Tensor and not out.requires_grad and torch.equal(out, p.detach())
    offset = torch.arange(100, dtype=torch.int64)[10:90]  # storage offset != 0
    assert torch.equal(roundtrip(offset, zero_copy_threshold=0), offset)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_tensor_arrives_on_cpu() -> None:
    t = torch.randn(1000, 100, device="cuda", dtype=torch.bfloat16)
    out = roundtrip(t)
    assert out.device.type == "cpu" and torch.equal(out, t.cpu())


NP_DTYPES = ["?", "u1", "i1", "<i2", ">i4", "<i8", "<u8", "<f2", "<f4", ">f8", "<c8", "<c16"]


@pytest.mark.parametrize("dtype", NP_DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (4, 3), (30_000,)], ids=str)
def test_ndarray_roundtrip(dtype: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    dt = np.dtype(dtype)
    arr = np.frombuffer(rng.bytes(math.prod(shape) * dt.itemsize), dtype=np.uint8)
    if dt.kind == "b":
        arr = arr % 2
    arr = arr.view(dt).reshape(shape)
    for threshold in (0, 1 << 30):
        out = roundtrip([arr, arr.T], zero_copy_threshold=threshold)
        assert same(out[0], arr) and same(out[1], arr.T.copy(order="C"))
        assert out[0].flags.writeable


def test_numpy_scalars_keep_their_type() -> None:
    for value in (np.float32(1.5), np.int64(-3), np.bool_(True), np.complex64(1 + 2j)):
        out = roundtrip(value)
        assert type(out) is type(value) and out == value


def test_plain_values_and_containers() -> None:
    body = {
        "none": None,
        "bools": [True, False],
        "ints": [0, -1, 2**63 - 1, -(2**63), 2**64 - 1],
        "float": 1.25,
        "nan": float("nan"),
        "str": "héllo",
        "bytes": b"\x00\xff",
        "tuple": (1, (2, [3, (4,)]), ()),
        "list": [[], [[]]],
        7: "int key",
        (1, "a"): "tuple key",
    }
    out = roundtrip(body)
    assert same(out, body)
    assert isinstance(out["tuple"], tuple) and isinstance(out["tuple"][1][1][1], tuple)


def test_registered_dataclass_and_extension() -> None:
    sample = Sample("two red circles", 7, torch.randn(4, 4).to(torch.bfloat16), {"r": (1, 2)})
    out = roundtrip({"s": [sample], "f": Fraction(3, 7)})
    assert isinstance(out["s"][0], Sample) and same(out["s"][0], sample)
    assert out["f"] == Fraction(3, 7)


def test_unregistered_dataclass_says_how_to_register() -> None:
    with pytest.raises(CodecError, match="register_wire_type"):
        encode({}, [NotRegistered(1)])
    with pytest.raises(CodecError, match="supported"):
        encode({}, {"x": object()})
    with pytest.raises(ValueError, match="register_extension"):
        register_wire_type(int)  # not a dataclass: a plain ValueError-family error


def test_receiver_validation_runs_and_is_a_codec_error() -> None:
    frames = encode({}, Validated(3))
    assert decode_body(frames[1:]) == Validated(3)
    # Forge a record the receiver's __post_init__ rejects.
    bad = codec._Encoder(0).pack(msgpack.ExtType(4, msgpack.packb(["tests.Validated", {"n": -1}])))
    with pytest.raises(CodecError, match="n must be >= 0"):
        decode_body([bad])
    bad = codec._Encoder(0).pack(msgpack.ExtType(4, msgpack.packb(["tests.Validated", {"m": 1}])))
    with pytest.raises(CodecError, match="rejected its fields"):
        decode_body([bad])


def test_registration_conflicts_are_refused() -> None:
    @dataclasses.dataclass
    class Other:
        n: int

    with pytest.raises(ValueError, match="already registered"):
        register_wire_type(name="tests.Validated")(Other)
    with pytest.raises(ValueError, match="already registered"):
        register_extension(complex, "fraction", str, str)


# ------------------------------------------------------------------------------ zero copy


def test_large_tensor_is_sent_without_copy() -> None:
    t = torch.randn(256, 256)  # 256 KiB >= 64 KiB threshold
    frames = encode({}, {"t": t})
    assert len(frames) == 3
    buf = frames[2]
    assert isinstance(buf, memoryview) and buf.nbytes == t.nbytes
    assert np.frombuffer(buf, dtype=np.uint8).ctypes.data == t.data_ptr()
    t[0, 0] = 42.0  # same memory: the frame sees the write
    assert np.frombuffer(buf, dtype=np.float32)[0] == 42.0
    del t
    assert np.frombuffer(buf, dtype=np.float32)[0] == 42.0  # the frame keeps it alive


def test_small_tensor_is_inlined() -> None:
    frames = encode({}, torch.ones(16))
    assert len(frames) == 2


def test_large_tensor_decodes_without_copy_from_writable_frame() -> None:
    t = torch.randn(300, 300)
    frames = encode({}, t)
    received = bytearray(frames[2])  # what a receive buffer (zmq.Frame) looks like
    out = decode_body([frames[1], received])
    assert out.data_ptr() == np.frombuffer(received, dtype=np.uint8).ctypes.data
    assert torch.equal(out, t)


def test_readonly_frames_are_copied_and_writable_without_warning() -> None:
    t = torch.randn(300, 300).to(torch.bfloat16)
    frames = [bytes(f) for f in encode({}, {"a": t, "n": t.float().numpy()})]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = decode_body(frames[1:])
    out["a"][0, 0] = 1.0  # writable
    out["n"][0, 0] = 1.0
    assert torch.equal(out["a"][1:], t[1:])


def test_zmq_frames_decode_zero_copy() -> None:
    zmq = pytest.importorskip("zmq")
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        port = a.bind_to_random_port("tcp://127.0.0.1")
        b.connect(f"tcp://127.0.0.1:{port}")
        t = torch.randn(512, 512)
        a.send_multipart(encode({"k": 1}, t), copy=False)
        assert b.poll(10_000), "no message within 10 s"
        got = b.recv_multipart(copy=False)
        assert decode_header(got[0]) == {"k": 1}
        out = decode_body(got[1:])
        assert torch.equal(out, t)
        assert out.data_ptr() == np.frombuffer(got[2], dtype=np.uint8).ctypes.data
    finally:
        a.close(linger=0)
        b.close(linger=0)
        ctx.term()


# ------------------------------------------------------------------------------ bad input


def test_header_version_mismatch() -> None:
    frame = msgpack.packb({VERSION_KEY: WIRE_VERSION + 1, "kind": "ask"})
    with pytest.raises(WireVersionError, match="upgrade this runtime") as info:
        decode_header(frame)
    assert info.value.got == WIRE_VERSION + 1 and info.value.expected == WIRE_VERSION
    frame = msgpack.packb({VERSION_KEY: 0})
    with pytest.raises(WireVersionError, match="upgrade the peer"):
        decode_header(frame)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (b"\xc1", "not valid msgpack"),
        (msgpack.packb([1, 2]), "must be a msgpack map"),
        (msgpack.packb({"kind": "ask"}), "no 'wire' version key"),
        (msgpack.packb({VERSION_KEY: "1"}), "must be an int"),
        (msgpack.packb({VERSION_KEY: WIRE_VERSION}) + b"x", "not valid msgpack"),
    ],
)
def test_bad_headers(frame: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode_header(frame)


def test_out_of_range_int_is_a_codec_error() -> None:
    with pytest.raises(CodecError, match="out of range"):
        encode({}, [2**64])


def test_reserved_header_key_and_non_msgpack_header() -> None:
    with pytest.raises(CodecError, match="reserved"):
        encode({VERSION_KEY: 2})
    with pytest.raises(CodecError, match="plain msgpack"):
        encode({"t": torch.ones(1)})
    with pytest.raises(CodecError, match="keys must be strings"):
        encode({1: "x"})  # type: ignore[dict-item]


def _tensor_record(dtype: Any, shape: Any, data: Any) -> bytes:
    return msgpack.packb(msgpack.ExtType(2, msgpack.packb([dtype, shape, data])))


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([], "no body frame"),
        ([_tensor_record("float32", [4], 0)], "1 .*refers to buffer frame 0|has 0 buffer"),
        ([_tensor_record("float32", [4], 0), b"x" * 15], "has 15 bytes, dtype x shape needs 16"),
        ([_tensor_record("float32", [2], b"x" * 7)], "inline data has 7 bytes"),
        ([_tensor_record("float33", [2], b"x" * 8)], "unknown torch dtype"),
        ([_tensor_record("float32", [-1], b"")], "bad shape"),
        ([_tensor_record("float32", "ab", b"")], "bad shape"),
        ([_tensor_record("bool", [2], b"\x00\x02")], "other than 0 and 1"),
        ([msgpack.packb(None), b"extra"], "wrong frame count"),
        ([msgpack.packb([_t := msgpack.ExtType(2, msgpack.packb(["uint8", [1], 0]))] * 2), b"x"],
         "referenced twice"),
        ([msgpack.packb(msgpack.ExtType(99, b""))], "unknown type tag 99"),
        ([msgpack.packb(msgpack.ExtType(5, msgpack.packb(["nope", 1])))], "unknown extension"),
        ([msgpack.packb(msgpack.ExtType(4, msgpack.packb(["os.system", {}])))], "unknown wire type"),
        ([msgpack.packb(msgpack.ExtType(3, msgpack.packb(["|O8", [1], b"x" * 8, False])))],
         "unknown numpy dtype"),
        ([b"\x92\x01"], "not valid msgpack"),
        (["text"], "not a bytes-like frame"),
    ],
)  # fmt: skip
def test_bad_bodies(frames: list[Any], message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode_body(frames)


def test_max_bytes_refuses_oversized_messages() -> None:
    frames = encode({}, torch.zeros(100_000))
    with pytest.raises(CodecError, match="exceeds the limit of 1000 bytes"):
        decode_body(frames[1:], max_bytes=1000)
    assert decode_body(frames[1:], max_bytes=10**6).shape == (100_000,)


def test_deep_nesting_is_refused_on_both_sides() -> None:
    ok: Any = ()
    for _ in range(codec._MAX_DEPTH - 1):  # with the innermost (): _MAX_DEPTH levels
        ok = (ok,)
    assert same(roundtrip(ok), ok)
    with pytest.raises(CodecError, match="deeper than"):
        encode({}, (ok,))
    forged = msgpack.ExtType(1, msgpack.packb([]))
    for _ in range(2000):
        forged = msgpack.ExtType(1, msgpack.packb([forged]))
    with pytest.raises(CodecError, match="deeper"):
        decode_body([msgpack.packb(forged)])
    with pytest.raises(CodecError, match="nested too deeply"):
        decode_body([b"\x91" * 100_000 + b"\xc0"])


# ------------------------------------------------------------------------------ hypothesis

_tensor_st = st.builds(
    random_tensor,
    st.sampled_from(TORCH_DTYPES),
    st.lists(st.integers(0, 5), max_size=3).map(tuple),
    st.integers(0, 1000),
)
_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=40)
    | _tensor_st
    | st.builds(lambda b: np.frombuffer(b, np.uint8).copy(), st.binary(max_size=30))
)
_body_st = st.recursive(
    _leaf,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(
            st.text(max_size=8) | st.integers(-(2**63), 2**63 - 1), children, max_size=4
        )
        | st.builds(lambda s, x: Validated(abs(s)), st.integers(-100, 100), children)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_body_st, st.sampled_from([0, 16, 1 << 20]))
def test_random_bodies_roundtrip(body: Any, threshold: int) -> None:
    assert same(roundtrip(body, zero_copy_threshold=threshold), body)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=5))
def test_random_frames_raise_only_codec_error(frames: list[bytes]) -> None:
    if frames:
        with contextlib.suppress(CodecError):
            decode_header(frames[0])
    with contextlib.suppress(CodecError):
        decode_body(frames)


@settings(max_examples=300, deadline=None)
@given(_body_st, st.data())
def test_mutated_valid_messages_raise_only_codec_error(body: Any, data: st.DataObject) -> None:
    frames = [bytes(f) for f in encode({"kind": "ask"}, body, zero_copy_threshold=8)]
    i = data.draw(st.integers(0, len(frames) - 1))
    frame = bytearray(frames[i])
    action = data.draw(st.sampled_from(["flip", "truncate", "drop", "extra"]))
    if action == "flip" and frame:
        pos = data.draw(st.integers(0, len(frame) - 1))
        frame[pos] ^= data.draw(st.integers(1, 255))
        frames[i] = bytes(frame)
    elif action == "truncate":
        frames[i] = bytes(frame[: data.draw(st.integers(0, max(len(frame) - 1, 0)))])
    elif action == "drop":
        del frames[i]
    else:
        frames.append(data.draw(st.binary(max_size=16)))
    with contextlib.suppress(CodecError):
        decode_header(frames[0]) if frames else None
    with contextlib.suppress(CodecError):
        decode_body(frames[1:])
