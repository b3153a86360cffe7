#!/usr/bin/python3
"""The tailor_client package (client/python, installed by the build with
pip exactly as shipped) against a live tailord: submit from a dict, keyword
arguments and a YAML job file; watch() across a drain and a restart on the
same data directory (SIGTERM: the iterator resumes by itself, sequences
gap-free and without repeats); wait(); fetch() with its size and SHA-256
checks (a changed file on the server and corrupted chunks raise DataLoss,
nothing is left at the path); canonical codes as exceptions.

Environment (set by CTest): TAILORD, PYTHONPATH (the installed package).
"""

import glob
import hashlib
import json
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import grpc
import tailor_client
from tailor_client import pb

# Generous: the machine may be loaded.
DEADLINE = 300


def safetensors(tensors, metadata=None):
    """tensors: list of (name, shape, floats) as F32."""
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


def gram(rng, n, c):
    x = [[rng.gauss(0, 1) for _ in range(c)] for _ in range(n)]
    return [2.0 / n * sum(x[k][i] * x[k][j] for k in range(n))
            for i in range(c) for j in range(c)]


def write_pair(d, tag, count, rows, cols, seed):
    """A base and a fine-tuned checkpoint of `count` rows x cols tensors and
    their calibration file, under d/<tag>-*."""
    rng = random.Random(seed)
    base, ft, hess = [], [], []
    h = gram(rng, 3 * cols, cols)  # one Gram matrix serves every layer
    for i in range(count):
        w = [rng.gauss(0, 1) for _ in range(rows * cols)]
        name = "m.l%d.proj" % i
        base.append((name + ".weight", (rows, cols), w))
        ft.append((name + ".weight", (rows, cols),
                   [v + 0.3 * rng.gauss(0, 1) for v in w]))
        hess.append((name + ".hessian", (cols, cols), h))
    for sub, tensors in (("base", base), ("ft", ft)):
        os.mkdir(os.path.join(d, "%s-%s" % (tag, sub)))
        with open(os.path.join(d, "%s-%s" % (tag, sub),
                               "model.safetensors"), "wb") as f:
            f.write(safetensors(tensors))
    with open(os.path.join(d, "%s-h.safetensors" % tag), "wb") as f:
        f.write(safetensors(hess, {"format": "tailor-hessian/1",
                                   "nsamples": str(3 * cols)}))


class Tailord:
    """tailord on loopback with its log in a file."""

    def __init__(self, d, port=0, tag="0", extra_args=(), env=None):
        ready = os.path.join(d, "ready-%s.json" % tag)
        self.log_path = os.path.join(d, "tailord-%s.log" % tag)
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [os.environ["TAILORD"], "--listen", "127.0.0.1:%d" % port,
             "--metrics-listen", "127.0.0.1:0", "--data-dir",
             os.path.join(d, "data"), "--allowed-root", d, "--ready-file",
             ready, "--drain-timeout", "5", "--threads", "1"] +
            list(extra_args), stderr=self.log, env=env)
        end = time.monotonic() + DEADLINE
        while not os.path.exists(ready):
            if self.proc.poll() is not None:
                raise RuntimeError("tailord exited early:\n" + self.text())
            if time.monotonic() > end:
                raise RuntimeError("tailord did not start:\n" + self.text())
            time.sleep(0.05)
        with open(ready) as f:
            ports = json.load(f)
        self.port = ports["grpc_port"]
        self.metrics_port = ports["metrics_port"]
        self.address = "127.0.0.1:%d" % self.port

    def text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")[-4000:]

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=DEADLINE)
        self.log.close()
        return code


class FakeCall:
    """A ReadJobResult stream of prepared chunks."""

    def __init__(self, chunks):
        self.chunks = iter(chunks)
        self.cancelled = False

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.chunks)

    def cancel(self):
        self.cancelled = True


class FakeStub:
    def __init__(self, chunks):
        self.call = FakeCall(chunks)

    def ReadJobResult(self, request, metadata=None, timeout=None):
        return self.call


class ClientTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="tailor-pkg-")
        d = cls.tmp.name
        write_pair(d, "small", 2, 8, 12, 7)
        # Exact float64 compensation of many journalled tensors: seconds
        # even on an idle machine, so the drain lands while it runs.
        write_pair(d, "slow", 900, 48, 48, 11)
        cls.server = Tailord(d)
        cls.client = tailor_client.Client(cls.server.address)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        if cls.server.proc.poll() is None:
            cls.server.stop(signal.SIGKILL)
        cls.tmp.cleanup()

    def path(self, *names):
        return os.path.join(self.tmp.name, *names)

    def spec(self, tag, pair="small"):
        return {
            "pretrained": self.path(pair + "-base"),
            "tasks": [{"finetuned": self.path(pair + "-ft"),
                       "hessians": self.path(pair + "-h.safetensors"),
                       "label": "code"}],
            "keep": 0.25, "compensation": "exact",
            "patch_out": self.path(tag + ".patch.safetensors"),
            "device": "cpu",
        }

    def assertNoTemporaries(self, directory):
        left = glob.glob(os.path.join(directory, ".*tailor-fetch*"))
        self.assertEqual(left, [])

    def test_1_submit_wait_fetch(self):
        job = self.client.submit(self.spec("dict"), labels={"via": "dict"})
        self.assertTrue(job.name.startswith("fusionJobs/"), job.name)
        self.assertEqual(job.spec.compensation, pb.COMPENSATION_EXACT)
        done = self.client.wait(job, timeout=DEADLINE)
        self.assertEqual(done.state, pb.SUCCEEDED, done.error_message)
        self.assertEqual(done.result.tensors_fused, 2)

        with open(self.path("dict.patch.safetensors"), "rb") as f:
            on_disk = f.read()
        data = self.client.fetch(done, "patch")
        self.assertEqual(data, on_disk)
        out = self.path("fetched.patch.safetensors")
        self.assertEqual(self.client.fetch(job.name, "patch", out), out)
        with open(out, "rb") as f:
            self.assertEqual(f.read(), on_disk)
        with self.assertRaises(FileExistsError):
            self.client.fetch(job, "patch", out)
        self.client.fetch(job, "patch", out, overwrite=True)
        report = json.loads(self.client.fetch(job, "report"))
        self.assertIsInstance(report, dict)
        self.assertNoTemporaries(self.tmp.name)

        # The same job from keyword arguments (lambda_ for a keyword), and
        # by bare id.
        spec = self.spec("kwargs")
        again = self.client.submit(**spec)
        self.assertEqual(self.client.wait(again.name.split("/")[1],
                                          timeout=DEADLINE).state,
                         pb.SUCCEEDED)
        ta = self.client.submit(
            self.spec("ta"), method="task_arithmetic", lambda_=0.5,
            compensation=None, keep=None,
            tasks=[{"finetuned": self.path("small-ft")}])
        self.assertEqual(ta.spec.method, pb.METHOD_TASK_ARITHMETIC)
        self.assertAlmostEqual(getattr(ta.spec, "lambda"), 0.5)
        self.client.wait(ta, timeout=DEADLINE)
        listed = self.client.list(filter="labels.via=dict")
        self.assertEqual([j.name for j in listed], [job.name])
        # The package's small CLI.
        cli = subprocess.run(
            [sys.executable, "-m", "tailor_client", "--server",
             self.server.address, "list"], capture_output=True, text=True,
            timeout=DEADLINE)
        self.assertEqual(cli.returncode, 0, cli.stderr)
        self.assertIn(job.name + " SUCCEEDED", cli.stdout)
        cli = subprocess.run(
            [sys.executable, "-m", "tailor_client", "--server",
             self.server.address, "get", "fusionJobs/ffffffffffffffff"],
            capture_output=True, text=True, timeout=DEADLINE)
        self.assertEqual(cli.returncode, 1)
        self.assertIn("error: NOT_FOUND", cli.stderr)
        # The client never needs torch (calibrate imports it lazily).
        self.assertNotIn("torch", sys.modules)

    def test_2_yaml_job_file(self):
        os.mkdir(self.path("jobs"))
        job_file = self.path("jobs", "fuse.yaml")
        with open(job_file, "w") as f:
            f.write("# relative paths are relative to this file\n"
                    "pretrained: ../small-base\n"
                    "finetuned: [../small-ft]\n"
                    "hessians: ../small-h.safetensors\n"
                    "labels: [code]\n"
                    "keep: 0.25\n"
                    "compensation: exact\n"
                    "patch-out: ../yaml.patch.safetensors\n"
                    "device: cpu\n")
        job = self.client.submit(job_file)
        self.assertEqual(job.spec.pretrained, self.path("small-base"))
        self.assertEqual(job.spec.tasks[0].finetuned, self.path("small-ft"))
        self.assertEqual(job.spec.tasks[0].hessians,
                         self.path("small-h.safetensors"))
        self.assertEqual(job.spec.tasks[0].label, "code")
        self.assertEqual(job.spec.patch_out,
                         self.path("yaml.patch.safetensors"))
        done = self.client.wait(job, timeout=DEADLINE)
        self.assertEqual(done.state, pb.SUCCEEDED, done.error_message)
        with open(self.path("dict.patch.safetensors"), "rb") as a, open(
                self.path("yaml.patch.safetensors"), "rb") as b:
            self.assertEqual(a.read(), b.read())

    def test_3_errors_are_canonical_exceptions(self):
        with self.assertRaises(tailor_client.NotFound) as e:
            self.client.get("fusionJobs/ffffffffffffffff")
        self.assertIsInstance(e.exception, tailor_client.TailorError)
        self.assertEqual(e.exception.code, grpc.StatusCode.NOT_FOUND)
        self.assertTrue(e.exception.details)
        # Refused by the server, naming the field.
        bad = self.spec("bad")
        bad["keep"] = 1.5
        with self.assertRaises(tailor_client.InvalidArgument) as e:
            self.client.submit(bad)
        self.assertEqual(e.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("keep", e.exception.details)
        # Refused by the client before any call, naming the key.
        for spec, words in (({"kep": 0.1}, ["kep", "unknown key"]),
                            ({"keep": "high"}, ["keep", "number"]),
                            ({"method": "avg"}, ["method", "task_arithmetic"]),
                            ({"tasks": [{"finetuned": 3}]},
                             ["tasks[0].finetuned", "string"]),
                            ({"seed": -1}, ["seed", "range"])):
            with self.assertRaises(tailor_client.InvalidArgument) as e:
                self.client.submit(spec)
            for w in words:
                self.assertIn(w, str(e.exception))
            self.assertIsInstance(e.exception, ValueError)
        with self.assertRaises(tailor_client.InvalidArgument):
            self.client.fetch("fusionJobs/ffffffffffffffff", "weights")
        with self.assertRaises(tailor_client.NotFound):
            self.client.fetch("fusionJobs/ffffffffffffffff", "patch")
        with self.assertRaises(tailor_client.NotFound):
            list(self.client.watch("fusionJobs/ffffffffffffffff"))
        # A job that fails: wait() raises JobFailed with the job's code.
        broken = self.spec("broken")
        broken["tasks"][0]["hessians"] = self.path("slow-h.safetensors")
        try:
            job = self.client.submit(broken)
        except tailor_client.InvalidArgument as e:
            self.fail("refused at submit, expected a failed job: %s" % e)
        with self.assertRaises(tailor_client.JobFailed) as e:
            self.client.wait(job, timeout=DEADLINE)
        self.assertEqual(e.exception.job.state, pb.FAILED)
        self.assertNotEqual(e.exception.code, grpc.StatusCode.OK)
        self.assertIn(job.name, e.exception.details)
        self.assertEqual(self.client.wait(job, check=False).state, pb.FAILED)
        with self.assertRaises(tailor_client.FailedPrecondition):
            self.client.fetch(job, "patch")

    def test_4_fetch_checks_size_and_digest(self):
        job = self.client.submit(self.spec("digest"))
        self.client.wait(job, timeout=DEADLINE)
        patch = self.path("digest.patch.safetensors")
        with open(patch, "rb") as f:
            good = f.read()
        sha = hashlib.sha256(good).hexdigest()
        half = len(good) // 2

        def chunks(*parts):
            return [pb.ResultChunk(offset=o, data=d, total_size=t, sha256=s)
                    for o, d, t, s in parts]

        cases = {
            "a flipped byte": chunks(
                (0, good[:half], len(good), ""),
                (half, bytes([good[half] ^ 1]) + good[half + 1:], len(good),
                 sha)),
            "a missing chunk": chunks((0, good[:half], len(good), sha)),
            "a gap": chunks((0, good[:half], len(good), ""),
                            (half + 1, good[half + 1:], len(good), sha)),
            "no digest": chunks((0, good, len(good), "")),
            "a wrong size": chunks((0, good, len(good) - 1, sha)),
            "nothing": [],
        }
        real = self.client._stub
        try:
            for what, stream in cases.items():
                for target in (None, self.path("corrupt.bin")):
                    self.client._stub = FakeStub(stream)
                    with self.assertRaises(tailor_client.DataLoss,
                                           msg=what) as e:
                        self.client.fetch(job, "patch", target)
                    self.assertEqual(e.exception.code,
                                     grpc.StatusCode.DATA_LOSS)
                    self.assertFalse(os.path.exists(self.path("corrupt.bin")),
                                     what)
            self.client._stub = FakeStub(chunks(
                (0, good[:half], len(good), ""),
                (half, good[half:], len(good), sha)))
            self.assertEqual(self.client.fetch(job, "patch"), good)
        finally:
            self.client._stub = real
        self.assertNoTemporaries(self.tmp.name)

        # The file changed on the server after the job wrote it: tailord
        # refuses to serve other bytes (DATA_LOSS); nothing is written.
        with open(patch, "r+b") as f:
            f.seek(len(good) - 1)
            f.write(bytes([good[-1] ^ 0xFF]))
        with self.assertRaises(tailor_client.DataLoss):
            self.client.fetch(job, "patch")
        with self.assertRaises(tailor_client.DataLoss):
            self.client.fetch(job, "patch", self.path("changed.bin"))
        self.assertFalse(os.path.exists(self.path("changed.bin")))
        self.assertNoTemporaries(self.tmp.name)

    def test_5_watch_resumes_across_drain_and_restart(self):
        job = self.client.submit(self.spec("slow", pair="slow"),
                                 float64=True)
        events, failure = [], []

        def watch():
            try:
                for e in self.client.watch(job, reconnect_timeout=DEADLINE):
                    events.append(e)
            except Exception as e:  # reported by the main thread
                failure.append(e)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        end = time.monotonic() + DEADLINE
        while not any(e.HasField("progress") and
                      e.progress.tensors_done >= 1 for e in events):
            self.assertFalse(failure, failure)
            self.assertLess(time.monotonic(), end, "no progress event")
            time.sleep(0.01)
        port = self.server.port
        self.assertEqual(self.server.stop(signal.SIGTERM), 0)
        seen_at_drain = len(events)
        states = [e.state_change.state for e in events
                  if e.HasField("state_change")]
        self.assertNotIn(pb.SUCCEEDED, states,
                         "the job finished before the drain; make it slower")
        time.sleep(1)  # the watch is reconnecting meanwhile
        type(self).server = Tailord(self.tmp.name, port=port, tag="1")
        self.assertEqual(self.server.port, port)
        watcher.join(DEADLINE)
        self.assertFalse(watcher.is_alive(), "watch did not end")
        self.assertFalse(failure, failure)
        seqs = [e.sequence for e in events]
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)))
        self.assertGreater(len(seqs), seen_at_drain)
        states = [e.state_change.state for e in events
                  if e.HasField("state_change")]
        # Requeued by the drain, running again after the restart.
        self.assertEqual(states[-1], pb.SUCCEEDED, states)
        self.assertIn(pb.QUEUED, states[1:], states)
        done = self.client.wait(job, timeout=DEADLINE)
        self.assertEqual(done.state, pb.SUCCEEDED)
        self.assertEqual(done.last_sequence, seqs[-1])
        # Resuming from a sequence replays the rest only.
        tail = [e.sequence for e in self.client.watch(job, seqs[-3])]
        self.assertEqual(tail, seqs[-2:])

    def test_6_watch_gives_up_after_reconnect_timeout(self):
        job = self.client.submit(self.spec("last"))
        self.client.wait(job, timeout=DEADLINE)
        self.assertEqual(self.server.stop(signal.SIGTERM), 0)
        start = time.monotonic()
        with self.assertRaises(tailor_client.Unavailable) as e:
            list(self.client.watch(job, reconnect_timeout=2))
        self.assertLess(time.monotonic() - start, 60)
        self.assertIn("after_sequence=0", e.exception.details)


