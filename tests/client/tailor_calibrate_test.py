#!/usr/bin/python3
"""tailor_client.calibrate against `tailorctl calibrate` (issue #18).

A PyTorch LLaMA written here (the semantics of src/model/llama.cc: RMSNorm
statistics in float32, rotate-half RoPE, causal softmax in float32, SwiGLU,
Hugging Face weight names) is loaded with the weights of the demo
checkpoint tailor generates (make_demo_checkpoint: BF16, sharded with an
index) and run on the same token windows `tailorctl calibrate` cuts from a
byte file (evenly spaced, src/model/calibrate.cc). Every Hessian must match
tailorctl's file within 1e-5 relative, with the same keys, aliases,
nsamples and header bytes. Then the generic rules on other modules: the
alias found by input identity, include patterns, tied weights, differing
row counts, progress, errors leaving nothing behind.

Environment (set by CTest): TAILORCTL, DEMO_MODEL (the demo checkpoint
directory), PYTHONPATH (the installed package).
"""

import collections
import json
import math
import os
import struct
import subprocess
import tempfile
import unittest

import numpy as np
import torch
from tailor_client import InvalidArgument, calibrate

REL_TOL = 1e-5


def read_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        raw = f.read(n)
    return raw, json.loads(raw), 8 + n


def read_safetensors(path):
    """{name: float32 torch tensor} and the metadata."""
    _, header, base = read_header(path)
    with open(path, "rb") as f:
        blob = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        lo, hi = e["data_offsets"]
        data = blob[base + lo:base + hi]
        if e["dtype"] == "BF16":
            bits = np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16
            array = bits.view(np.float32)
        elif e["dtype"] == "F32":
            array = np.frombuffer(data, dtype="<f4")
        else:
            raise ValueError("%s: dtype %s" % (name, e["dtype"]))
        out[name] = torch.from_numpy(array.copy()).reshape(e["shape"])
    return out, header.get("__metadata__", {})


def write_safetensors(path, tensors):
    """{name: tensor} as F32."""
    header, blobs, offset = {}, [], 0
    for name, t in sorted(tensors.items()):
        blob = t.detach().float().contiguous().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def read_checkpoint(directory):
    index = os.path.join(directory, "model.safetensors.index.json")
    if not os.path.exists(index):
        files = [os.path.join(directory, "model.safetensors")]
    else:
        with open(index) as f:
            files = sorted({os.path.join(directory, name)
                            for name in json.load(f)["weight_map"].values()})
    tensors = {}
    for f in files:
        tensors.update(read_safetensors(f)[0])
    return tensors


