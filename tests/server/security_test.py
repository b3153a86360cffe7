#!/usr/bin/python3
"""Issue #14 against real tailord processes, with Debian's python3-grpcio as
a pipeline would call it; certificates are made here with the openssl CLI.

Server A: plaintext loopback, bearer tokens (reloaded), a metrics token.
Server B: TLS with client certificates required (mTLS) plus tokens; its
certificate is rotated while it runs. Also: a non-loopback --listen without
authentication is refused.

Environment (set by CTest): TAILORD, TAILORCTL, PYTHONPATH (the stubs).
"""

import hashlib
import http.client
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import unittest

import grpc
from tailor.v1 import fusion_service_pb2 as pb

import tailor_client  # the package client/python (on PYTHONPATH)
from tailor.v1 import fusion_service_pb2_grpc as pb_grpc

ALICE = "alice-token-8f0c2d1e9b7a"
BOB = "bob-token-1a2b3c4d5e6f"
ROOT = "root-token-aa55aa55aa55"
CAROL = "carol-token-7e7e7e7e7e7e"
DAVE = "dave-token-4d4d4d4d4d4d"
METRICS = "metrics-token-3c3c3c3c3c"
SECRETS = [ALICE, BOB, ROOT, CAROL, DAVE, METRICS]
DEADLINE = 120  # seconds: polls on a loaded 2-core box


def sha(token):
    return hashlib.sha256(token.encode()).hexdigest()


