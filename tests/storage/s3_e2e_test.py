#!/usr/bin/python3
"""End to end through tailorctl and a loopback S3 server (issue #16).

s3rver (tests/storage/remote_fixture.py) on 127.0.0.1; fixtures uploaded and
results downloaded with boto3, an independent client; tailorctl reads and
writes through its libcurl backend (AWS_ENDPOINT_URL, path-style). Checks:
s3:// inputs to s3:// outputs give the bytes a local fuse of the same files
gives; a patch made from s3:// inputs applies to the local base; a run that
fails at upload time leaves no visible object; inspect reads a remote file.
Through the fault proxy (remote_fixture.py fault, with its request log): a
run whose part upload fails after the retries, and one interrupted
(SIGTERM) while its parts upload slowly, leave no visible object and abort
every multipart upload they began -- checked on the wire, because s3rver
3.7.1 implements neither AbortMultipartUpload (DELETE ?uploadId= is 405
MethodNotAllowed there) nor ListMultipartUploads (GET ?uploads is
NotImplemented): its routes (lib/routes.js) have no such handler.
`tailorctl calibrate --out s3://...` writes the bytes a local calibrate
writes.

Environment: TAILORCTL (the binary), TAILOR_SOURCE_DIR, DEMO_MODEL (the demo
checkpoint, for calibrate); the fixture's NODE, NPM, S3RVER_PREFIX.
"""

import array
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import remote_fixture  # noqa: E402

TAILORCTL = os.environ.get("TAILORCTL", "tailorctl")
DEADLINE = 600  # generous: the machine may be loaded


