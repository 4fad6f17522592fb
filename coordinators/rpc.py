"""Server-side plumbing every role's RPC handlers share: one way to answer, one error mapping.

A handler is a plain ``async def handle(request) -> reply``; :func:`unary` reads the request,
runs it, and turns our exceptions into gRPC status codes, so a bad argument is
INVALID_ARGUMENT with a message (never a crash), and a write refused by fencing is UNAVAILABLE
"not serving" (the client then looks for the new active).

Every UNAVAILABLE also carries a machine-readable :class:`Refusal` code in the trailing metadata
(:data:`REFUSAL_HEADER`): the client decides on it (wait for this member, look for another, or
report that a write's outcome is unknown), never on the words of the message, which are for people.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

import structlog
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from coordinators.deadline import caller_deadline
from coordinators.errors import CoordinatorError
from session import CorruptValue, EtcdUnavailable, LeaseNotFound, NotActive, SessionError, SessionLost

log = structlog.get_logger(__name__)

Req = TypeVar("Req")
Rep = TypeVar("Rep")


#: Initial-metadata keys on every reply: the answering process's server ID and term epoch.
SERVER_ID_HEADER = "x-milvus-server-id"
EPOCH_HEADER = "x-milvus-epoch"
#: Trailing-metadata key of a refused call's :class:`Refusal` code.
REFUSAL_HEADER = "x-milvus-refusal"
#: Trailing-metadata key of a refusal that knows where the ACTIVE member is: :class:`Redirect`.
REDIRECT_HEADER = "x-milvus-active"


@dataclass(frozen=True)
class Redirect:
    """Where a refusing member knows the ACTIVE member to be: the heir it handed its key to, or the
    holder it waits behind. A hint, never trusted as such: the member named answers only if it is
    ACTIVE (its own gate), and says who it is (``x-milvus-server-id``, ``x-milvus-epoch``)."""

    address: str
    server_id: int
    epoch: int

    def header(self) -> str:
        return f"{self.server_id};{self.epoch};{self.address}"

    @classmethod
    def parse(cls, raw: str) -> Redirect | None:
        """The redirect a header says, None when it is absent or malformed."""
        server_id, _, rest = raw.partition(";")
        epoch, _, address = rest.partition(";")
        if not (server_id.isdigit() and epoch.isdigit() and ":" in address):
            return None
        return cls(address, int(server_id), int(epoch))


class Refusal(StrEnum):
    """Why a call was refused with UNAVAILABLE, as the client reads it."""

    #: It holds the ACTIVE key and is loading its state: the right member, ask it again shortly.
    INITIALIZING = "initializing"
    #: A STANDBY, or a member that is not ACTIVE any more: look for the ACTIVE one.
    NOT_ACTIVE = "not_active"
    #: It is stopping: look for the ACTIVE one.
    STOPPING = "stopping"
    #: An etcd call of the handler failed: a write may or may not have been applied.
    METADATA_UNAVAILABLE = "metadata_unavailable"
    #: The right member, which could not complete the call now (a coordinator it calls did not
    #: answer, its keys changed under it); nothing was applied: ask it again later.
    RETRY_LATER = "retry_later"
    #: The ACTIVE member's serving lease ran out (etcd has not confirmed its term lately): it answers
    #: nothing until it has, or until another member takes over. Nothing was applied: ask again shortly,
    #: the same member or the new ACTIVE one. (A lease that runs out while a call is answered refuses
    #: it as ``metadata_unavailable``: a write may have been applied.)
    PAUSED = "paused"


_refusal: ContextVar[Refusal | None] = ContextVar("refusal", default=None)


def refuse(code: Refusal, message: str) -> GRPCError:
    """The UNAVAILABLE error to raise for ``code`` (the server puts the code in the trailers)."""
    _refusal.set(code)
    return GRPCError(Status.UNAVAILABLE, message)


def refusal_of_this_call() -> Refusal | None:
    """The code :func:`refuse` set for the call being answered in this task, if any."""
    return _refusal.get()


class RpcError(CoordinatorError):
    """An error the caller should see as a gRPC status, with a message meant for people; an
    UNAVAILABLE one says with its :class:`Refusal` what the caller should do."""

    status: Status = Status.INTERNAL
    refusal: Refusal | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(RpcError):
    status = Status.INVALID_ARGUMENT


class NotFound(RpcError):
    status = Status.NOT_FOUND


class AlreadyExists(RpcError):
    status = Status.ALREADY_EXISTS


class FailedPrecondition(RpcError):
    status = Status.FAILED_PRECONDITION


class NotServing(RpcError):
    """This process is not the ACTIVE one (or stopped being it mid-call)."""

    status = Status.UNAVAILABLE
    refusal = Refusal.NOT_ACTIVE

    def __init__(self, reason: str) -> None:
        super().__init__(f"not serving, reason: {reason}")


class RetryLater(RpcError):
    """The ACTIVE member could not complete the call now and applied nothing: the caller asks again
    later (a coordinator it depends on did not answer; its keys kept changing under it)."""

    status = Status.UNAVAILABLE
    refusal = Refusal.RETRY_LATER


class DependencyFailed(RpcError):
    """A coordinator this call depends on answered with an error that asking again will not fix: the
    caller gets that status and the dependency's message, at once."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status


