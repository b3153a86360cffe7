#!/usr/bin/python3
"""Loopback servers and an independent S3 client for the remote-storage tests
(issue #16). Reusable by any test: run it as a program (C++ tests spawn it)
or import it from Python.

Servers (each binds 127.0.0.1 on a free port, prints ONE line of JSON
{"port": N, ...} on stdout once it accepts connections, then runs until its
stdin is closed or it gets SIGTERM, and stops its children):

  s3rver --dir D [--bucket B]...
      s3rver (npm, pinned in tests/storage/s3rver/package-lock.json; `npm ci`
      into $S3RVER_PREFIX, default $TMPDIR/tailor-s3rver, on first use; $NPM
      and $NODE name the tools). Credentials: S3RVER / S3RVER, region
      us-east-1, path-style. s3rver 3.7 checks the access key id but not
      SigV4 signatures (unimplemented there): `sign` below checks those.
      No AbortMultipartUpload nor ListMultipartUploads either.
  capture --log F
      Records every request as a JSON line {"method", "path", "headers"} in F
      and answers 200 with an empty body (ETag "e"), so a test can see
      exactly what a client sent (the SigV4 comparison).
  fault --upstream PORT [--log F]
      A proxy to 127.0.0.1:PORT that injects faults. A test posts the fault
      plan to the proxy itself: POST /__faults with a comma-separated body
      (each request that follows takes the next entry; an empty queue is
      "ok"; "always:X" makes X the default; "rule:METHOD:TEXT:X" applies X
      to every METHOD request whose path contains TEXT, before the queue,
      and X may also be "delay=S": forwarded after S seconds, a slow
      upload): ok, 503, 429, 403, drop
      (headers, then half the body, then the connection is closed), lose
      (forwarded, then the connection is closed with no response; a
      CompleteMultipartUpload lost so is remembered, and a re-sent one
      answered 404 NoSuchUpload as S3 does, where s3rver 3.7 answers 500),
      short
      (a consistent response with half the body), slow (half the body, then
      silence for 60 s). GET /__count answers the number of proxied
      requests. With --log, every proxied request is appended to F as
      {"method", "path", "status", "bytes" (of the upstream answer's body)}
      (and "upload_id", parsed from the answer, for a
      CreateMultipartUpload) once it is answered.
  nginx --root D --cert C --key K
      Debian nginx ($NGINX, else the one on PATH or /usr/sbin/nginx),
      unprivileged, https only, serving D (Range and ETag
      support are nginx's own). Its prefix, pid and logs live in a temporary
      directory.
  hub --root D [--token T] --log F
      A Hugging Face Hub-compatible endpoint (plain http): files of
      D/{org}/{repo}/{rev}/{path} at /{org}/{repo}/resolve/{rev}/{path}; a
      path under "lfs/" redirects (302) to http://localhost:PORT/cdn/... (the
      same server under another host name, as a CDN would be); the tree API
      /api/models/{org}/{repo}/tree/{rev}[/dir]?recursive=1 answers pages of
      two entries linked by "Link: <...>; rel="next"". With --token, the
      resolve and API routes require "Authorization: Bearer T" (401
      otherwise). Every request is logged to F as {"path", "host",
      "authorization"}.

One-shot commands (exit status 0 on success; output on stdout):

  ca --dir D            openssl: D/ca.pem, D/server.pem, D/server.key (for
                        127.0.0.1 and localhost) and D/other-ca.pem (an
                        unrelated CA)
  s3 --port P mb B      create bucket B (boto3, against 127.0.0.1:P)
  s3 --port P put B K FILE [K FILE]... | get B K FILE | rm B K
  s3 --port P list B [PREFIX]     JSON list of keys
  s3 --port P uploads B           JSON list of the keys of pending multipart
                                  uploads (exit status 3: the server cannot
                                  list them; s3rver 3.7 cannot)
  sign --log F [--index I] [--token T]  botocore's S3SigV4Auth Authorization for
                                  the captured request I (default: last) of
                                  capture log F, signed with S3RVER/S3RVER
                                  (and session token T) over the same
                                  method, URL, body, signed headers and
                                  X-Amz-Date; prints it
"""

import argparse
import base64
import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ACCESS_KEY = "S3RVER"
SECRET_KEY = "S3RVER"
REGION = "us-east-1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, deadline_s=60.0, proc=None):
    end = time.time() + deadline_s
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("server exited with %s" % proc.returncode)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("nothing listens on port %d after %ds" %
                       (port, deadline_s))


