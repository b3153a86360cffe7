#!/usr/bin/python3
"""End to end through tailorctl and a loopback S3 server (issue #16).

s3rver (tests/storage/remote_fixture.py) on 127.0.0.1; fixtures uploaded and
results downloaded with boto3, an independent client; tailorctl reads and
writes through its libcurl backend (AWS_ENDPOINT_URL, path-style). Checks:
s3:// inputs to s3:// outputs give the bytes a local fuse of the same files
gives; a patch made from s3:// inputs applies to the local base; a run that
fails at upload time leaves no visible object; inspect reads a remote file.

Environment: TAILORCTL (the binary), TAILOR_SOURCE_DIR; the fixture's NODE,
NPM, S3RVER_PREFIX.
"""

import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest

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
        left = [n for n in os.listdir(self.tmp)
                if n not in ("s3", "local", "ref1", "ref2", "ref3", "credentials",
                             "config")]
        self.assertEqual(left, [], left)

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

    def test_5_shards_through_s3_assemble_to_a_local_fuse(self):
        # Issue #20: three shards upload their bundles to s3://, assemble
        # reads them from there; the outputs equal a single local run's.
        ref = self.local_fuse("ref5")
        mine = os.path.join(self.tmp, "run5")
        args = self.fuse_args(
            os.path.join(self.local, "base"), os.path.join(self.local, "ft"),
            os.path.join(self.local, "h.safetensors"),
            os.path.join(mine, "fused"), os.path.join(mine, "p.safetensors"),
            os.path.join(mine, "report.json"))
        for i in range(3):
            self.tailorctl(*args, "--shard", str(i), "--shards", "3",
                           "--shard-dir", "s3://out/shards5/")
        keys = self.keys("out", "shards5/")
        for i in range(3):
            self.assertIn("shards5/shard-%05d-of-00003/manifest.json" % i, keys)
        self.assertFalse(os.path.exists(os.path.join(mine, "fused")))
        self.tailorctl("assemble", *args[2:], "--shards", "3", "--from",
                       "s3://out/shards5/")
        for name in ("fused/model.safetensors", "fused/config.json",
                     "p.safetensors"):
            self.assertEqual(read(os.path.join(mine, name)),
                             read(os.path.join(ref, name)), name)
        # A missing bundle is named by its URI.
        self.s3.delete_object(Bucket="out",
                              Key="shards5/shard-00001-of-00003/manifest.json")
        r = self.tailorctl("assemble", *args[2:], "--overwrite", "--shards",
                           "3", "--from", "s3://out/shards5/", expect=None)
        self.assertNotEqual(r.returncode, 0, r.stderr)
        self.assertIn("s3://out/shards5/shard-00001-of-00003", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
