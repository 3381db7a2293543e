"""Wire codec: a msgpack header, a msgpack body and raw buffer frames. No pickle.

A message is a list of ZeroMQ frames::

    frames[0]   msgpack map: the header (routing, kind, call id...) plus the wire version
    frames[1]   msgpack body; tensors/arrays appear as small extension records that name
                their dtype, shape and either inline bytes or the index of a buffer frame
    frames[2:]  raw buffers of large tensors/arrays, one per tensor, in C order

Why this shape: the header can be read (and the version checked) without touching the
body, so a router can reject or forward a message cheaply; large tensors never pass
through msgpack, so they are sent with ``copy=False`` straight from the tensor's memory
and received into a buffer torch/numpy can wrap without another copy.

Why no pickle: anything that unpickles bytes from a socket runs code chosen by whoever
can reach the socket. Instead, only a closed set of types can travel: plain msgpack
values, tuples, torch tensors, numpy arrays, dataclasses registered with
:func:`register_wire_type` and types registered with :func:`register_extension`. Classes
are found by their *registered name*, never imported by a name read from the wire.

Ownership and mutability (the contract the runtime relies on):

* ``encode`` returns memoryviews over the tensors' own storage for buffers at or above
  ``zero_copy_threshold``; each memoryview keeps its tensor alive. Mutating a tensor
  after encoding and before the frames are sent changes what is sent.
* ``decode_body`` returns **writable** tensors and arrays, always. When a buffer frame is
  writable and aligned (a received ``zmq.Frame``, a ``bytearray``) the decoded tensor
  shares its memory and keeps the frame alive: no copy. When it is read-only (``bytes``)
  or misaligned, it is copied once, so torch never wraps a read-only buffer (which would
  be undefined behaviour and raises torch's non-writable-buffer warning).
* Inline (small) tensors are always copied out of the body.

Every malformed input raises :class:`CodecError` naming the problem; nothing else
escapes ``decode_header``/``decode_body``.

Torch is imported lazily: ``import spotlight.runtime`` must stay cheap (torch takes
seconds to import) for processes that never send a tensor (notice watchers, the CLI).
Encoding needs no import at all (no object can be a ``torch.Tensor`` while torch is not
in ``sys.modules``); decoding imports torch at the first tensor record. That first
import blocks the event loop for seconds (and can outlast a short heartbeat window), so
a process that expects tensors should ``import torch`` before it starts serving.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import msgpack
import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "VERSION_KEY",
    "WIRE_VERSION",
    "CodecError",
    "WireVersionError",
    "decode_body",
    "decode_header",
    "encode",
    "register_extension",
    "register_wire_type",
]

WIRE_VERSION: int = 1
"""Bumped on any incompatible change to the header schema or body encoding."""

VERSION_KEY = "wire"
"""Header key the codec adds to every header and checks on every decode."""

_MAX_DEPTH = 100  # nesting of tuples/dataclasses/extensions; protects the C stack and us
_MAX_NDIM = 64

# msgpack extension codes of the body.
_EXT_TUPLE = 1
_EXT_TENSOR = 2
_EXT_NDARRAY = 3
_EXT_DATACLASS = 4
_EXT_EXTENSION = 5

T = TypeVar("T")


class CodecError(ValueError):
    """A message cannot be encoded or decoded; the text says what is wrong."""


class WireVersionError(CodecError):
    """The peer speaks another wire version: both sides must run the same Spotlight."""

    def __init__(self, got: int, expected: int = WIRE_VERSION) -> None:
        self.got = got
        self.expected = expected
        side = "this runtime" if got > expected else "the peer"
        super().__init__(
            f"peer speaks wire version {got}, this runtime speaks {expected}: upgrade {side} "
            "so both run the same spotlight version"
        )


# --------------------------------------------------------------------------------------
# dtype tables: wire names are stable strings, never parsed into arbitrary objects
# --------------------------------------------------------------------------------------

_TORCH_DTYPE_NAMES = [
    "bool",
    "uint8",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "complex64",
    "complex128",
    "float8_e4m3fn",
    "float8_e5m2",
    "float8_e4m3fnuz",
    "float8_e5m2fnuz",
]
_TORCH_DTYPES: dict[str, torch.dtype] = {}
_TORCH_DTYPE_TO_NAME: dict[torch.dtype, str] = {}


def _torch() -> Any:
    """The torch module, imported (and the dtype tables filled) on first use."""
    import torch

    if not _TORCH_DTYPES:  # filled whole, reverse table first: readers never see half
        table = {n: getattr(torch, n) for n in _TORCH_DTYPE_NAMES if hasattr(torch, n)}
        _TORCH_DTYPE_TO_NAME.update({dtype: n for n, dtype in table.items()})
        _TORCH_DTYPES.update(table)
    return torch


# numpy: plain numeric dtypes only (bool, ints, uints, floats, complex) in either byte order.
_NP_DTYPE_RE = re.compile(r"^[<>|][biufc][0-9]{1,2}$")


def _np_dtype_from_wire(text: Any) -> np.dtype[Any]:
    if not isinstance(text, str) or not _NP_DTYPE_RE.match(text):
        raise CodecError(f"unknown numpy dtype {text!r} on the wire")
    try:
        dtype = np.dtype(text)
    except TypeError as exc:
        raise CodecError(f"unknown numpy dtype {text!r} on the wire") from exc
    if dtype.kind not in "biufc" or dtype.hasobject:
        raise CodecError(f"numpy dtype {text!r} may not travel (numeric dtypes only)")
    return dtype


# --------------------------------------------------------------------------------------
# registries
# --------------------------------------------------------------------------------------

_WIRE_TYPES: dict[str, type] = {}
_WIRE_NAMES: dict[type, str] = {}


@dataclasses.dataclass(frozen=True)
class _Extension:
    cls: type
    tag: str
    to_wire: Callable[[Any], Any]
    from_wire: Callable[[Any], Any]


_EXT_BY_TAG: dict[str, _Extension] = {}
_EXT_BY_TYPE: dict[type, _Extension] = {}


def register_wire_type(cls: type[T] | None = None, *, name: str | None = None) -> Any:
    """Let a dataclass travel, under ``name`` (default ``module.QualName``).

    Use as ``@register_wire_type`` or ``@register_wire_type(name="stable.Name")``. Both
    sides must register the class; the receiver rebuilds it with ``cls(**fields)`` from
    its ``init`` fields, so ``__post_init__`` validation runs on the receiving side too.
    A stable explicit ``name`` lets a class move between modules without a wire break.
    """

    def register(klass: type[T]) -> type[T]:
        if not (isinstance(klass, type) and dataclasses.is_dataclass(klass)):
            raise ValueError(
                f"register_wire_type needs a dataclass, got {klass!r}; for other types use "
                "register_extension(cls, tag, to_wire, from_wire)"
            )
        wire_name = name if name is not None else f"{klass.__module__}.{klass.__qualname__}"
        if not isinstance(wire_name, str) or not wire_name:
            raise ValueError(f"wire type name must be a non-empty string, got {wire_name!r}")
        existing = _WIRE_TYPES.get(wire_name)
        if existing is not None and existing is not klass:
            raise ValueError(
                f"wire type name {wire_name!r} is already registered for {existing!r}; "
                f"pass name=... to register {klass!r} under another name"
            )
        _WIRE_TYPES[wire_name] = klass
        _WIRE_NAMES[klass] = wire_name
        return klass

    if cls is None:
        return register
    return register(cls)


def register_extension(
    cls: type,
    tag: str,
    to_wire: Callable[[Any], Any],
    from_wire: Callable[[Any], Any],
) -> None:
    """Let instances of ``cls`` travel as ``to_wire(obj)`` and come back as ``from_wire(x)``.

    ``to_wire`` must return something the codec can encode (plain values, tensors, other
    registered types). Both sides must register the same ``tag``. Exact type match:
    subclasses need their own registration, so an extension never captures more than
    intended.
    """
    if not isinstance(cls, type):
        raise ValueError(f"register_extension needs a class, got {cls!r}")
    if not isinstance(tag, str) or not tag:
        raise ValueError(f"extension tag must be a non-empty string, got {tag!r}")
    if not (callable(to_wire) and callable(from_wire)):
        raise ValueError("register_extension needs callable to_wire and from_wire")
    existing = _EXT_BY_TAG.get(tag)
    if existing is not None and existing.cls is not cls:
        raise ValueError(
            f"extension tag {tag!r} is already registered for {existing.cls!r}; "
            f"choose another tag for {cls!r}"
        )
    previous = _EXT_BY_TYPE.get(cls)
    if previous is not None and previous.tag != tag:
        del _EXT_BY_TAG[previous.tag]
    ext = _Extension(cls=cls, tag=tag, to_wire=to_wire, from_wire=from_wire)
    _EXT_BY_TAG[tag] = ext
    _EXT_BY_TYPE[cls] = ext


# --------------------------------------------------------------------------------------
# encoding
# --------------------------------------------------------------------------------------

_SUPPORTED = (
    "None, bool, int, float, str, bytes, list, tuple, dict, torch.Tensor, numpy.ndarray, "
    "numpy scalars, dataclasses registered with @register_wire_type, and types registered "
    "with register_extension"
)


class _Encoder:
    """One body encoding: collects buffer frames while msgpack walks the structure."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.buffers: list[memoryview] = []
        self.depth = 0

    def pack(self, obj: Any) -> bytes:
        if self.depth > _MAX_DEPTH:  # depth 0 is the body itself
            raise CodecError(
                f"body nests tuples/dataclasses/extensions deeper than {_MAX_DEPTH} levels"
            )
        self.depth += 1
        try:
            return msgpack.packb(obj, default=self.default, use_bin_type=True, strict_types=True)
        finally:
            self.depth -= 1

    def _data(self, flat_u8: memoryview) -> bytes | int:
        if flat_u8.nbytes >= self.threshold:
            self.buffers.append(flat_u8)
            return len(self.buffers) - 1
        return flat_u8.tobytes()

    def default(self, obj: Any) -> Any:
        ext = _EXT_BY_TYPE.get(type(obj))
        if ext is not None:
            try:
                wire = ext.to_wire(obj)
            except Exception as exc:
                raise CodecError(
                    f"extension {ext.tag!r} could not encode {type(obj).__name__}: {exc}"
                ) from exc
            return msgpack.ExtType(_EXT_EXTENSION, self.pack([ext.tag, wire]))
        torch = sys.modules.get("torch")  # not imported yet: obj cannot be a tensor
        if torch is not None and isinstance(obj, torch.Tensor):
            return self._tensor(obj)
        if isinstance(obj, np.ndarray):
            if type(obj) is not np.ndarray:
                raise CodecError(
                    f"cannot encode {type(obj).__name__} (a numpy.ndarray subclass); "
                    "convert it with numpy.asarray(...) first"
                )
            return self._ndarray(obj, scalar=False)
        if isinstance(obj, np.generic):
            return self._ndarray(np.asarray(obj), scalar=True)
        if isinstance(obj, tuple):
            if hasattr(obj, "_fields"):
                raise CodecError(
                    f"cannot encode namedtuple {type(obj).__qualname__}: use a dataclass "
                    "with @register_wire_type, or convert it with tuple(...)"
                )
            return msgpack.ExtType(_EXT_TUPLE, self.pack(list(obj)))
        wire_name = _WIRE_NAMES.get(type(obj))
        if wire_name is not None:
            fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}
            return msgpack.ExtType(_EXT_DATACLASS, self.pack([wire_name, fields]))
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            cls = type(obj)
            raise CodecError(
                f"cannot encode dataclass {cls.__module__}.{cls.__qualname__}: it is not "
                "registered; decorate it with @spotlight.runtime.codec.register_wire_type "
                "(on both sides) so it may travel"
            )
        # subclasses of plain containers/scalars (strict_types sends them here)
        if isinstance(obj, bool):
            return bool(obj)
        if isinstance(obj, int):
            return int(obj)
        if isinstance(obj, float):
            return float(obj)
        if isinstance(obj, str):
            return str(obj)
        if isinstance(obj, bytes | bytearray | memoryview):
            return bytes(obj)
        if isinstance(obj, dict):
            return dict(obj)
        if isinstance(obj, list):
            return list(obj)
        raise CodecError(
            f"cannot encode object of type {type(obj).__module__}.{type(obj).__qualname__}; "
            f"supported: {_SUPPORTED}"
        )

    def _tensor(self, tensor: torch.Tensor) -> msgpack.ExtType:
        torch = _torch()
        name = _TORCH_DTYPE_TO_NAME.get(tensor.dtype)
        if name is None:
            raise CodecError(
                f"torch dtype {tensor.dtype} cannot travel; supported: {sorted(_TORCH_DTYPES)}"
            )
        if tensor.layout != torch.strided:
            raise CodecError(
                f"only dense (strided) tensors can travel, got layout {tensor.layout}; "
                "call .to_dense() first"
            )
        if tensor.is_quantized:
            raise CodecError("quantized tensors cannot travel; dequantize them first")
        if tensor.device.type == "meta":
            raise CodecError("meta tensors carry no data and cannot travel")
        t = tensor.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.resolve_conj().resolve_neg().contiguous()
        # uint8 view of the flat storage: a numpy array whose base keeps `t` alive.
        flat_u8 = t.reshape(-1).view(torch.uint8).numpy()
        data = self._data(flat_u8.data)
        payload = [name, list(t.shape), data]
        return msgpack.ExtType(_EXT_TENSOR, self.pack(payload))

    def _ndarray(self, arr: np.ndarray, *, scalar: bool) -> msgpack.ExtType:
        if arr.dtype.kind not in "biufc" or arr.dtype.hasobject:
            raise CodecError(
                f"numpy dtype {arr.dtype} cannot travel; only bool, integer, float and "
                "complex arrays can"
            )
        # not np.ascontiguousarray: it turns 0-d arrays into 1-d ones
        a = arr if arr.flags.c_contiguous else arr.copy(order="C")
        flat_u8 = a.reshape(-1).view(np.uint8)
        data = self._data(flat_u8.data)
        payload = [a.dtype.str, list(a.shape), data, scalar]
        return msgpack.ExtType(_EXT_NDARRAY, self.pack(payload))


