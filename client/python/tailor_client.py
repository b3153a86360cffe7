#!/usr/bin/python3
"""A minimal Python client of tailord (Debian's python3-grpcio), the way a
pipeline calls it, with tailord's credentials: a bearer token and TLS /
mTLS (README.md, "Security").

Stubs: generate them from proto/tailor/v1/fusion_service.proto with
    python3 -m grpc_tools.protoc ...   (or protoc --python_out --grpc_out
    with grpc_python_plugin, as tests/CMakeLists.txt does)
and put their directory on PYTHONPATH.

    python3 tailor_client.py --server host:50051 --token-file alice.token \\
        --tls-ca ca.crt list
"""

import argparse
import os
import sys

import grpc
from tailor.v1 import fusion_service_pb2 as pb
from tailor.v1 import fusion_service_pb2_grpc as pb_grpc


# Keepalive matching tailord's (deploy/README.md, "Keepalive"): pings after
# 30 s of silence during calls (tailord accepts one every 10 s at most), so
# proxies do not cut an idle watch; quick reconnects after a restart.
KEEPALIVE = [
    ("grpc.keepalive_time_ms", 30000),
    ("grpc.keepalive_timeout_ms", 20000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_reconnect_backoff_ms", 5000),
]


class TailorClient:
    """One channel to tailord; every call carries the token, if any."""

    def __init__(self, server, token=None, tls_ca=None, tls_cert=None,
                 tls_key=None, tls_server_name=None):
        def read(path):
            if not path:
                return None
            with open(path, "rb") as f:
                return f.read()
        if bool(tls_cert) != bool(tls_key):
            raise ValueError("tls_cert and tls_key go together")
        if tls_ca or tls_cert or tls_server_name:
            creds = grpc.ssl_channel_credentials(
                root_certificates=read(tls_ca), private_key=read(tls_key),
                certificate_chain=read(tls_cert))
            options = KEEPALIVE + (
                [("grpc.ssl_target_name_override", tls_server_name)]
                if tls_server_name else [])
            self.channel = grpc.secure_channel(server, creds, options)
        else:
            self.channel = grpc.insecure_channel(server, KEEPALIVE)
        self.stub = pb_grpc.FusionServiceStub(self.channel)
        self.metadata = ((("authorization", "Bearer " + token),)
                         if token else None)

    def close(self):
        self.channel.close()

    def create(self, spec, request_id="", labels=None, timeout=60):
        return self.stub.CreateFusionJob(
            pb.CreateFusionJobRequest(spec=spec, request_id=request_id,
                                      labels=labels or {}),
            metadata=self.metadata, timeout=timeout)

    def get(self, name, timeout=30):
        return self.stub.GetFusionJob(pb.GetFusionJobRequest(name=name),
                                      metadata=self.metadata, timeout=timeout)

    def list(self, filter="", timeout=30):
        return self.stub.ListFusionJobs(
            pb.ListFusionJobsRequest(filter=filter), metadata=self.metadata,
            timeout=timeout).fusion_jobs

    def cancel(self, name, timeout=30):
        return self.stub.CancelFusionJob(
            pb.CancelFusionJobRequest(name=name), metadata=self.metadata,
            timeout=timeout)

    def delete(self, name, timeout=30):
        """Deletes a finished job (its outputs stay)."""
        self.stub.DeleteFusionJob(
            pb.DeleteFusionJobRequest(name=name), metadata=self.metadata,
            timeout=timeout)

    def watch(self, name, after=0, timeout=7 * 24 * 3600):
        """The events after `after`. On UNAVAILABLE, call again with the
        last sequence received to resume without gaps or repeats."""
        return self.stub.WatchFusionJob(
            pb.WatchFusionJobRequest(name=name, after_sequence=after),
            metadata=self.metadata, timeout=timeout)


def token_from(path):
    """The token in `path`, else $TAILOR_TOKEN, else None."""
    if path:
        with open(path) as f:
            return f.read().strip()
    return os.environ.get("TAILOR_TOKEN") or None


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", default=os.environ.get("TAILOR_SERVER",
                                                      "127.0.0.1:50051"))
    p.add_argument("--token-file")
    p.add_argument("--tls-ca")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--tls-server-name")
    p.add_argument("command", choices=["list", "get"])
    p.add_argument("name", nargs="?")
    a = p.parse_args()
    client = TailorClient(a.server, token_from(a.token_file), a.tls_ca,
                          a.tls_cert, a.tls_key, a.tls_server_name)
    try:
        if a.command == "list":
            for job in client.list():
                print(job.name, pb.State.Name(job.state), job.creator)
        else:
            print(client.get(a.name))
    except grpc.RpcError as e:
        print("error: %s: %s" % (e.code().name, e.details()), file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