def safetensors(tensors):
    header, data = {}, b""
    for name, rows, cols, values in tensors:
        blob = struct.pack("<%df" % len(values), *values)
        header[name] = {"dtype": "F32", "shape": [rows, cols],
                        "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def write_atomically(path, data):
    with open(path + ".tmp", "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    os.replace(path + ".tmp", path)


def openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
            name + ".key", "-out", name + ".pem", "-days", "2", "-subj",
            "/CN=" + name, "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def make_cert(d, name, ca, cn, san, usage):
    with open(os.path.join(d, name + ".ext"), "w") as f:
        f.write("basicConstraints=CA:FALSE\nextendedKeyUsage=%s\n" % usage)
        if san:
            f.write("subjectAltName=%s\n" % san)
    openssl("req", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
            name + ".key", "-out", name + ".csr", "-subj", "/CN=" + cn,
            cwd=d)
    openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem",
            "-CAkey", ca + ".key", "-set_serial",
            str(int.from_bytes(os.urandom(8), "big")), "-days", "2",
            "-out", name + ".pem", "-extfile", name + ".ext", cwd=d)


def read(path):
    with open(path, "rb") as f:
        return f.read()


class Tailord:
    """tailord on loopback with its stderr in a file."""

    def __init__(self, d, tag, args):
        self.ready = os.path.join(d, tag + ".ready.json")
        self.log_path = os.path.join(d, tag + ".log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [os.environ["TAILORD"], "--listen", "127.0.0.1:0",
             "--metrics-listen", "127.0.0.1:0", "--data-dir",
             os.path.join(d, tag + "-data"), "--allowed-root", d,
             "--ready-file", self.ready] + args, stderr=self.log)
        end = time.monotonic() + DEADLINE
        while not os.path.exists(self.ready):
            if self.proc.poll() is not None:
                raise RuntimeError("tailord %s exited early:\n%s" %
                                   (tag, read(self.log_path).decode()))
            if time.monotonic() > end:
                raise RuntimeError("tailord %s did not start" % tag)
            time.sleep(0.02)
        with open(self.ready) as f:
            ports = json.load(f)
        self.port, self.metrics_port = ports["grpc_port"], ports["metrics_port"]
        self.address = "127.0.0.1:%d" % self.port

    def text(self):
        return read(self.log_path).decode(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def bearer(token):
    return (("authorization", "Bearer " + token),)


class SecurityTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="tailor-sec-")
        d = cls.d = cls.tmp.name
        w = [0.1 * i for i in range(16)]
        os.mkdir(os.path.join(d, "dave"))
        for sub, values in (("base", w), ("ft", [v + 0.05 for v in w])):
            for where in (d, os.path.join(d, "dave")):
                os.mkdir(os.path.join(where, sub))
                with open(os.path.join(where, sub, "model.safetensors"),
                          "wb") as f:
                    f.write(safetensors([("m.proj.weight", 4, 4, values)]))
        make_ca(d, "ca")
        make_ca(d, "other-ca")
        make_cert(d, "server", "ca", "tailord",
                  "DNS:localhost,IP:127.0.0.1", "serverAuth")
        make_cert(d, "rotated", "other-ca", "tailord-rotated",
                  "DNS:localhost,IP:127.0.0.1", "serverAuth")
        make_cert(d, "client", "ca", "ignored-cn", "DNS:alice.clients",
                  "clientAuth")
        make_cert(d, "rogue", "other-ca", "rogue", "DNS:alice.clients",
                  "clientAuth")
        cls.tokens = os.path.join(d, "tokens")
        write_atomically(cls.tokens, "# test tokens\n%s alice\n%s bob\n"
                         "%s root admin\n%s dave root=%s\n" %
                         (sha(ALICE), sha(BOB), sha(ROOT), sha(DAVE),
                          os.path.join(d, "dave")))
        write_atomically(os.path.join(d, "metrics-tokens"),
                         "%s prometheus\n" % sha(METRICS))
        cls.a = Tailord(d, "a", [
            "--auth-token-file", cls.tokens, "--auth-reload-interval", "1",
            "--metrics-token-file", os.path.join(d, "metrics-tokens")])
        # Server B serves files that are rotated later: copies.
        shutil.copy(os.path.join(d, "server.pem"), os.path.join(d, "b.pem"))
        shutil.copy(os.path.join(d, "server.key"), os.path.join(d, "b.key"))
        cls.b = Tailord(d, "b", [
            "--tls-cert", os.path.join(d, "b.pem"), "--tls-key",
            os.path.join(d, "b.key"), "--tls-client-ca",
            os.path.join(d, "ca.pem"), "--auth-token-file", cls.tokens,
            "--auth-reload-interval", "1", "--reflection=false"])
        cls.channel = grpc.insecure_channel(cls.a.address)
        cls.stub = pb_grpc.FusionServiceStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.a.stop()
        cls.b.stop()
        cls.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.d, name)

    def spec(self, tag):
        return pb.FusionJobSpec(
            pretrained=self.path("base"),
            tasks=[pb.TaskSpec(finetuned=self.path("ft"))],
            method=pb.METHOD_TASK_ARITHMETIC,
            out=self.path(tag + ".out"), device="cpu")

    def create(self, stub, token, tag, **kw):
        return stub.CreateFusionJob(
            pb.CreateFusionJobRequest(spec=self.spec(tag), **kw),
            metadata=bearer(token) if token else None, timeout=60)

    def wait_done(self, stub, name, token):
        events = list(stub.WatchFusionJob(
            pb.WatchFusionJobRequest(name=name),
            metadata=bearer(token) if token else None, timeout=DEADLINE))
        return events[-1].state_change.state

    def code(self, call, *args, **kw):
        try:
            result = call(*args, **kw)
            if hasattr(result, "__iter__") and not hasattr(result,
                                                           "SerializeToString"):
                list(result)
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as e:
            return e.code(), e.details() or ""

    def health(self, channel):
        # wait_for_ready: a connection the server dropped (metadata over
        # gRPC's limit closes it) is re-established rather than failed.
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        return check(b"", timeout=60, wait_for_ready=True)

    def retrying(self, call):
        """call() until it does not fail UNAVAILABLE (a connection the
        server closed, e.g. after metadata over gRPC's limit, is racing its
        replacement), for at most DEADLINE seconds."""
        end = time.monotonic() + DEADLINE
        while True:
            try:
                return call()
            except grpc.RpcError as e:
                if (e.code() != grpc.StatusCode.UNAVAILABLE or
                        time.monotonic() > end):
                    raise
                time.sleep(0.2)

    def assert_a_serves(self):
        self.assertEqual(self.retrying(lambda: self.health(self.channel)),
                         b"\x08\x01")

    # Point 4: health and reflection need no credentials; nothing else does.
    def test_01_only_health_and_reflection_answer_without_credentials(self):
        self.assert_a_serves()
        reflect = self.channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
        replies = list(reflect(iter([b"\x3a\x00"]), timeout=30))
        self.assertTrue(any(b"tailor.v1.FusionService" in r for r in replies))
        name = "fusionJobs/0000000000000000"
        for call, request in (
                (self.stub.CreateFusionJob,
                 pb.CreateFusionJobRequest(spec=self.spec("x"))),
                (self.stub.GetFusionJob, pb.GetFusionJobRequest(name=name)),
                (self.stub.ListFusionJobs, pb.ListFusionJobsRequest()),
                (self.stub.CancelFusionJob,
                 pb.CancelFusionJobRequest(name=name)),
                (self.stub.DeleteFusionJob,
                 pb.DeleteFusionJobRequest(name=name)),
                (self.stub.WatchFusionJob,
                 pb.WatchFusionJobRequest(name=name)),
                (self.stub.ReadJobResult,
                 pb.ReadJobResultRequest(name=name))):
            code, details = self.code(call, request, timeout=30)
            self.assertEqual(code, grpc.StatusCode.UNAUTHENTICATED, details)
            self.assertIn("no credentials", details)

    # Point 2: missing, unknown and malformed tokens.
    def test_02_bad_tokens_are_unauthenticated_and_the_server_stays_up(self):
        req = pb.ListFusionJobsRequest()
        cases = [
            (("authorization", "Bearer not-a-token"),), "unknown bearer token",
            (("authorization", ALICE),), "Bearer <token>",
            (("authorization", "Basic YWxpY2U6cHc="),), "Bearer <token>",
            (("authorization", "Bearer "),), "Bearer <token>",
            (("authorization", "Bearer " + "x" * 5000),), "bytes, more than",
            (("authorization", "Bearer " + ALICE),
             ("authorization", "Bearer " + BOB)), "sent 2 times",
        ]
        for metadata, says in zip(cases[::2], cases[1::2]):
            code, details = self.code(self.stub.ListFusionJobs, req,
                                      metadata=metadata, timeout=30)
            self.assertEqual(code, grpc.StatusCode.UNAUTHENTICATED, details)
            self.assertIn(says, details)
            self.assertNotIn(ALICE, details)
        # Beyond gRPC's metadata limit, and non-ASCII: refused cleanly by
        # the client library or the server (the code is theirs to choose).
        for value in ("Bearer " + "y" * 20000, "Bearer caf\u00e9-token"):
            try:
                self.stub.ListFusionJobs(
                    req, metadata=(("authorization", value),), timeout=30)
                self.fail("accepted %r" % value[:20])
            except grpc.RpcError as e:
                self.assertNotEqual(e.code(), grpc.StatusCode.OK)
            except (ValueError, TypeError, UnicodeError):
                pass  # the client refused to send it
        self.assert_a_serves()
        self.assertEqual(self.a.proc.poll(), None)
        listed = self.retrying(lambda: self.stub.ListFusionJobs(
            req, metadata=bearer(ALICE), timeout=60, wait_for_ready=True))
        self.assertIsInstance(listed, pb.ListFusionJobsResponse)

    # Point 3: a job belongs to its creator.
    def test_03_other_principals_jobs_are_not_found(self):
        job = self.create(self.stub, ALICE, "alice1", labels={"t": "authz"})
        self.assertEqual(job.creator, "alice")
        self.assertEqual(self.wait_done(self.stub, job.name, ALICE),
                         pb.SUCCEEDED)
        mine = self.create(self.stub, BOB, "bob1", labels={"t": "authz"})
        self.assertEqual(mine.creator, "bob")
        missing = "fusionJobs/0123456789abcdef"
        for name in (job.name, missing):
            for call, request in (
                    (self.stub.GetFusionJob, pb.GetFusionJobRequest(name=name)),
                    (self.stub.CancelFusionJob,
                     pb.CancelFusionJobRequest(name=name)),
                    (self.stub.DeleteFusionJob,
                     pb.DeleteFusionJobRequest(name=name)),
                    (self.stub.WatchFusionJob,
                     pb.WatchFusionJobRequest(name=name)),
                    (self.stub.ReadJobResult,
                     pb.ReadJobResultRequest(
                         name=name, kind=pb.ReadJobResultRequest.REPORT))):
                code, details = self.code(call, request,
                                          metadata=bearer(BOB), timeout=30)
                self.assertEqual(code, grpc.StatusCode.NOT_FOUND,
                                 (call, details))
                # Word for word a missing job's answer.
                self.assertEqual(details, "no job named " + name)
        # The owner and the admin read it.
        for token in (ALICE, ROOT):
            got = self.stub.GetFusionJob(pb.GetFusionJobRequest(name=job.name),
                                         metadata=bearer(token), timeout=30)
            self.assertEqual(got.creator, "alice")
            report = b"".join(c.data for c in self.stub.ReadJobResult(
                pb.ReadJobResultRequest(name=job.name,
                                        kind=pb.ReadJobResultRequest.REPORT),
                metadata=bearer(token), timeout=60))
            self.assertIn(b"task_arithmetic", report)

        def names(token):
            r = self.stub.ListFusionJobs(
                pb.ListFusionJobsRequest(filter="labels.t=authz"),
                metadata=bearer(token), timeout=30)
            return {j.name for j in r.fusion_jobs}
        self.assertEqual(names(ALICE), {job.name})
        self.assertEqual(names(BOB), {mine.name})
        self.assertEqual(names(ROOT), {job.name, mine.name})
        self.wait_done(self.stub, mine.name, BOB)

    def test_04_request_id_is_per_principal(self):
        a = self.create(self.stub, ALICE, "rid-a", request_id="same-id")
        b = self.create(self.stub, BOB, "rid-b", request_id="same-id")
        self.assertNotEqual(a.name, b.name)
        self.assertEqual(b.creator, "bob")
        again = self.create(self.stub, ALICE, "rid-a", request_id="same-id")
        self.assertEqual(again.name, a.name)
        for job, token in ((a, ALICE), (b, BOB)):
            self.wait_done(self.stub, job.name, token)

    def test_05_tailorctl_sends_the_token(self):
        job = self.create(self.stub, ALICE, "ctl")
        ctl = os.environ["TAILORCTL"]
        token_file = self.path("alice.token")
        write_atomically(token_file, ALICE + "\n")
        out = subprocess.run(
            [ctl, "get", job.name, "--server", self.a.address,
             "--token-file", token_file, "-o", "json"],
            capture_output=True, text=True, timeout=DEADLINE)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn(job.name, out.stdout)
        env = dict(os.environ, TAILOR_TOKEN=ALICE)
        out = subprocess.run([ctl, "get", job.name, "--server",
                              self.a.address], env=env, capture_output=True,
                             text=True, timeout=DEADLINE)
        self.assertEqual(out.returncode, 0, out.stderr)
        env = dict(os.environ, TAILOR_TOKEN=BOB)
        out = subprocess.run([ctl, "get", job.name, "--server",
                              self.a.address], env=env, capture_output=True,
                             text=True, timeout=DEADLINE)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("no job named", out.stderr)
        env = {k: v for k, v in os.environ.items() if k != "TAILOR_TOKEN"}
        out = subprocess.run([ctl, "list", "--server", self.a.address],
                             env=env, capture_output=True, text=True,
                             timeout=DEADLINE)
        self.assertEqual(out.returncode, 5, out.stderr)  # not authenticated
        self.assertIn("no credentials", out.stderr)
        self.wait_done(self.stub, job.name, ALICE)

    # Point 3 (optional part): a token's own allowed roots.
    def test_05a_per_principal_allowed_roots(self):
        code, details = self.code(self.create, self.stub, DAVE, "dave-out")
        self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED, details)
        spec = pb.FusionJobSpec(
            pretrained=self.path("dave/base"),
            tasks=[pb.TaskSpec(finetuned=self.path("dave/ft"))],
            method=pb.METHOD_TASK_ARITHMETIC, out=self.path("dave/x.out"),
            device="cpu")
        job = self.stub.CreateFusionJob(
            pb.CreateFusionJobRequest(spec=spec), metadata=bearer(DAVE),
            timeout=60)
        self.assertEqual(job.creator, "dave")
        self.assertEqual(self.wait_done(self.stub, job.name, DAVE),
                         pb.SUCCEEDED)
        # Inputs inside, output outside: refused too.
        spec.out = self.path("dave-escape.out")
        code, details = self.code(
            self.stub.CreateFusionJob, pb.CreateFusionJobRequest(spec=spec),
            metadata=bearer(DAVE), timeout=60)
        self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED, details)
        self.assertIn("out", details)

    # Point 2: the token file is re-read when it changes.
    def test_06_token_file_reload(self):
        req = pb.ListFusionJobsRequest()
        self.assertEqual(self.code(self.stub.ListFusionJobs, req,
                                   metadata=bearer(CAROL), timeout=30)[0],
                         grpc.StatusCode.UNAUTHENTICATED)
        # Carol added, Bob revoked: a Secret update.
        write_atomically(self.tokens, "%s alice\n%s root admin\n%s carol\n" %
                         (sha(ALICE), sha(ROOT), sha(CAROL)))
        end = time.monotonic() + DEADLINE
        while self.code(self.stub.ListFusionJobs, req, metadata=bearer(CAROL),
                        timeout=30)[0] != grpc.StatusCode.OK:
            self.assertLess(time.monotonic(), end, "carol never accepted")
            time.sleep(0.2)
        self.assertEqual(self.code(self.stub.ListFusionJobs, req,
                                   metadata=bearer(BOB), timeout=30)[0],
                         grpc.StatusCode.UNAUTHENTICATED)
        # A broken file keeps the tokens in force.
        write_atomically(self.tokens, "garbage\n")
        time.sleep(3)
        self.assertEqual(self.code(self.stub.ListFusionJobs, req,
                                   metadata=bearer(CAROL), timeout=30)[0],
                         grpc.StatusCode.OK)
        self.assertIn("keeping the previous tokens", self.a.text())
        write_atomically(self.tokens, "%s alice\n%s bob\n%s root admin\n" %
                         (sha(ALICE), sha(BOB), sha(ROOT)))
        end = time.monotonic() + DEADLINE
        while self.code(self.stub.ListFusionJobs, req, metadata=bearer(BOB),
                        timeout=30)[0] != grpc.StatusCode.OK:
            self.assertLess(time.monotonic(), end, "bob never restored")
            time.sleep(0.2)

    # Point 4: the metrics port can require its own token; probes stay open.
    def test_07_metrics_token(self):
        def get(path, token=None):
            c = http.client.HTTPConnection("127.0.0.1", self.a.metrics_port,
                                           timeout=30)
            c.request("GET", path, headers={"Authorization": "Bearer " +
                                            token} if token else {})
            r = c.getresponse()
            return r.status, r.read().decode()
        self.assertEqual(get("/metrics")[0], 401)
        self.assertEqual(get("/metrics", ALICE)[0], 401)
        status, body = get("/metrics", METRICS)
        self.assertEqual(status, 200)
        self.assertIn("tailor_rpcs_total", body)
        self.assertIn('code="unauthenticated"', body)
        for secret in SECRETS:
            self.assertNotIn(secret, body)
            self.assertNotIn(sha(secret), body)
        self.assertEqual(get("/healthz")[0], 200)
        self.assertEqual(get("/readyz")[0], 200)

    # Point 1: TLS and mTLS.
    # Issue #15: `tailorctl health` (grpc.health.v1 Check) with the
    # connection options of the other commands: exit 0 only when SERVING.
    def test_07a_tailorctl_health(self):
        def health(*args, env=None, timeout="20"):
            return subprocess.run(
                [os.environ["TAILORCTL"], "health", "--timeout", timeout] +
                list(args), capture_output=True, text=True,
                timeout=DEADLINE, env=env)
        out = health("--server", self.a.address)
        self.assertEqual((out.returncode, out.stdout), (0, "SERVING\n"),
                         out.stderr)
        # A token is sent when given (and not needed).
        env = dict(os.environ, TAILOR_TOKEN=ALICE)
        out = health("--server", self.a.address, "--service",
                     "tailor.v1.FusionService", "-o", "json", env=env)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(json.loads(out.stdout), {"status": "SERVING"})
        out = health("--server", self.a.address, "--service", "no.such.Svc")
        self.assertEqual(out.returncode, 4, out.stdout + out.stderr)
        # mTLS server B: its CA, a client certificate and the name in its
        # certificate; plaintext or another CA cannot reach it.
        tls = ["--server", self.b.address, "--tls-ca", self.path("ca.pem"),
               "--tls-cert", self.path("client.pem"), "--tls-key",
               self.path("client.key"), "--tls-server-name", "localhost"]
        out = health(*tls)
        self.assertEqual((out.returncode, out.stdout), (0, "SERVING\n"),
                         out.stderr)
        out = health("--server", self.b.address)
        self.assertEqual(out.returncode, 7, out.stdout + out.stderr)
        self.assertNotIn("SERVING", out.stdout)
        wrong = list(tls)
        wrong[wrong.index(self.path("ca.pem"))] = self.path("other-ca.pem")
        out = health(*wrong)
        self.assertEqual(out.returncode, 7, out.stdout + out.stderr)
        # Nothing listening: unavailable, with the address in the message.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = "127.0.0.1:%d" % s.getsockname()[1]
        out = health("--server", closed, timeout="5")
        self.assertEqual(out.returncode, 7, out.stdout + out.stderr)
        self.assertIn(closed, out.stderr)

    def tls_channel(self, root="ca", cert="client", override=None):
        creds = grpc.ssl_channel_credentials(
            root_certificates=read(self.path(root + ".pem")),
            private_key=read(self.path(cert + ".key")) if cert else None,
            certificate_chain=read(self.path(cert + ".pem")) if cert else None)
        options = [("grpc.ssl_target_name_override", override)] \
            if override else []
        return grpc.secure_channel(self.b.address, creds, options)

    def b_code(self, channel, token=None):
        stub = pb_grpc.FusionServiceStub(channel)
        return self.code(stub.ListFusionJobs, pb.ListFusionJobsRequest(),
                         metadata=bearer(token) if token else None,
                         timeout=20)[0]

    def test_08_tls_and_mtls_refuse_what_they_must(self):
        with grpc.insecure_channel(self.b.address) as plain:
            self.assertEqual(self.b_code(plain, ALICE),
                             grpc.StatusCode.UNAVAILABLE)
        with self.tls_channel(root="other-ca") as wrong_ca:
            self.assertEqual(self.b_code(wrong_ca, ALICE),
                             grpc.StatusCode.UNAVAILABLE)
        with self.tls_channel(cert=None) as no_cert:
            self.assertEqual(self.b_code(no_cert, ALICE),
                             grpc.StatusCode.UNAVAILABLE)
        with self.tls_channel(cert="rogue") as rogue:
            self.assertEqual(self.b_code(rogue), grpc.StatusCode.UNAVAILABLE)
        self.assertIsNone(self.b.proc.poll())

    def test_09_mtls_principal_is_the_certificate_san(self):
        with self.tls_channel() as channel:
            stub = pb_grpc.FusionServiceStub(channel)
            job = self.create(stub, None, "mtls")
            self.assertEqual(job.creator, "alice.clients")
            # A token wins over the certificate.
            code, _ = self.code(stub.GetFusionJob,
                                pb.GetFusionJobRequest(name=job.name),
                                metadata=bearer(BOB), timeout=30)
            self.assertEqual(code, grpc.StatusCode.NOT_FOUND)
            got = stub.GetFusionJob(pb.GetFusionJobRequest(name=job.name),
                                    metadata=bearer(ROOT), timeout=30)
            self.assertEqual(got.creator, "alice.clients")
            self.assertEqual(self.wait_done(stub, job.name, None),
                             pb.SUCCEEDED)
            # Reflection is off on B; health answers.
            reflect = channel.stream_stream(
                "/grpc.reflection.v1alpha.ServerReflection/"
                "ServerReflectionInfo")
            code, _ = self.code(lambda: list(reflect(iter([b"\x3a\x00"]),
                                                     timeout=30)))
            self.assertEqual(code, grpc.StatusCode.UNIMPLEMENTED)
            self.assertEqual(self.health(channel), b"\x08\x01")
        ctl = subprocess.run(
            [os.environ["TAILORCTL"], "get", job.name, "--server",
             self.b.address, "--tls-ca", self.path("ca.pem"), "--tls-cert",
             self.path("client.pem"), "--tls-key", self.path("client.key"),
             "--tls-server-name", "localhost"],
            capture_output=True, text=True, timeout=DEADLINE)
        self.assertEqual(ctl.returncode, 0, ctl.stderr)
        self.assertIn(job.name, ctl.stdout)
        # The Python package's client, with a certificate and an admin
        # token.
        example = tailor_client.Client(
            self.b.address, token=ROOT, tls=self.path("ca.pem"),
            client_cert=self.path("client.pem"),
            client_key=self.path("client.key"), server_name="localhost")
        try:
            self.assertEqual(example.get(job.name).creator, "alice.clients")
            self.assertIn(job.name, [j.name for j in example.list()])
        finally:
            example.close()

    # Point 1: a rotated certificate is served without a restart, and open
    # connections keep working.
    def test_10_certificate_reload(self):
        old = self.tls_channel()
        self.assertEqual(self.b_code(old), grpc.StatusCode.OK)
        shutil.copy(self.path("rotated.key"), self.path("b.key.new"))
        shutil.copy(self.path("rotated.pem"), self.path("b.pem.new"))
        os.replace(self.path("b.key.new"), self.path("b.key"))
        os.replace(self.path("b.pem.new"), self.path("b.pem"))
        end = time.monotonic() + DEADLINE
        while True:
            with self.tls_channel(root="other-ca") as fresh:
                if self.b_code(fresh) == grpc.StatusCode.OK:
                    break
            self.assertLess(time.monotonic(), end, "rotation never served")
            time.sleep(0.5)
        self.assertEqual(self.b_code(old), grpc.StatusCode.OK)
        old.close()
        self.assertIsNone(self.b.proc.poll())

    # Point 5: no authentication, no non-loopback listen.
    def test_11_non_loopback_listen_without_auth_is_refused(self):
        out = subprocess.run(
            [os.environ["TAILORD"], "--listen", "0.0.0.0:0", "--data-dir",
             self.path("refused-data")], capture_output=True, text=True,
            timeout=DEADLINE)
        self.assertEqual(out.returncode, 2)
        self.assertIn("not a loopback address", out.stderr)
        self.assertIn("--insecure", out.stderr)
        self.assertFalse(os.path.exists(self.path("refused-data")))

    # Point 6: audit lines, and no secret anywhere in the logs.
    def test_12_audit_lines_and_no_secrets_in_logs(self):
        log = self.a.text() + self.b.text()
        for secret in SECRETS:
            self.assertNotIn(secret, log)
            self.assertNotIn(sha(secret), log)
            self.assertNotIn(sha(secret).upper(), log)
        audit = [l for l in self.a.text().splitlines() if "msg=audit" in l]
        self.assertTrue(any("principal=alice" in l and
                            "method=CreateFusionJob" in l and
                            "job=fusionJobs/" in l and "outcome=ok" in l
                            for l in audit), audit)
        self.assertTrue(any("method=CancelFusionJob" in l and
                            "principal=bob" in l and "outcome=not_found" in l
                            for l in audit), audit)
        self.assertTrue(any('principal=""' in l and
                            "outcome=unauthenticated" in l for l in audit),
                        audit)
        # Reads are not audited; one line per mutating call.
        self.assertFalse(any("method=GetFusionJob" in l for l in audit))
        b_audit = [l for l in self.b.text().splitlines() if "msg=audit" in l]
        self.assertTrue(any("principal=alice.clients" in l for l in b_audit))


if __name__ == "__main__":
    unittest.main(verbosity=2)