_packers = threading.local()


def _cached_packers() -> tuple[msgpack.Packer, msgpack.Packer]:
    """(header packer, plain-body packer) of this thread; building one costs ~1 us.

    The plain-body packer has no ``default``: with ``strict_types`` anything but exact
    plain types raises ``TypeError`` at once, so it never re-enters and never packs a
    tensor, tuple or dataclass. Per thread because a Packer is not thread-safe.
    """
    pair = getattr(_packers, "pair", None)
    if pair is None:
        pair = _packers.pair = (
            msgpack.Packer(use_bin_type=True),
            msgpack.Packer(use_bin_type=True, strict_types=True),
        )
    return pair


def encode(
    header: Mapping[str, Any], body: Any = None, *, zero_copy_threshold: int = 65536
) -> list[bytes | memoryview]:
    """Encode a message into frames ``[header, body, *buffers]``.

    Tensors/arrays of ``zero_copy_threshold`` bytes or more become their own frame, a
    memoryview over their (CPU, contiguous) memory; smaller ones are inlined in the body,
    where a separate frame would cost more than the copy.
    """
    if not isinstance(zero_copy_threshold, int) or zero_copy_threshold < 0:
        raise ValueError(
            f"zero_copy_threshold must be an int >= 0 (bytes), got {zero_copy_threshold!r}"
        )
    if not isinstance(header, Mapping):
        raise CodecError(f"header must be a mapping, got {type(header).__name__}")
    if not all(isinstance(key, str) for key in header):
        raise CodecError(f"header keys must be strings, got {sorted(map(repr, header))}")
    if VERSION_KEY in header:
        raise CodecError(f"header key {VERSION_KEY!r} is reserved for the wire version")
    head_packer, plain_packer = _cached_packers()
    try:
        head = head_packer.pack({VERSION_KEY: WIRE_VERSION, **header})
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"header is not plain msgpack data: {exc}") from exc
    try:  # fast path: a body of plain values only (most calls); same bytes as below
        return [head, plain_packer.pack(body)]
    except (TypeError, ValueError, OverflowError):
        pass  # tensors, tuples, dataclasses, subclasses or bad input: the full encoder
    encoder = _Encoder(zero_copy_threshold)
    try:
        packed = encoder.pack(body)
    except CodecError:
        raise
    except RecursionError as exc:
        raise CodecError("body is nested too deeply to encode") from exc
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"cannot encode body: {exc}") from exc
    return [head, packed, *encoder.buffers]


