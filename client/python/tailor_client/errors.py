"""Exceptions of tailor_client: one class per canonical gRPC status code.

Every error the client raises for a failed call, a bad spec or a damaged
result is a TailorError carrying the canonical code (``.code``, a
grpc.StatusCode) and the message (``.details``). Catch the subclass for one
condition (``except tailor_client.NotFound``) or TailorError for all.
InvalidArgument is also a ValueError (the client raises it for a spec it
cannot send). Local file problems (an existing output path, a missing job
file) are the standard OSError subclasses.
"""

from typing import Dict, Optional, Type

import grpc

# Bound on the details kept from a server message (tailord bounds its own;
# this guards against a proxy's page of HTML).
_MAX_DETAILS = 4096


class TailorError(Exception):
    """A failed tailord call or client-side check.

    Attributes:
        code: the canonical status code (grpc.StatusCode).
        details: the human-readable message (bounded in length).
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, details: str, code: Optional[grpc.StatusCode] = None):
        if len(details) > _MAX_DETAILS:
            details = details[:_MAX_DETAILS] + "... (truncated)"
        super().__init__(details)
        self.details = details
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return "%s: %s" % (self.code.name, self.details)


class Cancelled(TailorError):
    code = grpc.StatusCode.CANCELLED


class Unknown(TailorError):
    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(TailorError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(TailorError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(TailorError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(TailorError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(TailorError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(TailorError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(TailorError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(TailorError):
    code = grpc.StatusCode.ABORTED


class OutOfRange(TailorError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(TailorError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(TailorError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(TailorError):
    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(TailorError):
    """Also raised by fetch() when the bytes received do not have the size
    or SHA-256 the server announced."""
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(TailorError):
    code = grpc.StatusCode.UNAUTHENTICATED


class JobFailed(TailorError):
    """wait() found the job FAILED or CANCELLED (with check=True).

    ``.code`` is the job's error code (CANCELLED for a cancelled job),
    ``.details`` its error message and ``.job`` the finished FusionJob.
    """

    def __init__(self, job, code: grpc.StatusCode, details: str):
        super().__init__(details, code)
        self.job = job


_BY_CODE: Dict[grpc.StatusCode, Type[TailorError]] = {
    cls.code: cls
    for cls in (Cancelled, Unknown, InvalidArgument, DeadlineExceeded,
                NotFound, AlreadyExists, PermissionDenied, ResourceExhausted,
                FailedPrecondition, Aborted, OutOfRange, Unimplemented,
                Internal, Unavailable, DataLoss, Unauthenticated)
}

_BY_NUMBER: Dict[int, grpc.StatusCode] = {
    c.value[0]: c for c in grpc.StatusCode}


def status_code(number: int) -> grpc.StatusCode:
    """The grpc.StatusCode of a canonical code number (UNKNOWN if none)."""
    return _BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def error_for(code: grpc.StatusCode, details: str) -> TailorError:
    """The TailorError subclass instance for `code`."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return TailorError(details, code)
    return cls(details)


def from_rpc_error(error: grpc.RpcError) -> TailorError:
    """Converts a grpc.RpcError raised by a stub into a TailorError."""
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else None
    return error_for(code or grpc.StatusCode.UNKNOWN,
                     details or str(error) or "(no details)")
