"""The actor runtime: actors, refs, ZeroMQ transport, supervision. Knows nothing of ML.

See ``actor.py`` for the error contract and ``transport.py`` for the wire map.
"""

from spotlight.runtime.actor import Actor, ActorRef, endpoint
from spotlight.runtime.config import RuntimeConfig
from spotlight.runtime.peers import PeerEvent
from spotlight.runtime.runtime import Runtime
from spotlight.runtime.signals import run
from spotlight.runtime.supervision import RestartPolicy

__all__ = [
    "Actor",
    "ActorRef",
    "PeerEvent",
    "RestartPolicy",
    "Runtime",
    "RuntimeConfig",
    "endpoint",
    "run",
]
