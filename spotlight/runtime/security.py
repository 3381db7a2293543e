"""CURVE on the transport's sockets: which sockets, the ZAP handler, refused handshakes.

Which sockets use CURVE is decided by where their traffic can travel
(``RuntimeConfig.curve``):

* ``None`` (default): the ROUTER uses CURVE when it binds beyond loopback; a DEALER
  uses it when it dials a host beyond loopback. A loopback-only run keeps the plain fast
  path, and a loopback-bound process that calls a remote cluster (the monitor, say)
  still encrypts what leaves the machine. A peer's advertised address must therefore
  be loopback exactly when it binds loopback (the config refuses the mix).
* ``True``: every socket of this runtime (tests and benchmarks force it on loopback).
* ``False``: none, even beyond loopback (logged as a warning at start: the token and
  every tensor then cross the network in clear text).

Map (per runtime, all on the event loop, no thread)::

    peer DEALER ──CURVE handshake──► our ROUTER ──ZAP request──► _ZapHandler (REP, inproc)
                                        │                          accepts only the cluster
                                        │                          key; first refusal of a
                                        │                          key logged, then counted
                                        └──monitor events──► _on_event: refused handshakes
                                           (no key, wrong key)  logged once per reason

Nothing reaches the ROUTER's reader (so no frame reaches an actor) before a handshake
succeeds: CURVE authenticates and encrypts below the message layer. A refused peer is
logged once (per key for ZAP refusals, per reason for failed handshakes, since libzmq
reports those without the peer's key) and then only counted in ``statistics()``:
ZeroMQ clients reconnect every 100 ms, and a log line per retry would bury the log.

Why our own ZAP handler rather than pyzmq's ``zmq.auth.AsyncioAuthenticator``: that one
runs a ``zmq.asyncio`` poller task and logs each decision at DEBUG level; ours is one
:class:`~spotlight.runtime.zsock.LoopSocket` callback (the same reader machinery as the
transport), compares one key, and owns the log-once policy and the counters.

Shutdown: :meth:`Security.close` removes the readers and closes the ZAP and monitor
sockets before the transport destroys its context.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from typing import Any
from urllib.parse import urlsplit

import zmq
from zmq.utils import z85

from spotlight.runtime.config import RuntimeConfig, is_loopback
from spotlight.runtime.keys import KEY_ENV, KEY_FILE_ENV, ClusterKey, resolve_key
from spotlight.runtime.zsock import LoopSocket

__all__ = ["ZAP_DOMAIN", "Security", "host_of"]

log = logging.getLogger("spotlight.runtime")
ZAP_DOMAIN = b"spotlight"
_ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by the ZAP spec (RFC 27), per context
_MAX_LOGGED_KEYS = 64
"""Distinct refused keys logged by name; past that only counted (a peer cycling keys
must not grow memory or the log without bound)."""
_FAILED = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "no_detail",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth",
}
_REASONS = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "the peer does not use CURVE (no cluster key?)",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "the peer's key is not this cluster's key",
    zmq.PROTOCOL_ERROR_ZMTP_KEY_EXCHANGE: "the peer's key exchange failed (foreign key?)",
}


def host_of(address: str) -> str:
    """``tcp://host:port`` -> ``host`` (brackets of an IPv6 literal removed)."""
    return urlsplit(address).hostname or ""


