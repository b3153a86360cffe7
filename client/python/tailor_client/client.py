"""Client: a typed client of tailord's tailor.v1.FusionService.

    client = tailor_client.Client("tailord:50051", token=token, tls="ca.crt")
    job = client.submit("job.yaml")          # or a dict, or keyword args
    for event in client.watch(job): ...      # resumes by itself
    done = client.wait(job)                  # the finished FusionJob
    client.fetch(done, "patch", "out/task.patch.safetensors")

Every failed call raises a TailorError subclass (tailor_client.errors);
results are the generated messages (tailor_client.pb).
"""

import hashlib
import os
import random
import time
import uuid
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import grpc

from tailor_client import errors
from tailor_client._files import write_atomically
from tailor_client._proto import fusion_service_pb2 as pb
from tailor_client._proto import fusion_service_pb2_grpc as pb_grpc
from tailor_client.spec import SpecSource, to_spec

# Keepalive matching tailord's (deploy/README.md, "Keepalive"): pings after
# 30 s of silence during calls (tailord accepts one every 10 s at most), so
# proxies do not cut an idle watch; quick reconnects after a restart.
KEEPALIVE: List[Tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 30000),
    ("grpc.keepalive_timeout_ms", 20000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_reconnect_backoff_ms", 5000),
]

JobRef = Union[str, "pb.FusionJob"]
_KINDS = {"patch": pb.ReadJobResultRequest.PATCH,
          "report": pb.ReadJobResultRequest.REPORT}
_FINISHED = (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED)
# A watch call that lasted this long before UNAVAILABLE was connected: the
# reconnect clock starts afresh.
_CONNECTED_SECONDS = 5.0
_WATCH_CALL_SECONDS = 7 * 24 * 3600


def job_name(job: JobRef) -> str:
    """"fusionJobs/<id>" for a FusionJob, a name or a bare id."""
    name = job.name if isinstance(job, pb.FusionJob) else job
    if not isinstance(name, str) or not name:
        raise errors.InvalidArgument(
            "job: expected a FusionJob, 'fusionJobs/<id>' or an id, not %r"
            % (job,))
    return name if name.startswith("fusionJobs/") else "fusionJobs/" + name


def _read(path: Optional[str]) -> Optional[bytes]:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


