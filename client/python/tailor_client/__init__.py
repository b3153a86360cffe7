"""tailor_client: the Python package of tailor.

- ``tailor_client.Client``: a typed client of tailord (submit, watch, wait,
  fetch, get, list, cancel, delete); failed calls raise TailorError
  subclasses named after the canonical codes (NotFound, PermissionDenied,
  InvalidArgument, ...).
- ``tailor_client.calibrate.collect``: tailor-hessian/1 calibration
  statistics for any PyTorch model (torch is imported only there).
- ``tailor_client.pb`` / ``tailor_client.pb_grpc``: the generated messages
  and stub of proto/tailor/v1/fusion_service.proto.
"""

from tailor_client import calibrate  # torch is imported lazily
from tailor_client._proto import fusion_service_pb2 as pb
from tailor_client._proto import fusion_service_pb2_grpc as pb_grpc
from tailor_client.client import KEEPALIVE, Client, job_name
from tailor_client.errors import (Aborted, AlreadyExists, Cancelled, DataLoss,
                                  DeadlineExceeded, FailedPrecondition,
                                  Internal, InvalidArgument, JobFailed,
                                  NotFound, OutOfRange, PermissionDenied,
                                  ResourceExhausted, TailorError,
                                  Unauthenticated, Unavailable, Unimplemented,
                                  Unknown)
from tailor_client.spec import load_job_file, spec_from_dict

__version__ = "0.1.0"

__all__ = [
    "Aborted", "AlreadyExists", "Cancelled", "Client", "DataLoss",
    "DeadlineExceeded", "FailedPrecondition", "Internal", "InvalidArgument",
    "JobFailed", "KEEPALIVE", "NotFound", "OutOfRange", "PermissionDenied",
    "ResourceExhausted", "TailorError", "Unauthenticated", "Unavailable",
    "Unimplemented", "Unknown", "calibrate", "job_name", "load_job_file",
    "pb", "pb_grpc", "spec_from_dict",
]
