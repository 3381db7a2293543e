"""The runtime's error vocabulary.

Errors are grouped by *who* caused them, so callers can decide what to do:

=====================  =============================================  ==========================
error                  meaning                                        typical reaction
=====================  =============================================  ==========================
``Timeout``            no answer within the deadline                  retry or give up
``PeerLost``           the remote runtime stopped answering           find another peer
``ActorStopped``       the actor (or this runtime) was stopped        re-resolve the actor
``StaleGeneration``    the ref names an older incarnation (fencing)   re-resolve the actor
``RemoteError``        the remote handler raised                      a bug or bad input there
``ActorNotFound``      no actor of that name at that address          check the name/address
``EndpointNotFound``   the actor has no such endpoint                 check the method name
``BadMessage``         malformed frames, wrong arguments, version     fix the sender
``MessageTooLarge``    over ``RuntimeConfig.max_message_bytes``       send less / raise limit
``NotAnEndpoint``      local attribute access to a non-endpoint       add ``@endpoint``
``HandshakeRejected``  the peer refused our cluster token             check ``cluster_token``
=====================  =============================================  ==========================

Remote exceptions never travel pickled: ``RemoteError`` carries the remote type
name, message and traceback *text* only.
"""

from __future__ import annotations

__all__ = [
    "ActorNotFound",
    "ActorStopped",
    "BadMessage",
    "EndpointNotFound",
    "HandshakeRejected",
    "MessageTooLarge",
    "NotAnEndpoint",
    "PeerLost",
    "RemoteError",
    "SpotlightError",
    "StaleGeneration",
    "Timeout",
]


class SpotlightError(Exception):
    """Base class of every error the runtime raises on purpose."""


class Timeout(SpotlightError, TimeoutError):
    """A deadline passed before the answer (or a send credit) arrived."""


class PeerLost(SpotlightError, ConnectionError):
    """The remote runtime missed its heartbeats, restarted, or went away."""


class ActorStopped(SpotlightError):
    """The target actor (or the local runtime) stopped before answering."""


class StaleGeneration(SpotlightError):
    """The message named an older generation of a restarted actor (a fencing token)."""


class ActorNotFound(SpotlightError, LookupError):
    """No actor with that name lives at that address."""


class EndpointNotFound(SpotlightError, LookupError):
    """The actor exists but has no endpoint of that name."""


class BadMessage(SpotlightError, ValueError):
    """The message could not be decoded or did not fit the endpoint (wrong arguments)."""


class MessageTooLarge(BadMessage):
    """The encoded message exceeds ``RuntimeConfig.max_message_bytes``."""


class HandshakeRejected(PeerLost):
    """The peer rejected our hello (wrong or missing cluster token)."""


class NotAnEndpoint(SpotlightError, AttributeError):
    """Attribute access on a ref names something that is not an ``@endpoint``."""


class RemoteError(SpotlightError):
    """The remote handler raised; carries the remote type name, message and traceback text."""

    def __init__(self, type_name: str, message: str, traceback_text: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        text = f"{self.type_name}: {self.message}"
        if self.traceback_text:
            text += "\n--- remote traceback ---\n" + self.traceback_text.rstrip()
        return text


# Errors that travel by name in an ``error`` reply and are rebuilt as the same class.
WIRE_ERRORS: dict[str, type[SpotlightError]] = {
    cls.__name__: cls
    for cls in (
        ActorNotFound,
        ActorStopped,
        BadMessage,
        EndpointNotFound,
        MessageTooLarge,
        StaleGeneration,
        Timeout,
    )
}