def safetensors(tensors, metadata=None):
    """tensors: list of (name, shape, floats), stored as F32."""
    header, data = {}, b""
    for name, shape, values in tensors:
        blob = struct.pack("<%df" % len(values), *values)
        header[name] = {"dtype": "F32", "shape": list(shape),
                        "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def write_models(d, count=4, rows=24, cols=16, seed=5):
    """d/base/model.safetensors, d/ft/model.safetensors, d/h.safetensors."""
    rng = random.Random(seed)
    x = [[rng.gauss(0, 1) for _ in range(cols)] for _ in range(3 * cols)]
    h = [2.0 / len(x) * sum(r[i] * r[j] for r in x)
         for i in range(cols) for j in range(cols)]
    base, ft, hess = [], [], []
    for i in range(count):
        w = [rng.gauss(0, 1) for _ in range(rows * cols)]
        name = "model.layers.%d.mlp.proj" % i
        base.append((name + ".weight", (rows, cols), w))
        ft.append((name + ".weight", (rows, cols),
                   [v + 0.3 * rng.gauss(0, 1) for v in w]))
        hess.append((name + ".hessian", (cols, cols), h))
    norm = [1.0 + 0.01 * i for i in range(cols)]
    base.append(("model.norm.weight", (cols,), norm))
    ft.append(("model.norm.weight", (cols,), [v + 0.5 for v in norm]))
    for sub, tensors in (("base", base), ("ft", ft)):
        os.makedirs(os.path.join(d, sub))
        with open(os.path.join(d, sub, "model.safetensors"), "wb") as f:
            f.write(safetensors(tensors))
    with open(os.path.join(d, "base", "config.json"), "w") as f:
        f.write('{"model_type": "llama"}\n')
    with open(os.path.join(d, "h.safetensors"), "wb") as f:
        f.write(safetensors(hess, {"format": "tailor-hessian/1",
                                   "nsamples": str(3 * cols)}))


def write_big(d, tensors=3, n=1 << 20):
    """d/bbase, d/bft: `tensors` F32 tensors of `n` values each (12 MiB by
    default: S3Store's 8 MiB parts make every fused shard a multipart
    upload of two parts)."""
    for sub, delta in (("bbase", 0.0), ("bft", 0.001)):
        header, blobs, offset = {}, [], 0
        for t in range(tensors):
            values = array.array("f", [((i * 7 + t) % 251) * 0.01 +
                                       delta * (i % 5) for i in range(n)])
            blob = values.tobytes()
            header["model.layers.%d.mlp.proj.weight" % t] = {
                "dtype": "F32", "shape": [n // 1024, 1024],
                "data_offsets": [offset, offset + len(blob)]}
            blobs.append(blob)
            offset += len(blob)
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        os.makedirs(os.path.join(d, sub))
        with open(os.path.join(d, sub, "model.safetensors"), "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def start_fixture(*args):
    """remote_fixture.py ARGS as a server: (process, its JSON line)."""
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "remote_fixture.py")] +
        list(args), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError("remote_fixture.py %s did not start" % args[0])
    return proc, json.loads(line)


def stop_fixture(proc):
    proc.stdin.close()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class FaultProxy:
    """The fault proxy in front of s3rver, with its request log."""

    def __init__(self, upstream_port, log_path):
        self.log_path = log_path
        self.proc, info = start_fixture("fault", "--upstream",
                                        str(upstream_port), "--log", log_path)
        self.port = info["port"]

    def plan(self, *entries):
        open(self.log_path, "w").close()
        req = urllib.request.Request(
            "http://127.0.0.1:%d/__faults" % self.port,
            data=",".join(entries).encode(), method="POST")
        urllib.request.urlopen(req, timeout=60).read()

    def requests(self):
        with open(self.log_path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def started_uploads(self):
        """{upload id: path} of every CreateMultipartUpload answered."""
        return {r["upload_id"]: r["path"].split("?")[0]
                for r in self.requests() if "upload_id" in r}

    def aborted_uploads(self):
        """{upload id: path} of every AbortMultipartUpload sent."""
        out = {}
        for r in self.requests():
            if r["method"] == "DELETE" and "uploadId=" in r["path"]:
                path, _, query = r["path"].partition("?")
                out[query.split("uploadId=")[1].split("&")[0]] = path
        return out

    def wait_for(self, predicate, what, deadline_s=DEADLINE):
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if predicate(self.requests()):
                return
            time.sleep(0.1)
        raise AssertionError("the proxy never saw " + what)

    def stop(self):
        stop_fixture(self.proc)


def read(path):
    with open(path, "rb") as f:
        return f.read()


class S3EndToEndTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="s3-e2e-")
        os.makedirs(os.path.join(cls.tmp, "s3"))
        cls.server = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "remote_fixture.py"),
             "s3rver", "--dir", os.path.join(cls.tmp, "s3"),
             "--bucket", "models", "--bucket", "out"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = cls.server.stdout.readline()
        if not line:
            raise RuntimeError("the s3rver fixture did not start")
        cls.port = json.loads(line)["port"]
        cls.s3 = remote_fixture.s3_client(cls.port)
        cls.local = os.path.join(cls.tmp, "local")
        write_models(cls.local)
        write_big(cls.local)
        for sub in ("bbase", "bft"):
            with open(os.path.join(cls.local, sub, "model.safetensors"),
                      "rb") as f:
                cls.s3.put_object(Bucket="models",
                                  Key="m/%s/model.safetensors" % sub,
                                  Body=f.read())
        cls.proxy = FaultProxy(cls.port, os.path.join(cls.tmp, "proxy.log"))
        for key, path in (("m/base/model.safetensors", "base/model.safetensors"),
                          ("m/base/config.json", "base/config.json"),
                          ("m/ft/model.safetensors", "ft/model.safetensors"),
                          ("m/h.safetensors", "h.safetensors")):
            with open(os.path.join(cls.local, path), "rb") as f:
                cls.s3.put_object(Bucket="models", Key=key, Body=f.read())
        # Empty shared files: no profile from the machine's ~/.aws leaks in.
        for name in ("credentials", "config"):
            open(os.path.join(cls.tmp, name), "w").close()
        cls.env = dict(os.environ)
        for k in list(cls.env):
            if k.startswith("AWS_"):
                del cls.env[k]
        cls.env.update({
            "AWS_ENDPOINT_URL": "http://127.0.0.1:%d" % cls.port,
            "AWS_ACCESS_KEY_ID": remote_fixture.ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": remote_fixture.SECRET_KEY,
            "AWS_REGION": remote_fixture.REGION,
            "AWS_SHARED_CREDENTIALS_FILE": os.path.join(cls.tmp, "credentials"),
            "AWS_CONFIG_FILE": os.path.join(cls.tmp, "config"),
            "TMPDIR": cls.tmp,
        })

    @classmethod
    def tearDownClass(cls):
        cls.proxy.stop()
        cls.server.stdin.close()
        try:
            cls.server.wait(60)
        except subprocess.TimeoutExpired:
            cls.server.kill()
            cls.server.wait()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def tailorctl(self, *args, expect=0):
        r = subprocess.run([TAILORCTL] + list(args), env=self.env,
                           capture_output=True, text=True, timeout=DEADLINE)
        if expect is not None:
            self.assertEqual(r.returncode, expect,
                             "tailorctl %s\n%s" % (" ".join(args), r.stderr))
        return r

    def keys(self, bucket, prefix=""):
        out = []
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix)
        for page in pages:
            out += [o["Key"] for o in page.get("Contents", [])]
        return sorted(out)

    def scratch_left(self):
        """What the runs left in the scratch directory ($TMPDIR)."""
        return [n for n in os.listdir(self.tmp)
                if n not in ("s3", "local", "credentials", "config",
                             "proxy.log") and not n.startswith("ref")]

    def proxied(self):
        return dict(self.env,
                    AWS_ENDPOINT_URL="http://127.0.0.1:%d" % self.proxy.port)

    def big_fuse(self, run):
        return ["fuse", "--local", "--quiet", "--method", "task_arithmetic",
                "--lambda", "0.5", "--pretrained", "s3://models/m/bbase/",
                "--finetuned", "s3://models/m/bft/",
                "--out", "s3://out/%s/fused/" % run,
                "--report", "s3://out/%s/report.json" % run]

    def assertEveryUploadAborted(self):
        started = self.proxy.started_uploads()
        self.assertTrue(started, "no multipart upload was begun")
        aborted = self.proxy.aborted_uploads()
        for upload_id, path in started.items():
            self.assertEqual(aborted.get(upload_id), path,
                             "upload %s of %s never aborted" % (upload_id,
                                                               path))

    def get(self, bucket, key):
        return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    def fuse_args(self, pre, ft, h, out, patch, report):
        return ["fuse", "--local", "--quiet", "--method", "tailor",
                "--keep", "0.25", "--pretrained", pre, "--finetuned", ft,
                "--hessians", h, "--out", out, "--patch-out", patch,
                "--report", report]

    def local_fuse(self, tag):
        out = os.path.join(self.tmp, tag)
        self.tailorctl(*self.fuse_args(
            os.path.join(self.local, "base"), os.path.join(self.local, "ft"),
            os.path.join(self.local, "h.safetensors"),
            os.path.join(out, "fused"), os.path.join(out, "p.safetensors"),
            os.path.join(out, "report.json")))
        return out

    def test_1_s3_inputs_to_s3_outputs_equal_a_local_fuse(self):
        ref = self.local_fuse("ref1")
        self.tailorctl(*self.fuse_args(
            "s3://models/m/base/", "s3://models/m/ft/",
            "s3://models/m/h.safetensors", "s3://out/run1/fused/",
            "s3://out/run1/p.safetensors", "s3://out/run1/report.json"),
            "--allowed-root", "s3://models/m/", "--allowed-root",
            "s3://out/run1/")
        keys = self.keys("out", "run1/")
        self.assertIn("run1/fused/model.safetensors", keys)
        self.assertIn("run1/fused/config.json", keys)
        self.assertIn("run1/p.safetensors", keys)
        self.assertIn("run1/report.json", keys)
        self.assertEqual(self.get("out", "run1/fused/model.safetensors"),
                         read(os.path.join(ref, "fused", "model.safetensors")))
        self.assertEqual(self.get("out", "run1/fused/config.json"),
                         read(os.path.join(ref, "fused", "config.json")))
        self.assertEqual(self.get("out", "run1/p.safetensors"),
                         read(os.path.join(ref, "p.safetensors")))
        report = json.loads(self.get("out", "run1/report.json"))
        self.assertIn("tensors", report)
        # Nothing staged is left in the scratch directory.
        self.assertEqual(self.scratch_left(), [])

    def test_2_a_patch_from_s3_applies_to_the_local_base(self):
        ref = self.local_fuse("ref2")
        self.tailorctl(*self.fuse_args(
            "s3://models/m/base/", "s3://models/m/ft/",
            "s3://models/m/h.safetensors", "s3://out/run2/fused/",
            "s3://out/run2/p.safetensors", "s3://out/run2/report.json"))
        applied = os.path.join(self.tmp, "ref2", "applied")
        self.tailorctl("apply-patch", "--pretrained",
                       os.path.join(self.local, "base"), "--patch",
                       "s3://out/run2/p.safetensors", "--out", applied)
        self.assertEqual(read(os.path.join(applied, "model.safetensors")),
                         read(os.path.join(ref, "fused",
                                           "model.safetensors")))

    def test_3_a_run_that_fails_at_upload_leaves_no_object(self):
        # The patch goes to a bucket that does not exist: its upload fails
        # after the fused checkpoint's was started; nothing is committed.
        r = self.tailorctl(*self.fuse_args(
            "s3://models/m/base/", "s3://models/m/ft/",
            "s3://models/m/h.safetensors", "s3://out/run3/fused/",
            "s3://no-such-bucket/p.safetensors", "s3://out/run3/report.json"),
            expect=None)
        self.assertNotEqual(r.returncode, 0, r.stderr)
        self.assertIn("no-such-bucket", r.stderr)
        self.assertEqual(self.keys("out", "run3/"), [])

    def test_4_inspect_and_errors_name_the_uri(self):
        r = self.tailorctl("inspect", "s3://models/m/base/model.safetensors",
                           "-o", "json")
        self.assertIn("model.layers.0.mlp.proj.weight", r.stdout)
        missing = self.tailorctl("inspect", "s3://models/m/nothing.safetensors",
                                 expect=None)
        self.assertEqual(missing.returncode, 4, missing.stderr)
        self.assertIn("s3://models/m/nothing.safetensors", missing.stderr)
        bad = dict(self.env, AWS_ACCESS_KEY_ID="WRONG")
        r = subprocess.run([TAILORCTL, "inspect",
                            "s3://models/m/base/model.safetensors"],
                           env=bad, capture_output=True, text=True,
                           timeout=DEADLINE)
        self.assertEqual(r.returncode, 5, r.stderr)

    def test_5_a_part_failing_after_the_retries_leaves_nothing(self):
        # Every attempt at part 2 is refused: part 1 went up, so the
        # multipart upload exists and must be aborted.
        self.proxy.plan("rule:PUT:partNumber=2&:503")
        r = subprocess.run([TAILORCTL] + self.big_fuse("run5"),
                           env=self.proxied(), capture_output=True, text=True,
                           timeout=DEADLINE)
        self.assertEqual(r.returncode, 7, r.stderr)  # UNAVAILABLE
        self.assertIn("s3://out/run5/fused/model.safetensors", r.stderr)
        self.assertIn("no output was published", r.stderr)
        self.assertEqual(self.keys("out", "run5/"), [])
        self.assertEveryUploadAborted()
        self.assertEqual(self.scratch_left(), [])

    def test_6_sigterm_while_uploading_leaves_nothing(self):
        # Each part answered after 2 s: SIGTERM lands while the first part
        # of the fused shard is on its way; the run stops before the next.
        self.proxy.plan("rule:PUT:partNumber=:delay=2")
        proc = subprocess.Popen([TAILORCTL] + self.big_fuse("run6"),
                                env=self.proxied(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            self.proxy.wait_for(
                lambda rs: any("upload_id" in r for r in rs),
                "a CreateMultipartUpload")
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=DEADLINE)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.assertEqual(proc.returncode, 130, err)  # cancelled
        self.assertIn("cancelled", err)
        self.assertIn("no output was published", err)
        self.assertEqual(self.keys("out", "run6/"), [])
        self.assertEveryUploadAborted()
        puts = [r for r in self.proxy.requests()
                if r["method"] == "PUT" and "partNumber=" in r["path"]]
        self.assertLess(len(puts), 2, "parts kept going up after SIGTERM")
        self.assertEqual(self.scratch_left(), [])

    def test_8_inspect_with_a_cache_reads_the_header_only(self):
        self.proxy.plan()
        cache = os.path.join(self.tmp, "ref8-cache")
        r = subprocess.run(
            [TAILORCTL, "inspect", "s3://models/m/bbase/model.safetensors",
             "--cache-dir", cache, "-o", "json"], env=self.proxied(),
            capture_output=True, text=True, timeout=DEADLINE)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("model.layers.2.mlp.proj.weight", r.stdout)
        size = len(read(os.path.join(self.local, "bbase",
                                     "model.safetensors")))
        got = sum(q["bytes"] for q in self.proxy.requests()
                  if q["method"] == "GET")
        self.assertGreater(got, 0)
        self.assertLess(got, size // 16, "inspect downloaded %d of %d bytes"
                        % (got, size))
        self.assertEqual(os.listdir(os.path.join(cache, "entries")), [])

    def test_7_calibrate_to_s3_equals_a_local_calibrate(self):
        model = os.environ.get("DEMO_MODEL")
        self.assertTrue(model and os.path.isdir(model),
                        "DEMO_MODEL must name the demo checkpoint")
        data = os.path.join(self.tmp, "ref7-data.txt")
        with open(data, "w") as f:
            f.write("the quick brown fox jumps over the lazy dog " * 40)
        common = ["calibrate", "--quiet", "--model", model, "--data", data,
                  "--samples", "4", "--seq-len", "32", "--device", "cpu"]
        local = os.path.join(self.tmp, "ref7-h.safetensors")
        self.tailorctl(*common, "--out", local)
        self.tailorctl(*common, "--out", "s3://out/run7/h.safetensors")
        self.assertEqual(self.get("out", "run7/h.safetensors"), read(local))
        # Same overwrite rule as a local output: refused, untouched.
        again = self.tailorctl(*common, "--out", "s3://out/run7/h.safetensors",
                               expect=None)
        self.assertNotEqual(again.returncode, 0, again.stderr)
        self.assertIn("s3://out/run7/h.safetensors already exists",
                      again.stderr)
        self.assertEqual(self.get("out", "run7/h.safetensors"), read(local))
        self.assertEqual(self.keys("out", "run7/"), ["run7/h.safetensors"])
        self.assertEqual(self.scratch_left(), [])

    def test_9_shards_through_s3_assemble_to_a_local_fuse(self):
        # Issue #20: three shards upload their bundles to s3://, assemble
        # reads them from there; the outputs equal a single local run's.
        ref = self.local_fuse("ref9")
        mine = os.path.join(self.tmp, "run9")
        args = self.fuse_args(
            os.path.join(self.local, "base"), os.path.join(self.local, "ft"),
            os.path.join(self.local, "h.safetensors"),
            os.path.join(mine, "fused"), os.path.join(mine, "p.safetensors"),
            os.path.join(mine, "report.json"))
        for i in range(3):
            self.tailorctl(*args, "--shard", str(i), "--shards", "3",
                           "--shard-dir", "s3://out/shards9/")
        keys = self.keys("out", "shards9/")
        for i in range(3):
            self.assertIn("shards9/shard-%05d-of-00003/manifest.json" % i, keys)
        self.assertFalse(os.path.exists(os.path.join(mine, "fused")))
        self.tailorctl("assemble", *args[2:], "--shards", "3", "--from",
                       "s3://out/shards9/")
        for name in ("fused/model.safetensors", "fused/config.json",
                     "p.safetensors"):
            self.assertEqual(read(os.path.join(mine, name)),
                             read(os.path.join(ref, name)), name)
        # A missing bundle is named by its URI.
        self.s3.delete_object(Bucket="out",
                              Key="shards9/shard-00001-of-00003/manifest.json")
        r = self.tailorctl("assemble", *args[2:], "--overwrite", "--shards",
                           "3", "--from", "s3://out/shards9/", expect=None)
        self.assertNotEqual(r.returncode, 0, r.stderr)
        self.assertIn("s3://out/shards9/shard-00001-of-00003", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