class Client:
    """One channel to tailord; every call carries the bearer token, if any.

    Args:
        target: "host:port" of tailord (any gRPC target).
        token: a bearer token, sent as ``authorization: Bearer <token>``.
        tls: None for plaintext; a CA bundle path (PEM) to verify the server
            with; or a grpc.ChannelCredentials used as is.
        client_cert, client_key: PEM paths for mutual TLS (together, with a
            CA path as `tls`).
        server_name: the name to check the server certificate against
            instead of the target's host (grpc.ssl_target_name_override).
        options: extra channel options, after KEEPALIVE.
        timeout: the default deadline of unary calls, in seconds.

    Usable as a context manager (closes the channel). Thread-safe: calls
    may be made from several threads.
    """

    def __init__(self, target: str, token: Optional[str] = None,
                 tls: Union[None, str, os.PathLike,
                            grpc.ChannelCredentials] = None, *,
                 client_cert: Optional[str] = None,
                 client_key: Optional[str] = None,
                 server_name: Optional[str] = None,
                 options: Sequence[Tuple[str, Any]] = (),
                 timeout: float = 60.0):
        if bool(client_cert) != bool(client_key):
            raise errors.InvalidArgument(
                "client_cert and client_key go together (mutual TLS)")
        if (client_cert or server_name) and tls is None:
            raise errors.InvalidArgument(
                "client_cert/server_name need tls (a CA path or credentials)")
        if token is not None and (not isinstance(token, str) or not token or
                                  any(c in token for c in "\r\n")):
            raise errors.InvalidArgument(
                "token must be a non-empty string without line breaks")
        opts = list(KEEPALIVE) + list(options)
        if server_name:
            opts.append(("grpc.ssl_target_name_override", server_name))
        if tls is None:
            self._channel = grpc.insecure_channel(target, opts)
        else:
            if isinstance(tls, grpc.ChannelCredentials):
                if client_cert:
                    raise errors.InvalidArgument(
                        "client_cert/client_key go into the "
                        "ChannelCredentials given as tls")
                creds = tls
            else:
                creds = grpc.ssl_channel_credentials(
                    root_certificates=_read(os.fspath(tls)),
                    private_key=_read(client_key),
                    certificate_chain=_read(client_cert))
            self._channel = grpc.secure_channel(target, creds, opts)
        self._stub = pb_grpc.FusionServiceStub(self._channel)
        self._metadata = ((("authorization", "Bearer " + token),)
                          if token else None)
        self._timeout = timeout
        self.target = target

    def close(self) -> None:
        """Closes the channel; calls in flight fail with CANCELLED."""
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def stub(self) -> "pb_grpc.FusionServiceStub":
        """The generated stub, for calls this class does not wrap (pass
        ``metadata=client.metadata``)."""
        return self._stub

    @property
    def metadata(self):
        return self._metadata

    def _call(self, method, request, timeout: Optional[float], **kw):
        try:
            return method(request, metadata=self._metadata,
                          timeout=self._timeout if timeout is None
                          else timeout, **kw)
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e) from None

    # -- jobs ---------------------------------------------------------------

    def submit(self, spec: Optional[SpecSource] = None, *,
               labels: Optional[dict] = None, priority: int = 0,
               request_id: Optional[str] = None,
               timeout: Optional[float] = None,
               **fields: Any) -> "pb.FusionJob":
        """Creates a fusion job and returns it (QUEUED, or its current state
        when `request_id` names an earlier identical request).

        Args:
            spec: a dict of spec keys (see tailor_client.spec), the path of
                a YAML job file (as ``tailorctl submit -f``), a
                pb.FusionJobSpec, or None.
            labels: job labels (ListFusionJobs filters on them).
            priority: higher runs first.
            request_id: makes retries idempotent; by default a random one is
                made, so that submit() itself retries UNAVAILABLE (a server
                restarting) within `timeout` without creating two jobs.
            **fields: spec keys (``keep=0.1``, ``lambda_=0.5``) added to or
                overriding those of `spec`.

        Raises:
            InvalidArgument: a key or value the client or the server refuses
                (the message names it). PermissionDenied, Unauthenticated,
                ResourceExhausted, AlreadyExists (request_id reused with a
                different request), Unavailable.
        """
        request = pb.CreateFusionJobRequest(
            spec=to_spec(spec, **fields), priority=priority,
            labels=labels or {},
            request_id=request_id or "py-" + uuid.uuid4().hex)
        limit = self._timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        delay = 0.2
        while True:
            left = deadline - time.monotonic()
            try:
                return self._call(self._stub.CreateFusionJob, request,
                                  max(left, 0.001))
            except errors.Unavailable:
                if time.monotonic() + delay >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def get(self, job: JobRef, timeout: Optional[float] = None
            ) -> "pb.FusionJob":
        """The job's current state. NotFound for an unknown (or another
        principal's) job."""
        return self._call(self._stub.GetFusionJob,
                          pb.GetFusionJobRequest(name=job_name(job)), timeout)

    def list(self, filter: str = "", timeout: Optional[float] = None
             ) -> List["pb.FusionJob"]:
        """Every job visible to the caller matching `filter` (ListFusionJobs
        syntax, e.g. "state=RUNNING labels.team=vision"), all pages."""
        jobs, token = [], ""
        while True:
            page = self._call(self._stub.ListFusionJobs,
                              pb.ListFusionJobsRequest(filter=filter,
                                                       page_token=token),
                              timeout)
            jobs.extend(page.fusion_jobs)
            token = page.next_page_token
            if not token:
                return jobs

    def cancel(self, job: JobRef, timeout: Optional[float] = None
               ) -> "pb.FusionJob":
        """Requests cancellation; returns the job (finished or not yet)."""
        return self._call(self._stub.CancelFusionJob,
                          pb.CancelFusionJobRequest(name=job_name(job)),
                          timeout)

    def delete(self, job: JobRef, timeout: Optional[float] = None) -> None:
        """Deletes a finished job (its outputs stay). FailedPrecondition for
        an unfinished one."""
        self._call(self._stub.DeleteFusionJob,
                   pb.DeleteFusionJobRequest(name=job_name(job)), timeout)

    # -- events -------------------------------------------------------------

    def watch(self, job: JobRef, after_sequence: int = 0, *,
              reconnect_timeout: float = 120.0,
              timeout: Optional[float] = None) -> Iterator["pb.JobEvent"]:
        """Iterates over the job's events (pb.JobEvent) after
        `after_sequence`: its history, then live events, ending after the
        final one.

        When the stream breaks with UNAVAILABLE (the server drains or
        restarts, a proxy cuts it) or with a CANCELLED the server sent (a
        server shutting down cancels its open streams), the iterator reconnects by itself with
        after_sequence set to the last event received, so the sequence is
        gap-free and without repeats across server restarts. It gives up
        with Unavailable when no connection could be re-established for
        `reconnect_timeout` seconds (the message says which sequence to
        resume after). `timeout` bounds the whole watch (DeadlineExceeded).

        Raises:
            NotFound: unknown job, or deleted while watched.
            DataLoss: the server skipped a sequence number.
        """
        name = job_name(job)
        if isinstance(after_sequence, bool) or not isinstance(
                after_sequence, int) or after_sequence < 0:
            raise errors.InvalidArgument(
                "after_sequence must be an integer >= 0")
        last = after_sequence
        end = None if timeout is None else time.monotonic() + timeout
        lost_since = None  # monotonic time of the first failed attempt
        delay = 0.1
        while True:
            left = _WATCH_CALL_SECONDS if end is None else end - time.monotonic()
            if left <= 0:
                raise errors.DeadlineExceeded(
                    "watch of %s: timeout after sequence %d" % (name, last))
            started = time.monotonic()
            received = False
            call = self._stub.WatchFusionJob(
                pb.WatchFusionJobRequest(name=name, after_sequence=last),
                metadata=self._metadata, timeout=left)
            try:
                for event in call:
                    if event.sequence <= last:
                        continue  # already delivered
                    if event.sequence != last + 1:
                        raise errors.DataLoss(
                            "watch of %s: event %d after %d (a gap)" %
                            (name, event.sequence, last))
                    last = event.sequence
                    received = True
                    yield event
                return
            except grpc.RpcError as e:
                # CANCELLED here is the server's (this call is cancelled
                # only below, after the loop): a server shutting down
                # cancels the streams its drain did not end with
                # UNAVAILABLE. Both are a lost stream, resumed.
                if e.code() not in (grpc.StatusCode.UNAVAILABLE,
                                    grpc.StatusCode.CANCELLED):
                    raise errors.from_rpc_error(e) from None
                now = time.monotonic()
                if (lost_since is None or received or
                        now - started >= _CONNECTED_SECONDS):
                    lost_since, delay = now, 0.1
                if now - lost_since >= reconnect_timeout:
                    raise errors.Unavailable(
                        "watch of %s: gave up reconnecting after %g s (%s); "
                        "resume with after_sequence=%d" %
                        (name, reconnect_timeout, e.details(), last)) from None
                self._wait_ready(min(lost_since + reconnect_timeout, end or
                                     float("inf")), delay)
                delay = min(delay * 2, 2.0)
            finally:
                call.cancel()

    def _wait_ready(self, until: float, delay: float) -> None:
        """Sleeps `delay` (jittered), then waits until the channel is ready
        or `until` (monotonic) passes."""
        time.sleep(delay * (0.5 + random.random()))
        left = until - time.monotonic()
        if left <= 0:
            return
        try:
            grpc.channel_ready_future(self._channel).result(timeout=left)
        except grpc.FutureTimeoutError:
            pass

    def wait(self, job: JobRef, *, timeout: Optional[float] = None,
             check: bool = True, reconnect_timeout: float = 120.0,
             on_event=None) -> "pb.FusionJob":
        """Waits for the job to finish and returns it (a pb.FusionJob in
        SUCCEEDED, FAILED or CANCELLED), following watch() -- so across
        server restarts.

        Args:
            timeout: seconds to wait at most (DeadlineExceeded); None: no
                limit.
            check: raise JobFailed for a FAILED or CANCELLED job (its
                ``.code`` the job's error code, ``.job`` the job).
            on_event: called with each pb.JobEvent (progress reporting).
        """
        name = job_name(job)
        end = None if timeout is None else time.monotonic() + timeout
        for event in self.watch(name, reconnect_timeout=reconnect_timeout,
                                timeout=timeout):
            if on_event is not None:
                on_event(event)
        left = None if end is None else max(end - time.monotonic(), 1.0)
        done = self.get(name, timeout=left)
        if done.state not in _FINISHED:
            raise errors.Internal("watch of %s ended but the job is %s" %
                                  (name, pb.State.Name(done.state)))
        if check and done.state == pb.CANCELLED:
            raise errors.JobFailed(done, grpc.StatusCode.CANCELLED,
                                   "%s was cancelled" % name)
        if check and done.state == pb.FAILED:
            raise errors.JobFailed(
                done, errors.status_code(done.error_code),
                "%s failed: %s" % (name, done.error_message))
        return done

    # -- results ------------------------------------------------------------

    def fetch(self, job: JobRef, kind: str, path: Optional[str] = None, *,
              overwrite: bool = False, timeout: Optional[float] = 3600.0
              ) -> Union[bytes, str]:
        """Downloads a result of a SUCCEEDED job: kind "patch" (the stitched
        patch file) or "report" (the JSON report).

        The bytes are checked against the size and SHA-256 the server
        announces (DataLoss when they differ, or when the server finds the
        file changed since the job wrote it). Without `path`, returns the
        bytes (held in memory). With `path`, writes them atomically -- a
        hidden temporary file beside it, fsynced, then renamed onto `path`
        (never replacing an existing file unless `overwrite`; then the
        directory is fsynced) -- and returns `path`; on any error nothing
        is left behind.

        Raises:
            InvalidArgument: bad kind. FailedPrecondition: the job has not
            succeeded or has no such result. DataLoss, ResourceExhausted
            (the server's result streams are busy: retry later),
            FileExistsError (path exists, overwrite False).
        """
        if kind not in _KINDS:
            raise errors.InvalidArgument(
                "kind must be 'patch' or 'report', not %r" % (kind,))
        name = job_name(job)
        request = pb.ReadJobResultRequest(name=name, kind=_KINDS[kind])
        label = "%s of %s" % (kind, name)
        if path is None:
            parts: List[bytes] = []
            self._receive(request, label, parts.append, timeout)
            return b"".join(parts)
        path = os.fspath(path)
        if not overwrite and os.path.lexists(path):
            raise FileExistsError("%s already exists (overwrite=False)" % path)
        write_atomically(
            path, lambda f: self._receive(request, label, f.write, timeout),
            tag="tailor-fetch", overwrite=overwrite)
        return path

    def _receive(self, request, label: str, sink, timeout) -> None:
        """Streams ReadJobResult into sink(bytes), checking offsets, the
        total size and the SHA-256."""
        digest = hashlib.sha256()
        size, total, announced = 0, None, None
        call = self._stub.ReadJobResult(request, metadata=self._metadata,
                                        timeout=timeout)
        try:
            for chunk in call:
                if chunk.offset != size:
                    raise errors.DataLoss("%s: chunk at offset %d, expected "
                                          "%d" % (label, chunk.offset, size))
                if total is None:
                    total = chunk.total_size
                elif chunk.total_size != total:
                    raise errors.DataLoss("%s: total size changed from %d to "
                                          "%d" % (label, total,
                                                  chunk.total_size))
                size += len(chunk.data)
                if size > total:
                    raise errors.DataLoss("%s: more than the announced %d "
                                          "bytes" % (label, total))
                digest.update(chunk.data)
                sink(chunk.data)
                if chunk.sha256:
                    announced = chunk.sha256
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e) from None
        finally:
            call.cancel()
        if total is None:
            raise errors.DataLoss("%s: the server sent no data" % label)
        if size != total:
            raise errors.DataLoss("%s: received %d of %d bytes" %
                                  (label, size, total))
        if announced is None:
            raise errors.DataLoss("%s: the server sent no SHA-256" % label)
        if digest.hexdigest() != announced:
            raise errors.DataLoss(
                "%s: SHA-256 %s of the %d bytes received differs from the "
                "server's %s" % (label, digest.hexdigest(), size,
                                 announced[:64]))