class RmsNorm(torch.nn.Module):
    def __init__(self, h, eps):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(h))
        self.eps = eps

    def forward(self, x):
        xf = x.to(torch.float32)
        variance = xf.pow(2).mean(-1, keepdim=True)
        normed = xf * torch.rsqrt(variance + self.eps)
        return self.weight * normed.to(x.dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def repeat_kv(x, rep):
    if rep == 1:
        return x
    b, kv, t, d = x.shape
    return x[:, :, None].expand(b, kv, rep, t, d).reshape(b, kv * rep, t, d)


class Attention(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        h, self.heads = c["hidden_size"], c["num_attention_heads"]
        self.kv = c.get("num_key_value_heads", self.heads)
        self.d = h // self.heads
        lin = lambda i, o: torch.nn.Linear(i, o, bias=False)  # noqa: E731
        self.q_proj = lin(h, self.heads * self.d)
        self.k_proj = lin(h, self.kv * self.d)
        self.v_proj = lin(h, self.kv * self.d)
        self.o_proj = lin(self.heads * self.d, h)

    def forward(self, x, cos, sin, mask):
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.heads, self.d).transpose(1, 2)
        k = self.k_proj(x).reshape(b, t, self.kv, self.d).transpose(1, 2)
        v = self.v_proj(x).reshape(b, t, self.kv, self.d).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = repeat_kv(k, self.heads // self.kv)
        v = repeat_kv(v, self.heads // self.kv)
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 /
                                                         math.sqrt(self.d))
        scores = scores.masked_fill(mask, float("-inf"))
        probs = torch.softmax(scores, -1, dtype=torch.float32).to(x.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(
            b, t, self.heads * self.d)
        return self.o_proj(out)


class Mlp(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        h, i = c["hidden_size"], c["intermediate_size"]
        self.gate_proj = torch.nn.Linear(h, i, bias=False)
        self.up_proj = torch.nn.Linear(h, i, bias=False)
        self.down_proj = torch.nn.Linear(i, h, bias=False)

    def forward(self, x):
        return self.down_proj(torch.nn.functional.silu(self.gate_proj(x)) *
                              self.up_proj(x))


class Layer(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        eps = c.get("rms_norm_eps", 1e-6)
        self.self_attn = Attention(c)
        self.mlp = Mlp(c)
        self.input_layernorm = RmsNorm(c["hidden_size"], eps)
        self.post_attention_layernorm = RmsNorm(c["hidden_size"], eps)

    def forward(self, h, cos, sin, mask):
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class Decoder(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(c["vocab_size"],
                                               c["hidden_size"])
        self.layers = torch.nn.ModuleList(
            Layer(c) for _ in range(c["num_hidden_layers"]))
        self.norm = RmsNorm(c["hidden_size"], c.get("rms_norm_eps", 1e-6))


class Llama(torch.nn.Module):
    """LlamaForCausalLM as src/model/llama.cc computes it (no padding, no
    cache, positions 0..T-1)."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.model = Decoder(c)
        self.lm_head = torch.nn.Linear(c["hidden_size"], c["vocab_size"],
                                       bias=False)
        if c.get("tie_word_embeddings", False):
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, tokens):
        t = tokens.shape[1]
        d = self.c["hidden_size"] // self.c["num_attention_heads"]
        theta = self.c.get("rope_theta", 10000.0)
        inv_freq = torch.reciprocal(torch.pow(
            theta, torch.arange(0, d, 2).to(torch.float32) / d))
        freqs = torch.outer(torch.arange(t, dtype=torch.float32), inv_freq)
        angles = torch.cat([freqs, freqs], -1)
        cos, sin = angles.cos(), angles.sin()
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        h = self.model.embed_tokens(tokens)
        for layer in self.model.layers:
            h = layer(h, cos, sin, mask)
        return self.lm_head(self.model.norm(h)).float()


def windows(data, samples, seq_len):
    """calibrate.cc's EvenlySpacedWindows over a byte stream."""
    stream = torch.tensor(list(data), dtype=torch.long)
    span = stream.numel() - seq_len
    rows = [stream[(0 if samples == 1 else i * span // (samples - 1)):][
        :seq_len] for i in range(samples)]
    return torch.stack(rows)


class MatchesTailorctl(unittest.TestCase):
    SAMPLES, SEQ_LEN, BATCH = 6, 40, 4

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="tailor-calib-")
        model_dir = os.environ["DEMO_MODEL"]
        with open(os.path.join(model_dir, "config.json")) as f:
            cls.config = json.load(f)
        cls.model = Llama(cls.config)
        weights = read_checkpoint(model_dir)
        missing = cls.model.load_state_dict(weights, strict=True)
        assert not missing.missing_keys and not missing.unexpected_keys
        text = "".join("def f%d(x):\n    return x * %d  # calibration\n" %
                       (i, i) for i in range(40)).encode()
        cls.data = os.path.join(cls.tmp.name, "data.txt")
        with open(cls.data, "wb") as f:
            f.write(text)
        cls.reference = os.path.join(cls.tmp.name, "tailorctl.safetensors")
        subprocess.run(
            [os.environ["TAILORCTL"], "calibrate", "--model", model_dir,
             "--data", cls.data, "--out", cls.reference, "--samples",
             str(cls.SAMPLES), "--seq-len", str(cls.SEQ_LEN), "--batch-size",
             str(cls.BATCH), "--device", "cpu", "-q"], check=True,
            timeout=600)
        cls.tokens = windows(text, cls.SAMPLES, cls.SEQ_LEN)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def batches(self):
        return [self.tokens[i:i + self.BATCH]
                for i in range(0, self.SAMPLES, self.BATCH)]

    def test_every_hessian_key_alias_and_count_match(self):
        out = os.path.join(self.tmp.name, "python.safetensors")
        seen = []
        result = calibrate.collect(self.model, self.batches(), out,
                                   progress=lambda d, t: seen.append((d, t)))
        self.assertEqual(seen, [(1, 2), (2, 2)])
        ours, our_md = read_safetensors(out)
        theirs, their_md = read_safetensors(self.reference)
        self.assertEqual(sorted(ours), sorted(theirs))
        self.assertEqual(our_md["format"], "tailor-hessian/1")
        self.assertEqual(our_md["nsamples"], their_md["nsamples"])
        self.assertEqual(int(our_md["nsamples"]),
                         self.SAMPLES * self.SEQ_LEN)
        self.assertEqual(json.loads(our_md["aliases"]),
                         json.loads(their_md["aliases"]))
        self.assertEqual(len(json.loads(our_md["aliases"])),
                         3 * self.config["num_hidden_layers"])
        for key in sorted(theirs):
            a, b = ours[key].double(), theirs[key].double()
            err = (a - b).abs().max().item()
            scale = b.abs().max().item()
            self.assertGreater(scale, 0, key)
            self.assertLessEqual(err, REL_TOL * scale,
                                 "%s: max |diff| %g vs max |H| %g" %
                                 (key, err, scale))
        # Same layout byte for byte: header (metadata, key order, shapes,
        # offsets, padding) and size.
        self.assertEqual(read_header(out)[0], read_header(self.reference)[0])
        self.assertEqual(os.path.getsize(out),
                         os.path.getsize(self.reference))
        self.assertEqual(result.nsamples, self.SAMPLES * self.SEQ_LEN)
        self.assertEqual(result.aliases, json.loads(their_md["aliases"]))
        for module in self.model.modules():  # hooks removed
            self.assertEqual(len(module._forward_pre_hooks), 0)

    def test_include_restricts_and_output_is_never_replaced(self):
        out = os.path.join(self.tmp.name, "layer0.safetensors")
        calibrate.collect(self.model, self.batches(), out,
                          include=["model.layers.0.*"])
        ours, md = read_safetensors(out)
        theirs, _ = read_safetensors(self.reference)
        self.assertEqual(sorted(ours), sorted(
            k for k in theirs if k.startswith("model.layers.0.")))
        self.assertTrue(all(k.startswith("model.layers.0.")
                            for k in json.loads(md["aliases"])))
        for key in ours:
            self.assertTrue(torch.allclose(ours[key], theirs[key],
                                           rtol=0, atol=REL_TOL *
                                           theirs[key].abs().max().item()))
        with self.assertRaises(FileExistsError):
            calibrate.collect(self.model, self.batches(), out)
        with self.assertRaises(InvalidArgument):
            calibrate.collect(self.model, self.batches(),
                              os.path.join(self.tmp.name, "none.st"),
                              include="vision_tower.*")


class GenericModules(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="tailor-calib-")
        torch.manual_seed(3)

    def tearDown(self):
        self.tmp.cleanup()

    def out(self, name="h.safetensors"):
        return os.path.join(self.tmp.name, name)

    def test_shared_inputs_tied_weights_and_row_counts(self):
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.embed = torch.nn.Embedding(11, 6)
                self.a = torch.nn.Linear(6, 5)
                self.b = torch.nn.Linear(6, 3)       # same input as a
                self.c = torch.nn.Linear(6, 4)       # same shape, new tensor
                self.vision = torch.nn.Linear(7, 6)  # other row count
                self.head = torch.nn.Linear(6, 11, bias=False)
                self.head.weight = self.embed.weight  # tied: skipped

            def forward(self, ids, pixels):
                x = self.embed(ids)
                y = self.a(x).sum() + self.b(x).sum()
                z = self.c(x * 2)
                v = self.vision(pixels)
                return self.head(x + z.sum() + v.mean()) + y

        net = Net()
        # Mappings as keyword inputs: dicts, and UserDicts (transformers'
        # BatchEncoding is one).
        batches = [{"ids": torch.randint(0, 11, (2, 5)),
                    "pixels": torch.randn(3, 4, 7)} for _ in range(3)]
        batches[1] = collections.UserDict(batches[1])
        result = calibrate.collect(net, iter(batches), self.out())
        ours, md = read_safetensors(self.out())
        self.assertEqual(sorted(ours), ["a.hessian", "c.hessian",
                                        "vision.hessian"])
        self.assertEqual(json.loads(md["aliases"]), {"b.weight": "a.hessian"})
        self.assertEqual(json.loads(md["nsamples_by_key"]),
                         {"a.hessian": 30, "c.hessian": 30,
                          "vision.hessian": 36})
        self.assertEqual(md["nsamples"], "30")
        self.assertEqual(result.rows["vision.hessian"], 36)
        with torch.no_grad():
            x = torch.cat([net.embed(b["ids"]).reshape(-1, 6)
                           for b in batches]).double()
            p = torch.cat([b["pixels"].reshape(-1, 7)
                           for b in batches]).double()
        for key, rows in (("a.hessian", x), ("c.hessian", 2 * x),
                          ("vision.hessian", p)):
            want = (2.0 / rows.shape[0]) * rows.t() @ rows
            self.assertLessEqual(
                (ours[key].double() - want).abs().max().item(),
                REL_TOL * want.abs().max().item(), key)

        # tailor reads the file (aliases, nsamples_by_key) in a real fusion.
        weights = {n + ".weight": getattr(net, n).weight.detach()
                   for n in ("a", "b", "c", "vision")}
        for sub, delta in (("base", 0.0), ("ft", 0.1)):
            os.mkdir(os.path.join(self.tmp.name, sub))
            write_safetensors(
                os.path.join(self.tmp.name, sub, "model.safetensors"),
                {k: v + delta * torch.randn_like(v)
                 for k, v in weights.items()})
        fused = subprocess.run(
            [os.environ["TAILORCTL"], "fuse", "--local", "--pretrained",
             os.path.join(self.tmp.name, "base"), "--finetuned",
             os.path.join(self.tmp.name, "ft"), "--hessians", self.out(),
             "--keep", "0.5", "--compensation", "exact", "--patch-out",
             os.path.join(self.tmp.name, "p.safetensors"), "--device", "cpu",
             "-q"], capture_output=True, text=True, timeout=600)
        self.assertEqual(fused.returncode, 0, fused.stderr)

    def test_errors_leave_nothing_behind(self):
        net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(),
                                  torch.nn.Linear(4, 2))

        def batches():
            yield torch.randn(3, 4)
            yield torch.randn(3, 5)  # wrong width: the forward raises

        with self.assertRaises(RuntimeError):
            calibrate.collect(net, batches(), self.out())
        self.assertEqual(os.listdir(self.tmp.name), [])
        for m in net.modules():
            self.assertEqual(len(m._forward_pre_hooks), 0)
        self.assertTrue(net.training)  # mode restored
        with self.assertRaises(InvalidArgument):
            calibrate.collect(net, [], self.out())
        self.assertEqual(os.listdir(self.tmp.name), [])
        with self.assertRaises(InvalidArgument):
            calibrate.collect(torch.nn.ReLU(), [torch.randn(2)], self.out())
        # A plain tensor batch, a tuple batch: both accepted.
        calibrate.collect(net, [torch.randn(2, 4), (torch.randn(1, 4),)],
                          self.out())
        _, md = read_safetensors(self.out())
        self.assertEqual(md["nsamples"], "3")


if __name__ == "__main__":
    unittest.main(verbosity=2)