def dependency_error(role: str, method: str, exc: Exception) -> RpcError:
    """Our answer when a call to ``role``'s ACTIVE member (through its client) failed with ``exc``.

    NOT_FOUND and INVALID_ARGUMENT stay what they are (the caller's request names something wrong);
    UNAVAILABLE, no ACTIVE member in time, or a lost reply, is :class:`RetryLater`; any other status
    (INTERNAL, ...) is passed on as it is, so the caller reports it at once instead of retrying.
    """
    if isinstance(exc, GRPCError):
        what = f"{role} {method}: {exc.status.name}: {exc.message}"
        if exc.status == Status.NOT_FOUND:
            return NotFound(exc.message or what)
        if exc.status == Status.INVALID_ARGUMENT:
            return InvalidArgument(f"{role}: {exc.message}")
        if exc.status == Status.UNAVAILABLE:
            return RetryLater(what)
        return DependencyFailed(exc.status, what)
    return RetryLater(f"{role} unavailable: {exc}")


async def unary(stream: Stream[Req, Rep], handle: Callable[[Req], Awaitable[Rep]]) -> None:
    """Answer one unary call with ``handle``; map every known failure to a gRPC status."""
    request = await stream.recv_message()
    if request is None:
        raise GRPCError(Status.INVALID_ARGUMENT, "empty request")
    try:
        with caller_deadline(stream.deadline.time_remaining() if stream.deadline is not None else None):
            reply = await handle(request)
    except RpcError as exc:
        if exc.refusal is not None:
            raise refuse(exc.refusal, exc.message) from exc
        raise GRPCError(exc.status, exc.message) from exc
    except (NotActive, SessionLost) as exc:  # the term or the session is over
        raise refuse(Refusal.NOT_ACTIVE, f"not serving, reason: {exc}") from exc
    except EtcdUnavailable as exc:
        raise refuse(Refusal.METADATA_UNAVAILABLE, f"metadata store unavailable: {exc}") from exc
    except LeaseNotFound as exc:  # the session's lease is gone: so is the term
        raise refuse(Refusal.NOT_ACTIVE, f"not serving, reason: {exc}") from exc
    except CorruptValue as exc:
        log.error("corrupt metadata", error=str(exc))
        raise GRPCError(Status.INTERNAL, str(exc)) from exc
    except SessionError as exc:  # etcd answered with an error asking again will not fix
        raise GRPCError(Status.INTERNAL, f"metadata store refused: {exc}") from exc
    await stream.send_message(reply)


def require(condition: bool, message: str) -> None:
    """Raise INVALID_ARGUMENT with ``message`` unless ``condition`` holds."""
    if not condition:
        raise InvalidArgument(message)


async def _states_answered_by_server(_self: object, _stream: Stream[Any, Any]) -> None:
    """Never reached: :class:`~coordinators.server.grpc_server.CoordinatorServer` registers its own
    ``GetComponentStates`` after the role's service."""
    raise GRPCError(Status.INTERNAL, "GetComponentStates is answered by the process server")


def unary_service(base: type[Any], handlers: Mapping[str, Callable[[Any], Awaitable[Any]]]) -> object:
    """A grpclib servicer of the generated ``base`` whose method ``name`` answers with ``handlers[name]``.

    One place turns a role's plain ``async def handle(request) -> reply`` functions into gRPC
    methods, so every role answers and maps errors the same way.
    """

    def method(handle: Callable[[Any], Awaitable[Any]]) -> Callable[[object, Stream[Any, Any]], Awaitable[None]]:
        async def answer(_self: object, stream: Stream[Any, Any]) -> None:
            await unary(stream, handle)

        return answer

    attrs: dict[str, Any] = {name: method(handle) for name, handle in handlers.items()}
    attrs.setdefault("GetComponentStates", _states_answered_by_server)
    missing = set(getattr(base, "__abstractmethods__", ())) - attrs.keys()
    if missing:
        raise TypeError(f"{base.__name__}: no handler for {', '.join(sorted(missing))}")
    service: object = type(f"{base.__name__}Service", (base,), attrs)()
    return service
