"""Device identity on the operator side (ADR-023): the auth callout, the registry, enrollment.

`setup` makes a fleet's keys and nats-server config once (`auth init`); `callout`
answers nats-server's authorization requests (`auth serve`) with `decide`'s
pure decisions over the `registry`; `enroll` is the operator's enrollment
(tokens, approve, deny), `kick` revokes and rotates; `jwt` encodes NATS JWTs;
`cli` registers the commands.
"""

from __future__ import annotations

__all__: list[str] = []