def announce(**fields):
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def run_until_stdin_closes(cleanup):
    """Blocks until stdin reaches EOF or SIGTERM arrives; then cleanup()."""
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())

    def reader():
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except OSError:
            pass
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    done.wait()
    cleanup()


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


# ---------------------------------------------------------------- s3rver

def s3rver_modules():
    """node_modules with s3rver, installed by `npm ci` once per lock."""
    prefix = os.environ.get("S3RVER_PREFIX") or os.path.join(
        tempfile.gettempdir(), "tailor-s3rver")
    lock_path = os.path.join(HERE, "s3rver", "package-lock.json")
    with open(lock_path, "rb") as f:
        lock = f.read()
    stamp = os.path.join(prefix, "node_modules", ".tailor-lock")
    if os.path.exists(stamp):
        with open(stamp, "rb") as f:
            if f.read() == lock:
                return os.path.join(prefix, "node_modules")
    os.makedirs(prefix, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(os.path.join(HERE, "s3rver", name),
                    os.path.join(prefix, name))
    out = subprocess.run(
        [os.environ.get("NPM", "npm"), "ci", "--prefix", prefix,
         "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error"],
        capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError("npm ci (tests/storage/s3rver) failed; the npm "
                           "registry must be reachable once:\n" +
                           out.stderr[-4000:])
    with open(stamp, "wb") as f:
        f.write(lock)
    return os.path.join(prefix, "node_modules")


def serve_s3rver(args):
    modules = s3rver_modules()
    port = free_port()
    # s3rver's continuation tokens use DES: OpenSSL 3's legacy provider.
    cmd = [os.environ.get("NODE", "node"), "--openssl-legacy-provider",
           os.path.join(modules, "s3rver", "bin", "s3rver.js"),
           "-d", args.dir, "-a", "127.0.0.1", "--silent",
           "--no-vhost-buckets"]
    buckets = []
    for b in args.bucket or []:
        buckets += ["--configure-bucket", b]
    proc = subprocess.Popen(cmd + ["-p", str(port)] + buckets,
                            stdin=subprocess.DEVNULL, stdout=sys.stderr)
    try:
        wait_for_port(port, 120, proc)
    except RuntimeError:
        # Another process took the free port first: once more.
        stop(proc)
        port = free_port()
        proc = subprocess.Popen(cmd + ["-p", str(port)] + buckets,
                                stdin=subprocess.DEVNULL, stdout=sys.stderr)
        wait_for_port(port, 120, proc)
    announce(port=port)
    run_until_stdin_closes(lambda: stop(proc))


# ---------------------------------------------------------------- capture

def serve_capture(args):
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_):
            pass

        def handle_any(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            entry = {"method": self.command, "path": self.path,
                     "headers": [[k, v] for k, v in self.headers.items()],
                     "body_b64": base64.b64encode(body[:1 << 20]).decode()}
            with lock, open(args.log, "a") as f:
                f.write(json.dumps(entry) + "\n")
            self.send_response(200)
            self.send_header("ETag", '"e"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any

    server = ThreadingServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    announce(port=server.server_address[1])
    run_until_stdin_closes(server.shutdown)


def sign(args):
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    import datetime
    from unittest import mock

    with open(args.log) as f:
        entries = [json.loads(line) for line in f if line.strip()]
    entry = entries[args.index]
    headers = {k.lower(): v for k, v in entry["headers"]}
    auth = headers["authorization"]
    signed = auth.split("SignedHeaders=")[1].split(",")[0].split(";")
    amz_date = headers["x-amz-date"]
    url = "http://%s%s" % (headers["host"], entry["path"])
    request = AWSRequest(method=entry["method"], url=url,
                         data=base64.b64decode(entry["body_b64"]),
                         headers={h: headers[h] for h in signed
                                  if h not in ("authorization",)})
    # botocore derives X-Amz-Date from the clock: pin it to the captured one.
    when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ")
    signer = S3SigV4Auth(
        Credentials(ACCESS_KEY, SECRET_KEY, args.token or None), "s3", REGION)

    class Frozen(datetime.datetime):
        @classmethod
        def utcnow(cls):
            return when

        @classmethod
        def now(cls, tz=None):
            return when.replace(tzinfo=tz) if tz else when

    with mock.patch("botocore.auth.datetime.datetime", Frozen):
        del request.headers["x-amz-date"]
        signer.add_auth(request)
    print(request.headers["Authorization"])


# ---------------------------------------------------------------- fault

def serve_fault(args):
    state = {"queue": [], "default": "ok", "count": 0, "rules": []}
    lock = threading.Lock()

    def log(method, path, status, body=b""):
        if not args.log:
            return
        entry = {"method": method, "path": path, "status": status,
                 "bytes": len(body)}
        if method == "POST" and "?uploads" in path:
            text = body.decode(errors="replace")
            if "<UploadId>" in text:
                entry["upload_id"] = text.split("<UploadId>")[1].split(
                    "</UploadId>")[0]
        with lock, open(args.log, "a") as f:
            f.write(json.dumps(entry) + "\n")

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_):
            pass

        def reply(self, status, body=b""):
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def handle_any(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.path == "/__faults":
                plan = [p for p in body.decode().split(",") if p]
                with lock:
                    state["rules"] = [p.split(":", 3) for p in plan
                                      if p.startswith("rule:")]
                    plan = [p for p in plan if not p.startswith("rule:")]
                    state["queue"] = [p for p in plan
                                      if not p.startswith("always:")]
                    for p in plan:
                        if p.startswith("always:"):
                            state["default"] = p[len("always:"):]
                    if not any(p.startswith("always:") for p in plan):
                        state["default"] = "ok"
                    state["count"] = 0
                return self.reply(200)
            if self.path == "/__count":
                with lock:
                    n = state["count"]
                return self.reply(200, str(n).encode())
            with lock:
                state["count"] += 1
                fault = None
                for _, method, text, action in state["rules"]:
                    if method == self.command and text in self.path:
                        fault = action
                        break
                if fault is None:
                    fault = (state["queue"].pop(0) if state["queue"]
                             else state["default"])
            if fault.startswith("delay="):
                time.sleep(float(fault[len("delay="):]))
                fault = "ok"
            if fault in ("503", "429", "403"):
                code = {"503": "SlowDown", "429": "SlowDown",
                        "403": "AccessDenied"}[fault]
                log(self.command, self.path, int(fault))
                return self.reply(int(fault), (
                    "<Error><Code>%s</Code></Error>" % code).encode())
            query = urllib.parse.parse_qs(
                urllib.parse.urlsplit(self.path).query)
            upload_id = (query.get("uploadId") or [""])[0]
            if self.command == "POST" and upload_id and \
                    upload_id in state.setdefault("completed", set()):
                # S3 answers a re-sent complete of a finished upload so;
                # s3rver 3.7 answers 500 InternalError.
                return self.reply(404, b"<Error><Code>NoSuchUpload</Code>"
                                  b"</Error>")
            upstream = http.client.HTTPConnection("127.0.0.1",
                                                  args.upstream, timeout=60)
            upstream.request(self.command, self.path, body=body,
                             headers=dict(self.headers.items()))
            resp = upstream.getresponse()
            data = resp.read() if self.command != "HEAD" else b""
            upstream.close()
            log(self.command, self.path, resp.status, data)
            if fault == "lose":
                # The request took effect; its response never arrives.
                if self.command == "POST" and upload_id and \
                        resp.status == 200:
                    with lock:
                        state["completed"].add(upload_id)
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            half = data[:len(data) // 2]
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() in ("content-length", "transfer-encoding",
                                 "connection"):
                    continue
                self.send_header(k, v)
            if fault == "short":
                self.send_header("Content-Length", str(len(half)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(half)
                return
            clen = resp.getheader("Content-Length")
            self.send_header("Content-Length",
                             clen if self.command == "HEAD" and clen
                             else str(len(data)))
            self.end_headers()
            if self.command == "HEAD":
                return
            if fault == "drop" and data:
                self.wfile.write(half)
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault == "slow" and data:
                self.wfile.write(half)
                self.wfile.flush()
                time.sleep(60)
                self.close_connection = True
                return
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any

    server = ThreadingServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    announce(port=server.server_address[1])
    run_until_stdin_closes(server.shutdown)


# ---------------------------------------------------------------- nginx

NGINX_CONF = """
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log {tmp}/access.log;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  server {{
    listen 127.0.0.1:{port} ssl;
    server_name localhost;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    root {root};
  }}
}}
"""


def serve_nginx(args):
    tmp = tempfile.mkdtemp(prefix="tailor-nginx-")
    port = free_port()
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(tmp=tmp, port=port,
                                  cert=os.path.abspath(args.cert),
                                  key=os.path.abspath(args.key),
                                  root=os.path.abspath(args.root)))
    nginx = (os.environ.get("NGINX") or shutil.which("nginx") or
             "/usr/sbin/nginx")
    proc = subprocess.Popen([nginx, "-p", tmp, "-c", conf, "-e",
                             os.path.join(tmp, "error.log")],
                            stdin=subprocess.DEVNULL, stdout=sys.stderr)
    wait_for_port(port, 30, proc)
    announce(port=port)

    def cleanup():
        stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)

    run_until_stdin_closes(cleanup)


def make_ca(args):
    d = args.dir
    os.makedirs(d, exist_ok=True)

    def ossl(*a):
        subprocess.run(["openssl"] + list(a), check=True,
                       capture_output=True)

    for name in ("ca", "other-ca"):
        ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=tailor test %s" % name,
             "-keyout", os.path.join(d, name + ".key"),
             "-out", os.path.join(d, name + ".pem"))
    ext = os.path.join(d, "server.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                "basicConstraints=CA:FALSE\n")
    ossl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-keyout", os.path.join(d, "server.key"),
         "-out", os.path.join(d, "server.csr"))
    ossl("x509", "-req", "-in", os.path.join(d, "server.csr"),
         "-CA", os.path.join(d, "ca.pem"), "-CAkey", os.path.join(d, "ca.key"),
         "-CAcreateserial", "-days", "2", "-extfile", ext,
         "-out", os.path.join(d, "server.pem"))


# ---------------------------------------------------------------- hub

def serve_file(handler, path, auth_log):
    """Serves `path` with HEAD, Range (one range) and ETag support."""
    if not os.path.isfile(path):
        return handler.reply(404, b"not found")
    with open(path, "rb") as f:
        data = f.read()
    etag = '"%x-%x"' % (len(data), hash(data) & 0xffffffff)
    rng = handler.headers.get("Range")
    status, body, extra = 200, data, []
    if rng and rng.startswith("bytes="):
        first, _, last = rng[len("bytes="):].partition("-")
        first = int(first)
        last = min(int(last) if last else len(data) - 1, len(data) - 1)
        if first >= len(data):
            return handler.reply(416, b"")
        status, body = 206, data[first:last + 1]
        extra = [("Content-Range", "bytes %d-%d/%d" % (first, last,
                                                       len(data)))]
    handler.send_response(status)
    handler.send_header("ETag", etag)
    handler.send_header("Accept-Ranges", "bytes")
    handler.send_header("Content-Length", str(len(body)))
    for k, v in extra:
        handler.send_header(k, v)
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


def serve_hub(args):
    lock = threading.Lock()
    port_box = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_):
            pass

        def reply(self, status, body=b"", headers=()):
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def authorised(self):
            if not args.token:
                return True
            return self.headers.get("Authorization") == "Bearer " + args.token

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            path = urllib.parse.unquote(url.path)
            with lock, open(args.log, "a") as f:
                f.write(json.dumps({
                    "path": path, "host": self.headers.get("Host"),
                    "authorization": self.headers.get("Authorization")}) +
                    "\n")
            parts = path.lstrip("/").split("/")
            if parts[0] == "cdn":
                return serve_file(self, os.path.join(args.root, *parts[1:]),
                                  None)
            if parts[:2] == ["api", "models"] and len(parts) >= 6 and \
                    parts[4] == "tree":
                if not self.authorised():
                    return self.reply(401, b"unauthorised")
                org, repo, rev = parts[2], parts[3], parts[5]
                base = os.path.join(args.root, org, repo, rev)
                sub = "/".join(parts[6:])
                entries = []
                for dirpath, dirs, files in os.walk(os.path.join(base, sub)):
                    for d in dirs:
                        entries.append({"type": "directory", "path":
                                        os.path.relpath(
                                            os.path.join(dirpath, d), base)})
                    for name in files:
                        entries.append({"type": "file", "path":
                                        os.path.relpath(
                                            os.path.join(dirpath, name),
                                            base), "size": 1})
                if not os.path.isdir(os.path.join(base, sub)):
                    return self.reply(404, b"[]")
                entries.sort(key=lambda e: e["path"])
                q = urllib.parse.parse_qs(url.query)
                cursor = int(q.get("cursor", ["0"])[0])
                page = entries[cursor:cursor + 2]
                headers = [("Content-Type", "application/json")]
                if cursor + 2 < len(entries):
                    nxt = "http://127.0.0.1:%d%s?recursive=1&cursor=%d" % (
                        port_box["port"], url.path, cursor + 2)
                    headers.append(("Link", '<%s>; rel="next"' % nxt))
                return self.reply(200, json.dumps(page).encode(), headers)
            if len(parts) >= 5 and parts[2] == "resolve":
                if not self.authorised():
                    return self.reply(401, b"unauthorised")
                org, repo, rev = parts[0], parts[1], parts[3]
                rest = parts[4:]
                if rest[0] == "lfs":
                    loc = "http://localhost:%d/cdn/%s" % (
                        port_box["port"], urllib.parse.quote(
                            "/".join([org, repo, rev] + rest)))
                    return self.reply(302, b"", [("Location", loc)])
                return serve_file(self, os.path.join(args.root, org, repo,
                                                     rev, *rest), None)
            return self.reply(404, b"no route")

        do_HEAD = do_GET

    server = ThreadingServer(("127.0.0.1", 0), Handler)
    port_box["port"] = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    announce(port=port_box["port"])
    run_until_stdin_closes(server.shutdown)


# ---------------------------------------------------------------- boto3

def s3_client(port):
    import boto3
    from botocore.config import Config
    return boto3.client(
        "s3", endpoint_url="http://127.0.0.1:%d" % port,
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
        config=Config(s3={"addressing_style": "path"},
                      retries={"max_attempts": 2}))


def s3_command(args):
    c = s3_client(args.port)
    op, rest = args.op, args.rest
    if op == "mb":
        c.create_bucket(Bucket=rest[0])
    elif op == "put":
        for key, path in zip(rest[1::2], rest[2::2]):
            with open(path, "rb") as f:
                c.put_object(Bucket=rest[0], Key=key, Body=f.read())
    elif op == "get":
        body = c.get_object(Bucket=rest[0], Key=rest[1])["Body"].read()
        with open(rest[2], "wb") as f:
            f.write(body)
    elif op == "rm":
        c.delete_object(Bucket=rest[0], Key=rest[1])
    elif op == "list":
        keys = []
        kwargs = {"Bucket": rest[0], "Prefix": rest[1] if len(rest) > 1
                  else ""}
        for page in c.get_paginator("list_objects_v2").paginate(**kwargs):
            keys += [o["Key"] for o in page.get("Contents", [])]
        print(json.dumps(keys))
    elif op == "uploads":
        try:
            r = c.list_multipart_uploads(Bucket=rest[0])
        except c.exceptions.ClientError as e:
            if "NotImplemented" in str(e):
                raise SystemExit(3)  # s3rver 3.7 cannot list them
            raise
        print(json.dumps([u["Key"] for u in r.get("Uploads", [])]))
    else:
        raise SystemExit("unknown s3 op " + op)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("s3rver")
    s.add_argument("--dir", required=True)
    s.add_argument("--bucket", action="append")
    s = sub.add_parser("capture")
    s.add_argument("--log", required=True)
    s = sub.add_parser("fault")
    s.add_argument("--upstream", type=int, required=True)
    s.add_argument("--log", default="")
    s = sub.add_parser("nginx")
    s.add_argument("--root", required=True)
    s.add_argument("--cert", required=True)
    s.add_argument("--key", required=True)
    s = sub.add_parser("hub")
    s.add_argument("--root", required=True)
    s.add_argument("--token", default="")
    s.add_argument("--log", required=True)
    s = sub.add_parser("ca")
    s.add_argument("--dir", required=True)
    s = sub.add_parser("s3")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("op")
    s.add_argument("rest", nargs="*")
    s = sub.add_parser("sign")
    s.add_argument("--log", required=True)
    s.add_argument("--index", type=int, default=-1)
    s.add_argument("--token", default="")
    args = p.parse_args()
    {"s3rver": serve_s3rver, "capture": serve_capture, "fault": serve_fault,
     "nginx": serve_nginx, "hub": serve_hub, "ca": make_ca,
     "s3": s3_command, "sign": sign}[args.cmd](args)


if __name__ == "__main__":
    main()
