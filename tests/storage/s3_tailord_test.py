#!/usr/bin/python3
"""tailord jobs on s3:// through a loopback S3 server (issue #16).

s3rver and the fault proxy with its request log (tests/storage/
remote_fixture.py); fixtures uploaded and results listed and downloaded with
boto3; tailord started here with `--allowed-root s3://...` and AWS_* in its
environment; jobs submitted with the tailor_client package.

  1. s3:// base, task and calibration to s3:// outputs give the bytes of a
     local `tailorctl fuse --local` of the same files, and the remote
     metrics move on /metrics.
  2. A job cancelled (CancelFusionJob) while its parts upload slowly ends
     CANCELLED with nothing visible, every multipart upload it began
     aborted (on the wire: s3rver 3.7.1 has no AbortMultipartUpload nor
     ListMultipartUploads, see s3_e2e_test.py).
  3. A tailord killed (SIGKILL) while uploading leaves its staging and the
     ids of its started uploads under the data directory; the restarted
     tailord aborts those uploads, removes the staging, and the requeued job
     publishes the correct bytes, nothing being visible before.

Environment (set by CTest): TAILORD, TAILORCTL, PYTHONPATH (the installed
tailor_client package); the fixture's NODE, NPM, S3RVER_PREFIX.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import remote_fixture  # noqa: E402
from s3_e2e_test import (FaultProxy, read, start_fixture,  # noqa: E402
                         stop_fixture, write_big, write_models)

import tailor_client  # noqa: E402
from tailor_client import pb  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(HERE), "client"))
import tailor_client_test  # noqa: E402

TAILORCTL = os.environ.get("TAILORCTL", "tailorctl")
DEADLINE = 600  # generous: the machine may be loaded


class Tailord(tailor_client_test.Tailord):
    """tailord on loopback (tests/client/tailor_client_test.py), its data
    under `d`, the s3:// roots and AWS_* from `env`."""

    def __init__(self, d, env, tag):
        os.makedirs(d, exist_ok=True)
        super().__init__(d, tag=tag, env=env, extra_args=[
            "--allowed-root", "s3://models/m/", "--allowed-root",
            "s3://out/"])
        self.client = tailor_client.Client(self.address)

    def metric(self, name):
        """The sum of every sample of metric `name` on /metrics."""
        with urllib.request.urlopen(
                "http://127.0.0.1:%d/metrics" % self.metrics_port,
                timeout=60) as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self, sig=signal.SIGTERM):
        self.client.close()
        return super().stop(sig)