# --------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------


def _byte_view(frame: Any, what: str) -> memoryview:
    try:
        view = memoryview(frame)
    except TypeError as exc:
        raise CodecError(f"{what} is a {type(frame).__name__}, not a bytes-like frame") from exc
    if view.format != "B" or view.ndim != 1:
        if not view.c_contiguous:
            raise CodecError(f"{what} is not a contiguous buffer")
        view = view.cast("B")
    return view


def decode_header(frame0: bytes | memoryview) -> dict[str, Any]:
    """Decode and version-check frame 0; returns the header without the version key."""
    view = _byte_view(frame0, "header frame")
    try:
        header = msgpack.unpackb(view, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise CodecError(f"header frame is not valid msgpack: {exc}") from exc
    if not isinstance(header, dict):
        raise CodecError(f"header must be a msgpack map, got {type(header).__name__}")
    if VERSION_KEY not in header:
        raise CodecError(
            f"header has no {VERSION_KEY!r} version key: not a Spotlight message "
            "(or a peer from before versioning)"
        )
    version = header.pop(VERSION_KEY)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CodecError(f"header wire version must be an int, got {version!r}")
    if version != WIRE_VERSION:
        raise WireVersionError(version, WIRE_VERSION)
    return header


class _Decoder:
    """One body decoding: resolves buffer references against the frames it was given."""

    def __init__(self, buffers: list[memoryview]) -> None:
        self.buffers = buffers
        self.used = [False] * len(buffers)
        self.depth = 0

    def unpack(self, data: bytes | memoryview) -> Any:
        return msgpack.unpackb(
            data, ext_hook=self.ext_hook, raw=False, strict_map_key=False, use_list=True
        )

    def ext_hook(self, code: int, data: bytes) -> Any:
        if self.depth >= _MAX_DEPTH:
            raise CodecError(f"body nests deeper than {_MAX_DEPTH} levels")
        self.depth += 1
        try:
            return self._ext(code, data)
        finally:
            self.depth -= 1

    def _ext(self, code: int, data: bytes) -> Any:
        if code == _EXT_TUPLE:
            items = self.unpack(data)
            if not isinstance(items, list):
                raise CodecError("tuple record does not hold a list")
            return tuple(items)
        if code == _EXT_TENSOR:
            return self._tensor(self.unpack(data))
        if code == _EXT_NDARRAY:
            return self._ndarray(self.unpack(data))
        if code == _EXT_DATACLASS:
            return self._dataclass(self.unpack(data))
        if code == _EXT_EXTENSION:
            return self._extension(self.unpack(data))
        raise CodecError(f"unknown type tag {code} in body (wire version {WIRE_VERSION})")

    def _shape(self, shape: Any) -> tuple[int, ...]:
        if not isinstance(shape, list) or len(shape) > _MAX_NDIM:
            raise CodecError(f"bad shape {shape!r}: expected a list of at most {_MAX_NDIM} ints")
        for dim in shape:
            if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
                raise CodecError(f"bad shape {shape!r}: dims must be non-negative ints")
        return tuple(shape)

    def _bytes(self, data: Any, nbytes: int, what: str, align: int) -> np.ndarray:
        """A writable, aligned uint8 array of exactly ``nbytes``, from a frame or inline."""
        if isinstance(data, bytes):
            if len(data) != nbytes:
                raise CodecError(
                    f"{what}: inline data has {len(data)} bytes, dtype x shape needs {nbytes}"
                )
            return np.frombuffer(bytearray(data), dtype=np.uint8)
        if not isinstance(data, int) or isinstance(data, bool):
            raise CodecError(f"{what}: data must be inline bytes or a frame index")
        if not 0 <= data < len(self.buffers):
            raise CodecError(
                f"{what}: refers to buffer frame {data}, but the message has "
                f"{len(self.buffers)} buffer frame(s)"
            )
        if self.used[data]:
            raise CodecError(f"{what}: buffer frame {data} is referenced twice")
        self.used[data] = True
        view = self.buffers[data]
        if view.nbytes != nbytes:
            raise CodecError(
                f"{what}: buffer frame {data} has {view.nbytes} bytes, dtype x shape needs {nbytes}"
            )
        arr = np.frombuffer(view, dtype=np.uint8) if nbytes else np.empty(0, np.uint8)
        if not arr.flags.writeable or arr.ctypes.data % align:
            arr = arr.copy()  # never hand torch a read-only or misaligned buffer
        return arr

    def _tensor(self, payload: Any) -> torch.Tensor:
        if not isinstance(payload, list) or len(payload) != 3:
            raise CodecError("tensor record must be [dtype, shape, data]")
        name, shape_raw, data = payload
        torch = _torch()
        dtype = _TORCH_DTYPES.get(name) if isinstance(name, str) else None
        if dtype is None:
            raise CodecError(f"unknown torch dtype {name!r}; known: {sorted(_TORCH_DTYPES)}")
        shape = self._shape(shape_raw)
        itemsize = dtype.itemsize
        nbytes = math.prod(shape) * itemsize
        raw = self._bytes(data, nbytes, f"tensor {name}{list(shape)}", itemsize)
        if dtype == torch.bool and raw.size and int(raw.max()) > 1:
            raise CodecError("bool tensor holds bytes other than 0 and 1")
        if nbytes == 0:
            return torch.empty(shape, dtype=dtype)
        return torch.from_numpy(raw).view(dtype).reshape(shape)

    def _ndarray(self, payload: Any) -> np.ndarray | np.generic:
        if not isinstance(payload, list) or len(payload) != 4:
            raise CodecError("ndarray record must be [dtype, shape, data, scalar]")
        dtype_text, shape_raw, data, scalar = payload
        dtype = _np_dtype_from_wire(dtype_text)
        shape = self._shape(shape_raw)
        if not isinstance(scalar, bool) or (scalar and shape != ()):
            raise CodecError("ndarray record has a bad scalar flag")
        nbytes = math.prod(shape) * dtype.itemsize
        raw = self._bytes(data, nbytes, f"ndarray {dtype_text}{list(shape)}", dtype.alignment)
        if dtype.kind == "b" and raw.size and int(raw.max()) > 1:
            raise CodecError("bool array holds bytes other than 0 and 1")
        arr = raw.view(dtype).reshape(shape)
        return arr[()] if scalar else arr

    def _dataclass(self, payload: Any) -> Any:
        if not isinstance(payload, list) or len(payload) != 2:
            raise CodecError("dataclass record must be [name, fields]")
        name, fields = payload
        cls = _WIRE_TYPES.get(name) if isinstance(name, str) else None
        if cls is None:
            raise CodecError(
                f"unknown wire type {name!r}: register the dataclass with "
                "@register_wire_type on the receiving side too"
            )
        if not isinstance(fields, dict) or not all(isinstance(k, str) for k in fields):
            raise CodecError(f"wire type {name!r}: fields must be a map of names")
        try:
            return cls(**fields)
        except Exception as exc:  # the receiver's constructor/validation rejected it
            raise CodecError(f"wire type {name!r} rejected its fields: {exc}") from exc

    def _extension(self, payload: Any) -> Any:
        if not isinstance(payload, list) or len(payload) != 2:
            raise CodecError("extension record must be [tag, value]")
        tag, value = payload
        ext = _EXT_BY_TAG.get(tag) if isinstance(tag, str) else None
        if ext is None:
            raise CodecError(
                f"unknown extension tag {tag!r}: register it with register_extension on the "
                "receiving side too"
            )
        try:
            return ext.from_wire(value)
        except Exception as exc:
            raise CodecError(f"extension {tag!r} could not decode its value: {exc}") from exc


def decode_body(frames: Sequence[bytes | memoryview], *, max_bytes: int | None = None) -> Any:
    """Decode ``frames`` (the message from frame 1 on: body, then buffers).

    ``max_bytes`` bounds the total size of these frames; a larger message is refused
    before any of it is parsed.
    """
    if isinstance(frames, bytes | bytearray | memoryview | str) or not isinstance(frames, Sequence):
        raise CodecError(
            f"frames must be a sequence of frames (body, *buffers), got {type(frames).__name__}"
        )
    if len(frames) < 1:
        raise CodecError("message has no body frame (expected body, *buffers)")
    views = [_byte_view(f, f"frame {i + 1}") for i, f in enumerate(frames)]
    if max_bytes is not None:
        total = sum(v.nbytes for v in views)
        if total > max_bytes:
            raise CodecError(f"message of {total} bytes exceeds the limit of {max_bytes} bytes")
    decoder = _Decoder(views[1:])
    try:
        body = decoder.unpack(views[0])
    except CodecError:
        raise
    except (RecursionError, msgpack.StackError) as exc:
        raise CodecError("body is nested too deeply") from exc
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise CodecError(f"body frame is not valid msgpack: {type(exc).__name__}: {exc}") from exc
    unused = decoder.used.count(False)
    if unused:
        raise CodecError(
            f"wrong frame count: {len(decoder.buffers)} buffer frame(s) sent, "
            f"{len(decoder.buffers) - unused} referenced by the body"
        )
    return body
