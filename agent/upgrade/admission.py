"""May this device act on this signed request? One answer for both sides. Pure: no I/O.

The agent asks before it downloads anything; the root-side switch asks again,
on facts it gathered itself, because it trusts nothing the agent wrote. Both ask
the same function, so the two can never drift apart: the envelope's size, its
DSSE signature by a trusted key, then every manifest check (`checks`) against
the device's facts (`CheckContext`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from agent.upgrade.checks import CheckContext, check_request
from harmony_core.contracts import UpgradeRequest
from harmony_core.envelope import VerifyingKey, verify_envelope
from harmony_core.errors import UpgradeRejectedError

__all__ = ["RequestRefusedError", "admit"]


class RequestRefusedError(UpgradeRejectedError):
    """A request whose signature verified but which this device must not act on.

    It carries the request, so the refusal can be reported (and remembered)
    under the request's id and target version.
    """

    def __init__(self, request: UpgradeRequest, reason: str) -> None:
        super().__init__(reason)
        self.request = request


def admit(
    envelope: bytes,
    keys: Mapping[str, VerifyingKey],
    ctx: CheckContext,
    key_problems: Sequence[str] = (),
) -> UpgradeRequest:
    """The request in `envelope` if this device may act on it.

    Raises UpgradeRejectedError with the first reason a person understands:
    RequestRefusedError (with the request) once the signature verified, the
    plain UpgradeRejectedError before that (no usable key, too large, not DSSE,
    too many signatures, no trusted signature, not an UpgradeRequest).
    `key_problems` are the key files `keys.load_trusted_keys` refused: with no
    key left they are the reason; an unverified request names them too, since
    it may be signed by a refused key. CPU-bound (signature checks, bounded by
    envelope.MAX_SIGNATURES): an event loop calls it in a worker thread.
    """
    if key_problems and not keys:
        raise UpgradeRejectedError(f"no usable trusted key: {'; '.join(key_problems)}")
    try:
        request = verify_envelope(envelope, keys).request
    except UpgradeRejectedError as e:
        if key_problems:
            raise UpgradeRejectedError(f"{e}; refused keys: {'; '.join(key_problems)}") from e
        raise
    if reasons := check_request(request, ctx):
        raise RequestRefusedError(request, reasons[0])
    return request