class S3TailordTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="s3-tailord-")
        os.makedirs(os.path.join(cls.tmp, "s3"))
        cls.server, info = start_fixture(
            "s3rver", "--dir", os.path.join(cls.tmp, "s3"), "--bucket",
            "models", "--bucket", "out")
        cls.port = info["port"]
        cls.s3 = remote_fixture.s3_client(cls.port)
        cls.local = os.path.join(cls.tmp, "local")
        write_models(cls.local)
        write_big(cls.local)
        for key, path in (("m/base/model.safetensors", "base/model.safetensors"),
                          ("m/base/config.json", "base/config.json"),
                          ("m/ft/model.safetensors", "ft/model.safetensors"),
                          ("m/h.safetensors", "h.safetensors"),
                          ("m/bbase/model.safetensors",
                           "bbase/model.safetensors"),
                          ("m/bft/model.safetensors", "bft/model.safetensors")):
            with open(os.path.join(cls.local, path), "rb") as f:
                cls.s3.put_object(Bucket="models", Key=key, Body=f.read())
        cls.proxy = FaultProxy(cls.port, os.path.join(cls.tmp, "proxy.log"))
        for name in ("credentials", "config"):
            open(os.path.join(cls.tmp, name), "w").close()
        cls.env = {k: v for k, v in os.environ.items()
                   if not k.startswith("AWS_")}
        cls.env.update({
            "AWS_ACCESS_KEY_ID": remote_fixture.ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": remote_fixture.SECRET_KEY,
            "AWS_REGION": remote_fixture.REGION,
            "AWS_SHARED_CREDENTIALS_FILE": os.path.join(cls.tmp,
                                                        "credentials"),
            "AWS_CONFIG_FILE": os.path.join(cls.tmp, "config"),
            "TMPDIR": cls.tmp,
        })

    @classmethod
    def tearDownClass(cls):
        cls.proxy.stop()
        stop_fixture(cls.server)
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def endpoint(self, proxied):
        port = self.proxy.port if proxied else self.port
        return dict(self.env, AWS_ENDPOINT_URL="http://127.0.0.1:%d" % port)

    def tailord(self, tag, proxied, data="d1"):
        d = Tailord(os.path.join(self.tmp, data), self.endpoint(proxied), tag)
        self.addCleanup(lambda: d.proc.poll() is None and d.stop(
            signal.SIGKILL))
        return d

    def keys(self, prefix):
        out = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(
                Bucket="out", Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return sorted(out)

    def get(self, key):
        return self.s3.get_object(Bucket="out", Key=key)["Body"].read()

    def big_spec(self, run):
        return {"method": "task_arithmetic", "lambda": 0.5,
                "pretrained": "s3://models/m/bbase/",
                "tasks": [{"finetuned": "s3://models/m/bft/"}],
                "out": "s3://out/%s/fused/" % run,
                "report": "s3://out/%s/report.json" % run, "device": "cpu"}

    def local_big_fuse(self, tag):
        out = os.path.join(self.tmp, tag)
        r = subprocess.run(
            [TAILORCTL, "fuse", "--local", "--quiet", "--method",
             "task_arithmetic", "--lambda", "0.5", "--pretrained",
             os.path.join(self.local, "bbase"), "--finetuned",
             os.path.join(self.local, "bft"), "--out", out],
            env=self.env, capture_output=True, text=True, timeout=DEADLINE)
        self.assertEqual(r.returncode, 0, r.stderr)
        return out

    def staging(self, data="d1"):
        d = os.path.join(self.tmp, data, "data", "remote-staging")
        return sorted(os.listdir(d)) if os.path.isdir(d) else []

    def test_1_s3_job_equals_a_local_fuse_and_counts_remote_bytes(self):
        ref = os.path.join(self.tmp, "ref1")
        r = subprocess.run(
            [TAILORCTL, "fuse", "--local", "--quiet", "--method", "tailor",
             "--keep", "0.25", "--pretrained",
             os.path.join(self.local, "base"), "--finetuned",
             os.path.join(self.local, "ft"), "--hessians",
             os.path.join(self.local, "h.safetensors"), "--out",
             os.path.join(ref, "fused"), "--patch-out",
             os.path.join(ref, "p.safetensors")],
            env=self.env, capture_output=True, text=True, timeout=DEADLINE)
        self.assertEqual(r.returncode, 0, r.stderr)
        d = self.tailord("1", proxied=False)
        self.assertEqual(d.metric("tailor_remote_read_bytes_total"), 0)
        job = d.client.submit({
            "method": "tailor", "keep": 0.25,
            "pretrained": "s3://models/m/base/",
            "tasks": [{"finetuned": "s3://models/m/ft/",
                       "hessians": "s3://models/m/h.safetensors"}],
            "out": "s3://out/j1/fused/", "patch_out": "s3://out/j1/p.safetensors",
            "report": "s3://out/j1/report.json", "device": "cpu"})
        done = d.client.wait(job, timeout=DEADLINE, check=False)
        self.assertEqual(done.state, pb.SUCCEEDED,
                         done.error_message + "\n" + d.text())
        self.assertEqual(self.get("j1/fused/model.safetensors"),
                         read(os.path.join(ref, "fused", "model.safetensors")))
        self.assertEqual(self.get("j1/fused/config.json"),
                         read(os.path.join(ref, "fused", "config.json")))
        self.assertEqual(self.get("j1/p.safetensors"),
                         read(os.path.join(ref, "p.safetensors")))
        self.assertIn("tensors", json.loads(self.get("j1/report.json")))
        inputs = sum(len(read(os.path.join(self.local, p))) for p in
                     ("base/model.safetensors", "ft/model.safetensors",
                      "h.safetensors"))
        self.assertGreaterEqual(d.metric("tailor_remote_read_bytes_total"),
                                inputs // 2)
        self.assertGreater(d.metric("tailor_remote_written_bytes_total"), 0)
        self.assertGreater(d.metric("tailor_remote_requests_total"), 0)
        self.assertEqual(self.staging(), [])
        d.stop()

    def test_2_a_job_cancelled_while_uploading_leaves_nothing(self):
        self.proxy.plan("rule:PUT:partNumber=:delay=2")
        d = self.tailord("2", proxied=True, data="d2")
        job = d.client.submit(self.big_spec("j2"))
        self.proxy.wait_for(lambda rs: any("upload_id" in r for r in rs),
                            "a CreateMultipartUpload")
        d.client.cancel(job)
        done = d.client.wait(job, timeout=DEADLINE, check=False)
        self.assertEqual(done.state, pb.CANCELLED,
                         done.error_message + "\n" + d.text())
        self.assertIn("no output was published", done.error_message)
        self.assertEqual(self.keys("j2/"), [])
        started = self.proxy.started_uploads()
        aborted = self.proxy.aborted_uploads()
        self.assertTrue(started)
        for upload_id, path in started.items():
            self.assertEqual(aborted.get(upload_id), path, upload_id)
        self.assertEqual(self.staging("d2"), [])
        d.stop()

    def test_3_killed_while_uploading_then_restarted(self):
        ref = self.local_big_fuse("ref3")
        self.proxy.plan("rule:PUT:partNumber=:delay=3")
        d = self.tailord("3a", proxied=True, data="d3")
        job = d.client.submit(self.big_spec("j3"))
        self.proxy.wait_for(lambda rs: any("upload_id" in r for r in rs),
                            "a CreateMultipartUpload")
        d.stop(signal.SIGKILL)
        started = self.proxy.started_uploads()
        self.assertTrue(started)
        # Left behind: the staging and the record of the started uploads.
        left = self.staging("d3")
        self.assertTrue(any(n.endswith(".tailor-uploads") for n in left), left)
        self.assertTrue(any(".tailor-stage-" in n for n in left), left)
        self.assertEqual(self.keys("j3/"), [])

        self.proxy.plan()  # full speed from here
        d = self.tailord("3b", proxied=True, data="d3")
        aborted = self.proxy.aborted_uploads()
        for upload_id, path in started.items():
            self.assertEqual(aborted.get(upload_id), path,
                             "%s not aborted at startup:\n%s" % (upload_id,
                                                                 d.text()))
        done = d.client.wait(job, timeout=DEADLINE, check=False)
        self.assertEqual(done.state, pb.SUCCEEDED,
                         done.error_message + "\n" + d.text())
        self.assertEqual(self.keys("j3/"), ["j3/fused/model.safetensors",
                                            "j3/report.json"])
        self.assertEqual(self.get("j3/fused/model.safetensors"),
                         read(os.path.join(ref, "model.safetensors")))
        self.assertEqual(self.staging("d3"), [])
        d.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