class Security:
    """The CURVE side of one transport: key, socket options, ZAP handler, refusals."""

    def __init__(self, ctx: zmq.Context[Any], config: RuntimeConfig) -> None:
        self.ctx = ctx
        self.config = config
        self._key: ClusterKey | None = None
        self._zap: LoopSocket | None = None
        self._monitor: LoopSocket | None = None
        self._router: zmq.Socket[Any] | None = None
        self._key_raw = b""
        self._logged_keys: set[bytes] = set()
        self._logged_reasons: set[str] = set()
        self.refused = asyncio.Event()
        """Set on every refusal; tests clear it and wait (no polling, no sleeps)."""
        self.stats = {
            "curve_router": False,
            "curve_dealers": 0,
            "plain_dealers": 0,
            "zap_accepted": 0,
            "zap_refused": 0,
            "handshakes_refused": 0,
        }
        if config.curve is False and not is_loopback(config.bind_host):
            log.warning(
                "curve=False while binding %s: the cluster token and every message cross the "
                "network in clear text",
                config.bind_host,
            )

    # -- policy ---------------------------------------------------------------------------

    def router_uses_curve(self) -> bool:
        curve = self.config.curve
        return (not is_loopback(self.config.bind_host)) if curve is None else curve

    def dealer_uses_curve(self, address: str) -> bool:
        curve = self.config.curve
        return (not is_loopback(host_of(address))) if curve is None else curve

    def key(self, why: str) -> ClusterKey:
        """The cluster key, resolved once; ``why`` says which socket needs it."""
        if self._key is None:
            cfg = self.config
            self._key = resolve_key(explicit=cfg.curve_secret_key, token=cfg.cluster_token)
            if self._key is None:
                raise ValueError(
                    f"{why} uses CURVE, which needs the cluster key: set ${KEY_FILE_ENV} to the "
                    f"file `spotlight cluster keys` wrote (or ${KEY_ENV}, or cluster_token to "
                    "derive it), or call only loopback peers"
                )
        return self._key

    def silence_hint(self, address: str) -> str:
        """Why a CURVE peer that never answered our hello may be silent (for PeerLost)."""
        if self._key is None or not self.dealer_uses_curve(address):
            return ""
        return (
            f"; it never answered our hello over CURVE: if it is up, it holds another cluster "
            f"key than ours (fingerprint {self._key.fingerprint}, {self._key.source})"
        )

    # -- sockets --------------------------------------------------------------------------

    def secure_router(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` a CURVE server behind our ZAP handler (before it binds), if the
        policy says so. The handler is bound first: libzmq lets every client in when no
        ZAP handler exists."""
        if not self.router_uses_curve():
            return
        key = self.key(f"binding {self.config.bind_host}")
        zap = self.ctx.socket(zmq.REP)
        zap.setsockopt(zmq.LINGER, 0)
        zap.bind(_ZAP_ENDPOINT)
        self._key_raw = z85.decode(key.public)  # ZAP hands us the client's key in binary
        self._zap = LoopSocket(zap, self._on_zap)
        sock.curve_secretkey = key.secret
        sock.curve_publickey = key.public
        sock.curve_server = True
        sock.zap_domain = ZAP_DOMAIN
        monitor = sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH
        )
        self._router = sock
        self._monitor = LoopSocket(monitor, self._on_event)
        self.stats["curve_router"] = True
        log.info("CURVE on for %s (cluster key %s)", self.config.bind_host, key.fingerprint)

    def secure_dealer(self, sock: zmq.Socket[Any], address: str) -> None:
        """Make ``sock`` a CURVE client of ``address`` (before it connects), if needed."""
        if not self.dealer_uses_curve(address):
            self.stats["plain_dealers"] += 1
            return
        key = self.key(f"the connection to {address}")
        sock.curve_serverkey = key.public  # every member serves with the cluster key
        sock.curve_publickey = key.public
        sock.curve_secretkey = key.secret
        self.stats["curve_dealers"] += 1

    # -- refusals -------------------------------------------------------------------------

    def _on_zap(self, frames: list[zmq.Frame]) -> None:
        """One ZAP request (RFC 27): version, id, domain, address, identity, mechanism,
        credentials. Accept exactly the cluster's public key over CURVE."""
        parts = [f.bytes for f in frames]
        if len(parts) < 6 or self._zap is None:
            return  # not a ZAP request: REP needs no reply to drop it
        version, request_id, domain, peer, _identity, mechanism = parts[:6]
        client_key = parts[6] if len(parts) > 6 else b""
        ok = mechanism == b"CURVE" and domain == ZAP_DOMAIN and client_key == self._key_raw
        status = (b"200", b"OK") if ok else (b"400", b"not a member of this cluster")
        self._zap.send_nowait([version, request_id, *status, b"", b""])
        if ok:
            self.stats["zap_accepted"] += 1
            return
        self.stats["zap_refused"] += 1
        shown = z85.encode(client_key).decode() if len(client_key) == 32 else "(none)"
        if client_key not in self._logged_keys and len(self._logged_keys) < _MAX_LOGGED_KEYS:
            self._logged_keys.add(client_key)
            log.warning(
                "refused a %s peer from %s: its key %s is not this cluster's key (further "
                "attempts with that key are counted in statistics()['security'], not logged)",
                mechanism.decode(errors="replace"),
                peer.decode(errors="replace"),
                shown[:12] + "...",
            )
        self.refused.set()

    def _on_event(self, frames: list[zmq.Frame]) -> None:
        """A monitor event of the ROUTER: a handshake that failed before or in ZAP."""
        if len(frames) < 2 or len(frames[0].bytes) != 6:
            return
        event, value = struct.unpack("=Hi", frames[0].bytes)
        kind = _FAILED.get(event)
        if kind is None:
            return
        self.stats["handshakes_refused"] += 1
        if kind != "auth":  # ZAP refusals were logged by _on_zap, with the key
            if kind == "no_detail":  # libzmq gives an errno here, e.g. a plain peer's EPIPE
                reason = "the peer did not complete a CURVE handshake (no cluster key?)"
            else:
                reason = _REASONS.get(value, f"CURVE handshake failed (protocol code {value:#x})")
            if reason not in self._logged_reasons:
                self._logged_reasons.add(reason)
                log.warning(
                    "refused a connection on %s: %s; members need the cluster key ($%s or "
                    "$%s). Further refusals for this reason are counted, not logged",
                    frames[1].bytes.decode(errors="replace"),
                    reason,
                    KEY_FILE_ENV,
                    KEY_ENV,
                )
        self.refused.set()

    def statistics(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.stats)
        if self._key is not None:
            out["key"] = {"fingerprint": self._key.fingerprint, "source": self._key.source}
        return out

    def close(self) -> None:
        """Stop the monitor and the ZAP handler (before the context is destroyed)."""
        if self._monitor is not None:
            if self._router is not None and not self._router.closed:
                with contextlib.suppress(zmq.ZMQError):  # closed first: monitor gone too
                    self._router.disable_monitor()
            self._monitor.close()
        if self._zap is not None:
            self._zap.close()
