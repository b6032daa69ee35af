"""The one adapter around nats-py: connect, KV, streams, object store, acked publish.

Nothing of nats-py leaks past this package: callers get our errors (all
`BusError`s from `harmony_core.errors`, each raised `from` nats-py's) and our
small types. The bus knows nothing of heartbeats, logs or upgrades.

One `Bus` class, composed of one part per concern: the connection
(`connection`), KV (`kv`), streams (`streams`), the object store (`objects`),
plain messages (`messages`) and the operator's provisioning calls
(`provision`); `_errors` maps nats-py's errors.
"""

from __future__ import annotations

from harmony_core.bus.connection import BusState, NkeyLogin, backoff_delay
from harmony_core.bus.kv import KvEntry, KvOps
from harmony_core.bus.messages import Message, MessageOps
from harmony_core.bus.objects import ObjectOps
from harmony_core.bus.provision import Ensured, ProvisionOps
from harmony_core.bus.streams import PubAck, StreamOps

__all__ = [
    "Bus",
    "BusState",
    "Ensured",
    "KvEntry",
    "Message",
    "NkeyLogin",
    "PubAck",
    "backoff_delay",
]


class Bus(KvOps, StreamOps, ObjectOps, MessageOps, ProvisionOps):
    """A NATS connection that comes back by itself, with JetStream helpers."""
