"""RuntimeConfig: every knob of the runtime, timing included, in one validated place.

Tests shrink the timing knobs (for example ``heartbeat_s=0.1``) instead of sleeping.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from spotlight.runtime.keys import key_from_secret

__all__ = ["TOKEN_ENV", "RuntimeConfig"]

TOKEN_ENV = "SPOTLIGHT_CLUSTER_TOKEN"
"""Environment variable every process of a cluster reads ``cluster_token`` from."""

_LOOPBACK_NAMES = {"localhost"}


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
    """Configuration of one :class:`~spotlight.runtime.Runtime`."""

    bind_host: str = "127.0.0.1"
    """Interface the ROUTER binds. Anything beyond loopback requires ``cluster_token``."""
    port: int = 0
    """TCP port to bind; 0 picks a free one (see ``Runtime.address``)."""
    advertise_host: str | None = None
    """Host others should dial (defaults to ``bind_host``; set it when binding 0.0.0.0)."""
    cluster_token: str | None = field(default=None, repr=False)
    """Shared secret peers prove in the hello handshake; required off loopback."""
    curve: bool | None = None
    """CURVE (encryption and authentication, see ``security.py``). ``None``: on for a
    ROUTER bound beyond loopback and for connections to hosts beyond loopback, off on
    loopback (the fast path); ``True``: on for every socket; ``False``: off (warned)."""
    curve_secret_key: str | None = field(default=None, repr=False)
    """The cluster's Z85 CURVE secret key. ``None``: ``$SPOTLIGHT_CLUSTER_KEY``, else the
    file named by ``$SPOTLIGHT_CLUSTER_KEY_FILE``, else derived from ``cluster_token``."""
    max_message_bytes: int = 256 * 1024 * 1024
    """Largest message (all frames together) accepted or sent."""
    send_hwm: int = 1000
    """ZeroMQ send high-water mark (messages queued per connection)."""
    recv_hwm: int = 1000
    """ZeroMQ receive high-water mark."""
    credit_window: int = 64
    """Messages in flight per (peer, actor) before ``tell``/``ask`` wait for credit."""
    stream_window: int = 16
    """Stream items a producer may send ahead of the consumer."""
    zero_copy_threshold: int = 65536
    """Tensors/arrays at least this large are sent without a copy."""
    # -- timing knobs (all of them live here) ------------------------------------
    heartbeat_s: float = 1.0
    """Period of heartbeats on every connection."""
    missed_heartbeats: int = 3
    """A peer silent for ``heartbeat_s * missed_heartbeats`` is lost."""
    ask_timeout_s: float = 30.0
    """Default deadline of ``ask``, of each ``stream`` item, and of ``lookup``."""
    tell_timeout_s: float = 30.0
    """Default deadline for a ``tell`` to obtain a send credit."""
    send_timeout_s: float = 10.0
    """Deadline for handing one message to ZeroMQ when its queue is full."""
    stop_timeout_s: float = 5.0
    """Deadline for an actor's ``on_stop`` hook and for runtime shutdown steps."""

    def __post_init__(self) -> None:
        if not is_loopback(self.bind_host) and not self.cluster_token:
            raise ValueError(
                f"bind_host={self.bind_host!r} accepts connections from other machines, so "
                "anyone who can reach the port could call your actors; set "
                "cluster_token='<shared secret>' (peers must present it) or bind 127.0.0.1"
            )
        if self.curve is None and (
            self.advertise_host is not None
            and is_loopback(self.advertise_host) != is_loopback(self.bind_host)
        ):
            raise ValueError(
                f"bind_host={self.bind_host!r} with advertise_host={self.advertise_host!r}: "
                "CURVE follows loopback-ness (on beyond loopback), so peers dialing the "
                "advertised address would pick the wrong mechanism; advertise an address of "
                "the same kind, or set curve=True/False explicitly"
            )
        if self.curve_secret_key is not None:
            key_from_secret(self.curve_secret_key, "RuntimeConfig.curve_secret_key")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port={self.port} is not a TCP port; valid: 0 (free) .. 65535")
        for name in ("max_message_bytes", "send_hwm", "recv_hwm", "credit_window", "stream_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.missed_heartbeats < 1:
            raise ValueError(f"missed_heartbeats={self.missed_heartbeats} must be >= 1")
        for name in (
            "heartbeat_s",
            "ask_timeout_s",
            "tell_timeout_s",
            "send_timeout_s",
            "stop_timeout_s",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)} must be > 0 seconds")

    @property
    def liveness_s(self) -> float:
        """Silence after which a peer counts as lost."""
        return self.heartbeat_s * self.missed_heartbeats