class SpecTest(unittest.TestCase):
    """Job files and dicts, without a server."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="tailor-spec-")

    def tearDown(self):
        self.tmp.cleanup()

    def job_file(self, text):
        path = os.path.join(self.tmp.name, "job.yaml")
        with open(path, "w") as f:
            f.write(text)
        return path

    def refused(self, text, *words):
        with self.assertRaises(tailor_client.InvalidArgument) as e:
            tailor_client.load_job_file(self.job_file(text))
        message = str(e.exception)
        self.assertIn("job.yaml", message)
        for w in words:
            self.assertIn(w, message)

    def test_job_file_forms(self):
        spec = tailor_client.load_job_file(self.job_file(
            "pretrained: base\n"
            "tasks:\n"
            "  - {finetuned: ./a, hessians: s3://b/h.safetensors, keep: 1e-1}\n"
            "  - {patch: /abs/p.safetensors, label: 123}\n"
            "dead-columns: select\nseed: 42\nfloat64: yes\n"
            "include: 'layers\\.0\\..*'\nout: .\n"))
        root = os.path.realpath(self.tmp.name)
        self.assertEqual(spec["pretrained"], os.path.join(root, "base"))
        self.assertEqual(spec["out"], root)
        self.assertEqual(spec["tasks"][0], {
            "finetuned": os.path.join(root, "a"),
            "hessians": "s3://b/h.safetensors", "keep": 0.1})
        self.assertEqual(spec["tasks"][1], {"patch": "/abs/p.safetensors",
                                            "label": "123"})
        self.assertEqual(spec["seed"], 42)
        self.assertIs(spec["float64"], True)
        self.assertEqual(spec["include"], ["layers\\.0\\..*"])
        proto = tailor_client.spec_from_dict(spec)
        self.assertEqual(proto.dead_columns, pb.DEAD_COLUMNS_SELECT)

    def test_layer_gradients(self):
        # Lists over the layers (issue #19 point 3) go to layer_gradients;
        # numbers stay the scalar fields.
        spec = tailor_client.load_job_file(self.job_file(
            "pretrained: base\nfinetuned: [a]\nmethod: ties\n"
            "density: [1, 0.7, 0.1]\nlambda: 0.5\n"))
        self.assertEqual(spec["density"], [1.0, 0.7, 0.1])
        proto = tailor_client.spec_from_dict(spec)
        self.assertEqual(list(proto.layer_gradients.density), [1.0, 0.7, 0.1])
        self.assertFalse(proto.HasField("density"))
        self.assertEqual(proto.lambda_ if hasattr(proto, "lambda_") else
                         getattr(proto, "lambda"), 0.5)
        with self.assertRaises(tailor_client.InvalidArgument) as e:
            tailor_client.spec_from_dict({"t": [0.5, "x"]})
        self.assertIn("t[1]", str(e.exception))
        with self.assertRaises(tailor_client.InvalidArgument) as e:
            tailor_client.spec_from_dict({"keep": []})
        self.assertIn("1 to 1024", str(e.exception))
        self.refused("keep: [0.1, lots]\n", "keep[1]", "a number")

    def test_job_file_errors_name_file_and_key(self):
        self.refused("pretrained: a\nbogus: 1\n", "bogus", "unknown key")
        self.refused("keep: lots\n", "keep", "a number")
        self.refused("patch_out: a\npatch-out: b\n", "given twice")
        self.refused("tasks: [{patch: a}]\nfinetuned: b\n", "cannot be combined")
        self.refused("finetuned: [a, b]\nhessians: [h]\n", "hessians", "pair")
        self.refused("tasks: [{weights: a}]\n", "tasks[0].weights")
        self.refused("- a\n- b\n", "mapping")
        self.refused("pretrained: [a\n", "YAML")
        with self.assertRaises(FileNotFoundError):
            tailor_client.load_job_file(os.path.join(self.tmp.name, "none"))

    def test_client_arguments(self):
        with self.assertRaises(tailor_client.InvalidArgument):
            tailor_client.Client("127.0.0.1:1", client_cert="c.pem")
        with self.assertRaises(tailor_client.InvalidArgument):
            tailor_client.Client("127.0.0.1:1", token="a\nb")
        with self.assertRaises(tailor_client.InvalidArgument):
            tailor_client.job_name("")


if __name__ == "__main__":
    unittest.main(verbosity=2)
