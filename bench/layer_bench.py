#!/usr/bin/python3
"""Model Tailor against a plain PyTorch script of the same math, same run.

Generates (under --workdir, never in the repository):
  * one LLaMA-7B decoder layer: q/k/v/o 4096x4096, gate/up 11008x4096,
    down 4096x11008, BF16, base + fine-tuned (delta ~ 0.1 x the weights'
    scale), and a calibration file whose aliases share the q/k/v and the
    gate/up Hessians (SPD: H_ij = s_i s_j 0.5^|i-j|, F32);
  * optionally (--with-1b, or --only-1b without the layer) a
    LLaMA-3.2-1B-shaped pair for the data-free methods: hidden 2048,
    intermediate 8192, 16 layers, 8 KV heads, vocab 128256, tied
    embeddings (no lm_head), BF16, one model.safetensors of 2.47 GB each
    as the released model, written tensor by tensor.
Then runs, interleaved, `tailorctl fuse --local` and the reference below,
and prints a table with ratios, the GEMM rate of this machine, the kernel's
roofline fraction and a projection for a whole 7B model; for task
arithmetic also the time of `dd` reading both inputs and writing + fsyncing
an output of the same size (the I/O floor), the ratio dd / ours and the
peak RSS of the tailorctl process (wait4's ru_maxrss), on the layer and on
the 1.3B pair.

The reference (bench/reference_tailor.py) is the way a user would write the
method from SparseGPT's published loop: per-module Hessian preparation
(cholesky -> cholesky_inverse -> cholesky), min-max fused scores, torch.topk,
lazy-batch OBS with the mask fixed. It needs a python3 with torch (Debian's
python3-torch: /usr/bin/python3; bench/layer_bench.sh picks one); the
reference runs under the same interpreter as this script.

With --workers W > 1, tailorctl runs W workers of --threads threads each
(`--workers W --threads W*threads`); the tailor method is then also run
with one worker, and the script prints the speed-up and checks that both
runs wrote byte-identical outputs.

With --layers N (N >= 2) the bench is only that comparison, on a model of N
such layers (issue #12: "the same on a 4-layer model"): N shards, one a
layer (model.layers.<l>.*, its own values), an index, and one calibration
file with each layer's own Hessians; Model Tailor with --workers W (2 when
--workers is 1) and with 1 worker, --threads threads per worker, outputs
byte-compared, the speed-up printed with the load average around it.
Full size: 1.6 GB per checkpoint and 2.7 GB of Hessians for N = 4, about
a minute a layer with 1 worker of one thread on a quiet box; --quick makes
it tiny.

Task arithmetic, magnitude and TIES run interleaved, --reps rounds; each
run is printed with its peak RSS and the load average, then the best of
each, the ratios magnitude / task arithmetic and TIES / task arithmetic
(target <= 2x) and dd / task arithmetic. --data-free-only skips the
tailor method and the reference (the data-free part alone).

  bench/layer_bench.sh [--quick] [--with-1b | --only-1b] [--data-free-only]
                       [--threads 1] [--workers 1] [--layers N]
                       [--reps 1] [--device cpu|cuda|cuda:N]
                       [--workdir /tmp/tailor-layer-bench]
                       [--tailorctl build/client/tailorctl]

--device places both tailorctl's fusion (`fuse --device`) and the
reference's maths; the dd floor and the GEMM rate stay CPU figures.
"""

import argparse
import json
import os
import struct
import subprocess
import sys
import time


def _threads_from_argv(default=1):
    """--threads N as given on the command line (read before torch loads)."""
    argv = sys.argv[1:]
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return str(default)


# One thread each means one thread in every pool: OpenBLAS (which LibTorch
# calls for GEMMs and which torch.set_num_threads does not size) and OpenMP.
# Set before torch loads, for this process (the GEMM-rate measurement) and
# inherited by the reference script; tailorctl sizes its own pools.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ[_var] = _threads_from_argv()

import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import reference_tailor as ref  # noqa: E402

LAYER_7B = dict(hidden=4096, inter=11008, heads_kv=32, head_dim=128)
QUICK = dict(hidden=512, inter=1376, heads_kv=8, head_dim=64)
LLAMA_1B = dict(hidden=2048, inter=8192, heads_kv=8, head_dim=64,
                layers=16, vocab=128256)


def layer_shapes(cfg, prefix="model.layers.0."):
    h, i = cfg["hidden"], cfg["inter"]
    kv = cfg["heads_kv"] * cfg["head_dim"]
    return [
        (prefix + "self_attn.q_proj.weight", (h, h), "attn"),
        (prefix + "self_attn.k_proj.weight", (kv, h), "attn"),
        (prefix + "self_attn.v_proj.weight", (kv, h), "attn"),
        (prefix + "self_attn.o_proj.weight", (h, h), "o"),
        (prefix + "mlp.gate_proj.weight", (i, h), "mlp"),
        (prefix + "mlp.up_proj.weight", (i, h), "mlp"),
        (prefix + "mlp.down_proj.weight", (h, i), "down"),
    ]


def spd(c, gen):
    """H_ij = s_i s_j 0.5^|i-j|: symmetric positive definite, correlated."""
    idx = torch.arange(c, dtype=torch.float32)
    toe = torch.pow(0.5, (idx[:, None] - idx[None, :]).abs())
    s = 0.5 + torch.rand(c, generator=gen)
    return (s[:, None] * toe * s[None, :]).contiguous()


def layer_weights(cfg, prefix, gen):
    """One layer's base and fine-tuned BF16 tensors, name -> tensor."""
    base, ft = {}, {}
    for name, shape, _ in layer_shapes(cfg, prefix):
        w = (0.02 * torch.randn(shape, generator=gen)).to(torch.bfloat16)
        d = 0.1 * 0.02 * torch.randn(shape, generator=gen)
        base[name] = w
        ft[name] = (w.float() + d).to(torch.bfloat16)
    return base, ft


def layer_hessians(cfg, prefix, gen, hess, aliases):
    """Adds one layer's Hessians to `hess` (one per group of modules that
    share an input) and the other modules of a group to `aliases`."""
    keys = {}
    for name, shape, group in layer_shapes(cfg, prefix):
        stem = name[: -len(".weight")]
        if group not in keys:
            keys[group] = stem + ".hessian"
            hess[keys[group]] = spd(shape[1], gen)
        if keys[group] != stem + ".hessian":
            aliases[name] = keys[group]


def write_hessians(workdir, hess, aliases):
    ref.write_safetensors(
        os.path.join(workdir, "hessians.safetensors"), hess,
        {"format": "tailor-hessian/1", "nsamples": "128",
         "aliases": json.dumps(aliases)})


def make_layer(workdir, cfg, seed=0):
    gen = torch.Generator().manual_seed(seed)
    prefix = "model.layers.0."
    base, ft = layer_weights(cfg, prefix, gen)
    hess, aliases = {}, {}
    layer_hessians(cfg, prefix, gen, hess, aliases)
    for sub, tensors in (("base", base), ("ft", ft)):
        os.makedirs(os.path.join(workdir, sub), exist_ok=True)
        ref.write_safetensors(os.path.join(workdir, sub, "model.safetensors"),
                              tensors)
    write_hessians(workdir, hess, aliases)


def make_model(workdir, cfg, layers, seed=0):
    """`layers` decoder layers of `cfg`'s shapes: one shard a layer (each
    written and freed before the next: memory one layer), an index, and one
    calibration file holding every layer's own Hessians (aliased as in
    make_layer)."""
    gen = torch.Generator().manual_seed(seed)
    weight_map = {}
    hess, aliases = {}, {}
    for sub in ("base", "ft"):
        os.makedirs(os.path.join(workdir, sub), exist_ok=True)
    for layer in range(layers):
        prefix = "model.layers.%d." % layer
        shard = "model-%05d-of-%05d.safetensors" % (layer + 1, layers)
        base, ft = layer_weights(cfg, prefix, gen)
        for name in base:
            weight_map[name] = shard
        layer_hessians(cfg, prefix, gen, hess, aliases)
        for sub, tensors in (("base", base), ("ft", ft)):
            ref.write_safetensors(os.path.join(workdir, sub, shard), tensors)
        del base, ft
    for sub in ("base", "ft"):
        with open(os.path.join(workdir, sub, "model.safetensors.index.json"),
                  "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
    write_hessians(workdir, hess, aliases)


def same_outputs(a, b):
    """Whether output directories `a` and `b` hold byte-identical files."""
    names = sorted(os.listdir(a))
    if names != sorted(os.listdir(b)):
        return False
    for n in names:
        with open(os.path.join(a, n), "rb") as fa, \
                open(os.path.join(b, n), "rb") as fb:
            if fa.read() != fb.read():
                return False
    return True


def layers_bench(args):
    """--layers N: Model Tailor with W workers against 1 worker on an
    N-layer model; prints both times, the speed-up and the byte comparison."""
    cfg = QUICK if args.quick else LAYER_7B
    workers = args.workers if args.workers > 1 else 2
    workdir = os.path.join(args.workdir, "%s-%dl" % (
        "quick" if args.quick else "7b", args.layers))
    os.makedirs(workdir, exist_ok=True)
    stamp = os.path.join(workdir, "generated")
    if not os.path.exists(stamp):
        print("generating %d layers in %s" % (args.layers, workdir),
              flush=True)
        make_model(workdir, cfg, args.layers)
        open(stamp, "w").close()
    extra = ["--method", "tailor", "--keep", "0.1",
             "--hessians", os.path.join(workdir, "hessians.safetensors")]
    print("load average before:", loadavg(), flush=True)
    many, one = [], []
    for _ in range(args.reps):  # interleaved: load changes hit both
        wall, _ = run_tailorctl(args, workdir, "tailor-out-%dw" % workers,
                                extra, workers=workers)
        many.append(wall)
        print("  %d workers: %.2f s" % (workers, wall), flush=True)
        wall, _ = run_tailorctl(args, workdir, "tailor-out-1w", extra,
                                workers=1)
        one.append(wall)
        print("  1 worker:  %.2f s" % wall, flush=True)
    print("load average after:", loadavg())
    same = same_outputs(os.path.join(workdir, "tailor-out-%dw" % workers),
                        os.path.join(workdir, "tailor-out-1w"))
    print("\n%d-layer model (%s), Model Tailor, %d thread%s per worker: "
          "%d workers %.2f s, 1 worker %.2f s: %.2fx (target >= 1.7x); "
          "outputs byte-identical: %s" %
          (args.layers, "quick" if args.quick else "LLaMA-7B layers",
           args.threads, "" if args.threads == 1 else "s", workers,
           min(many), min(one), min(one) / min(many),
           "yes" if same else "NO"))
    return 0 if same else 1


def llama_1b_names(cfg=LLAMA_1B):
    """LLaMA-3.2-1B's tensors in Hugging Face order (tied embeddings: no
    lm_head.weight, as in the released checkpoint)."""
    names = [("model.embed_tokens.weight", (cfg["vocab"], cfg["hidden"]))]
    for layer in range(cfg["layers"]):
        p = "model.layers.%d." % layer
        names += [(n, s) for n, s, _ in layer_shapes(cfg, p)]
        names += [(p + "input_layernorm.weight", (cfg["hidden"],)),
                  (p + "post_attention_layernorm.weight", (cfg["hidden"],))]
    names.append(("model.norm.weight", (cfg["hidden"],)))
    return names


def make_1b(workdir, seed=1):
    """The base + fine-tuned pair, BF16, one model.safetensors each (as the
    released LLaMA-3.2-1B: 2.47 GB, one file), written tensor by tensor so
    that generating holds one tensor, not the model."""
    names = llama_1b_names()
    header, offset = {}, 0
    for name, shape in names:
        n = 1
        for d in shape:
            n *= d
        header[name] = {"dtype": "BF16", "shape": list(shape),
                        "data_offsets": [offset, offset + 2 * n]}
        offset += 2 * n
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    files = []
    for sub in ("base1b", "ft1b"):
        os.makedirs(os.path.join(workdir, sub), exist_ok=True)
        f = open(os.path.join(workdir, sub, "model.safetensors"), "wb")
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        files.append(f)
    gen = torch.Generator().manual_seed(seed)
    for name, shape in names:
        w = (0.02 * torch.randn(shape, generator=gen)).to(torch.bfloat16)
        ft = (w.float() + 0.002 * torch.randn(shape, generator=gen)).to(
            torch.bfloat16)
        for f, t in zip(files, (w, ft)):
            f.write(t.contiguous().view(torch.int16).numpy().tobytes())
        del w, ft
    for f in files:
        f.close()
    return offset


def run_tailorctl(args, workdir, out, extra, base="base", ft="ft",
                  workers=None):
    workers = args.workers if workers is None else workers
    out_dir = os.path.join(workdir, out)
    report = os.path.join(workdir, out + ".report.json")
    cmd = [args.tailorctl, "fuse", "--local", "-q",
           "--pretrained", os.path.join(workdir, base),
           "--finetuned", os.path.join(workdir, ft),
           "--out", out_dir, "--report", report, "--overwrite",
           "--threads", str(args.threads * workers),
           "--workers", str(workers), "--device", args.device] + extra
    wall, rss = timed_run(cmd)
    run_tailorctl.peak_rss_kib[out] = rss
    with open(report) as f:
        return wall, json.load(f)


run_tailorctl.peak_rss_kib = {}  # out name -> peak RSS of its last run, KiB


# Runs argv[2:] and writes its peak RSS (KiB) to fd argv[1]. A child's ru_maxrss
# starts from the memory of the process it was forked from (Linux keeps the
# old mm's high-water mark across fork + exec), so timing tailorctl straight
# from this script -- which holds the reference's tensors -- would report
# this script's RSS; this small interpreter forks it from a few MiB instead.
_RSS_WRAPPER = """
import os, subprocess, sys
p = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(p.pid, 0)
os.write(int(sys.argv[1]), str(usage.ru_maxrss).encode())
sys.exit(os.waitstatus_to_exitcode(status))
"""


def timed_run(cmd):
    """Runs `cmd`; returns (wall seconds, its peak RSS in KiB)."""
    r, w = os.pipe()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _RSS_WRAPPER, str(w)] + cmd,
                            stdout=subprocess.DEVNULL, pass_fds=(w,))
    os.close(w)
    with os.fdopen(r) as f:
        rss = f.read()
    proc.wait()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return wall, int(rss)


def dd_time(workdir, base, ft, reps):
    """Best time of `dd` reading both inputs and writing + fsyncing an
    output of the base's size (from page cache: the I/O floor of a fuse)."""
    a = os.path.join(workdir, base, "model.safetensors")
    b = os.path.join(workdir, ft, "model.safetensors")
    out = os.path.join(workdir, "dd-out.bin")
    best = 1e9
    for _ in range(max(reps, 2)):  # the first pass warms the page cache
        t0 = time.perf_counter()
        for cmd in (["dd", "if=" + a, "of=/dev/null", "bs=1M"],
                    ["dd", "if=" + b, "of=/dev/null", "bs=1M"],
                    ["dd", "if=" + a, "of=" + out, "bs=1M", "conv=fsync"]):
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - t0)
    os.unlink(out)
    return best


def report_io(label, ta_wall, dd, rss_kib, rss_target_mb):
    print("%s task arithmetic: %.2f s, dd read+write+fsync %.2f s, "
          "dd / ours %.2f (target >= 0.40); peak RSS %.0f MB (target <= %d MB)"
          % (label, ta_wall, dd, dd / ta_wall, rss_kib * 1024 / 1e6,
             rss_target_mb))


def run_reference(args, workdir, out):
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, os.path.join(HERE, "reference_tailor.py"),
         "--pretrained", os.path.join(workdir, "base", "model.safetensors"),
         "--finetuned", os.path.join(workdir, "ft", "model.safetensors"),
         "--hessians", os.path.join(workdir, "hessians.safetensors"),
         "--out", os.path.join(workdir, out + ".safetensors"),
         "--threads", str(args.threads), "--device", args.device,
         "--timings", os.path.join(workdir, out + ".timings.json")],
        check=True)
    wall = time.perf_counter() - t0
    with open(os.path.join(workdir, out + ".timings.json")) as f:
        return wall, json.load(f)


def gemm_rate(threads, n=2048, k=128, reps=5):
    """float32 GFLOP/s of the lazy OBS update's GEMM shape (n x k x n)."""
    torch.set_num_threads(threads)
    a = torch.randn(n, k)
    b = torch.randn(k, n)
    c = torch.randn(n, n)
    best = 1e9
    for _ in range(reps):
        t0 = time.perf_counter()
        c.addmm_(a, b, beta=1, alpha=-1)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n * n * k / best / 1e9


def kernel_flops(cfg):
    """Flops of our kernel on one layer: lazy OBS update r c^2 per tensor,
    preparation (2/3) c^3 per Hessian key."""
    obs = sum(s[0] * s[1] * s[1] for _, s, _ in layer_shapes(cfg))
    cs = {}
    for _, s, g in layer_shapes(cfg):
        cs[g] = s[1]
    prep = sum(2.0 / 3.0 * c ** 3 for c in cs.values())
    return obs, prep


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


DATA_FREE = (("task_arithmetic", []),
             ("magnitude", ["--keep", "0.1"]),
             ("ties", ["--density", "0.1"]))


def data_free_runs(args, workdir, prefix, base, ft, reps, label):
    """Task arithmetic, magnitude and TIES interleaved, `reps` rounds; prints
    each run and the load average; returns the best wall time per method."""
    walls = {m: [] for m, _ in DATA_FREE}
    for rep in range(reps):
        for method, extra in DATA_FREE:
            wall, _ = run_tailorctl(args, workdir, prefix + method,
                                    ["--method", method] + extra,
                                    base=base, ft=ft)
            walls[method].append(wall)
            print("  %s run %d: %-16s %7.2f s  peak RSS %4.0f MB  "
                  "(load %s)" % (label, rep + 1, method, wall,
                                 run_tailorctl.peak_rss_kib[prefix + method]
                                 * 1024 / 1e6, loadavg()), flush=True)
    return {m: min(w) for m, w in walls.items()}


def print_ratios(label, best):
    ta = best["task_arithmetic"]
    print("%s magnitude / task arithmetic: %.2fx  (target <= 2x)" %
          (label, best["magnitude"] / ta))
    print("%s ties / task arithmetic:      %.2fx  (target <= 2x)" %
          (label, best["ties"] / ta))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a small layer (hidden 512) instead of LLaMA-7B's")
    p.add_argument("--with-1b", action="store_true",
                   help="also the 1.3B-shaped pair for the data-free methods")
    p.add_argument("--only-1b", action="store_true",
                   help="the 1.3B-shaped pair only (implies --with-1b)")
    p.add_argument("--data-free-only", action="store_true",
                   help="skip the tailor method and the reference script: "
                        "task arithmetic, magnitude, TIES and dd only")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=1,
                   help="tailorctl worker slots, --threads threads each")
    p.add_argument("--layers", type=int, default=1,
                   help="N >= 2: only the workers-vs-1-worker comparison, "
                        "on an N-layer model (see above)")
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda or cuda:N: where tailorctl and the "
                        "reference compute")
    p.add_argument("--workdir", default="/tmp/tailor-layer-bench")
    p.add_argument("--tailorctl",
                   default=os.path.join(HERE, "..", "build", "client",
                                        "tailorctl"))
    args = p.parse_args()
    if args.only_1b:
        args.with_1b = True
    if args.layers < 1:
        p.error("--layers: must be >= 1, not %d" % args.layers)
    if args.layers > 1:
        return layers_bench(args)
    cfg = QUICK if args.quick else LAYER_7B
    workdir = os.path.join(args.workdir, "quick" if args.quick else "7b")
    os.makedirs(workdir, exist_ok=True)
    stamp = os.path.join(workdir, "generated")
    if not args.only_1b and not os.path.exists(stamp):
        print("generating the layer in", workdir, flush=True)
        make_layer(workdir, cfg)
        open(stamp, "w").close()
    if args.with_1b and not os.path.exists(os.path.join(args.workdir,
                                                        "1b-generated")):
        print("generating the 1.3B-shaped pair in", args.workdir, flush=True)
        t0 = time.perf_counter()
        size = make_1b(args.workdir)
        open(os.path.join(args.workdir, "1b-generated"), "w").close()
        print("  %.2f GB of tensors per checkpoint, %.0f s" %
              (size / 1e9, time.perf_counter() - t0), flush=True)

    print("load average before:", loadavg(), flush=True)
    if not args.only_1b:
        run_layer(args, cfg, workdir)
    if args.with_1b:
        print("\n1.3B-shaped pair (LLaMA-3.2-1B shapes, BF16; data-free "
              "methods, %d thread%s):" % (args.threads,
                                          "" if args.threads == 1 else "s"),
              flush=True)
        best = data_free_runs(args, args.workdir, "1b-", "base1b", "ft1b",
                              args.reps, "1.3B")
        for method, _ in DATA_FREE:
            print("1.3B %-22s %10.2f s" % (method, best[method]))
        print_ratios("1.3B", best)
        report_io("1.3B pair", best["task_arithmetic"],
                  dd_time(args.workdir, "base1b", "ft1b", args.reps),
                  run_tailorctl.peak_rss_kib["1b-task_arithmetic"], 1000)
        print("load average after:", loadavg())


def run_layer(args, cfg, workdir):
    tailor_extra = ["--method", "tailor", "--keep", "0.1",
                    "--hessians", os.path.join(workdir, "hessians.safetensors")]
    ours, theirs = [], []
    report = timings = None
    rows = []
    if not args.data_free_only:
        for _ in range(args.reps):
            wall, report = run_tailorctl(args, workdir, "tailor-out",
                                         tailor_extra)
            ours.append(wall)
            wall, timings = run_reference(args, workdir, "reference")
            theirs.append(wall)
        rows = [("tailor (ours)", min(ours)),
                ("reference script", min(theirs))]
    if args.workers > 1 and not args.data_free_only:
        one = []
        for _ in range(args.reps):
            wall, _ = run_tailorctl(args, workdir, "tailor-out-1w",
                                    tailor_extra, workers=1)
            one.append(wall)
        rows.append(("tailor, 1 worker", min(one)))
        same = all(
            open(os.path.join(workdir, "tailor-out", n), "rb").read() ==
            open(os.path.join(workdir, "tailor-out-1w", n), "rb").read()
            for n in sorted(os.listdir(os.path.join(workdir, "tailor-out"))))
        print("tailor: %d workers %.2f s, 1 worker %.2f s: %.2fx "
              "(target >= 1.7x); outputs byte-identical: %s" %
              (args.workers, min(ours), min(one), min(one) / min(ours),
               "yes" if same else "NO"), flush=True)
    # Data-free methods on the layer, interleaved with one another.
    data_free = data_free_runs(args, workdir, "", "base", "ft", args.reps,
                               "layer")
    for method, _ in DATA_FREE:
        rows.append((method, data_free[method]))
    print("load average after:", loadavg())

    print("\n%-22s %10s" % ("run (layer, %d thread%s, %s)" %
                            (args.threads, "" if args.threads == 1 else "s",
                             args.device), "wall s"))
    for name, t in rows:
        print("%-22s %10.2f" % (name, t))
    if not args.data_free_only:
        if args.workers > 1:
            # The comparison is one thread each: the 1-worker run.
            print("\nreference / ours (tailor, 1 worker x %d thread%s): "
                  "%.2fx  (target >= 1.5x)" %
                  (args.threads, "" if args.threads == 1 else "s",
                   min(theirs) / min(one)))
            print("reference / ours (tailor, %d workers): %.2fx" %
                  (args.workers, min(theirs) / min(ours)))
        else:
            print("\nreference / ours (tailor):       %.2fx  "
                  "(target >= 1.5x)" % (min(theirs) / min(ours)))
    print_ratios("layer", data_free)
    report_io("layer", data_free["task_arithmetic"],
              dd_time(workdir, "base", "ft", args.reps),
              run_tailorctl.peak_rss_kib["task_arithmetic"], 700)
    if not args.quick:
        # Whole 7B, data-free: 32 such layers plus embed_tokens and lm_head
        # (32000 x 4096 each), at this run's rate per entry.
        layer_entries = sum(s[0] * s[1] for _, s, _ in layer_shapes(cfg))
        entries = 32 * layer_entries + 2 * 32000 * 4096
        print("projection, whole LLaMA-7B on this CPU, data-free: " +
              ", ".join("%s %.1f min" % (m, data_free[m] / layer_entries *
                                         entries / 60)
                        for m, _ in DATA_FREE))
    if args.data_free_only:
        return

    # Per tensor: ours (report) and the reference's own timings.
    print("\n%-36s %10s %10s" % ("tensor", "ours s", "ref s"))
    ours_t = {t["name"]: t["seconds"] for t in report["tensors"]
              if t.get("action") == "fused"}
    for name, _, _ in layer_shapes(cfg):
        print("%-36s %10.2f %10.2f" % (name.split("layers.0.")[1],
                                       ours_t.get(name, float("nan")),
                                       timings["tensors"].get(name,
                                                              float("nan"))))
    totals = report["totals"]
    print("\nE(mask) %s %.4g, E(compensated) %.4g; reference E(comp) %.4g" %
          ("(estimate)" if totals.get("error_mask_only_estimated") else "",
           totals["error_mask_only"], totals["error_compensated"],
           timings["error_compensated"]))

    obs, prep = kernel_flops(cfg)
    rate = gemm_rate(args.threads)
    kernel_s = sum(ours_t.values())
    print("\nroofline: OBS lazy update %.3g flop + preparation %.3g flop; "
          "GEMM (n x 128 x n) measured %.1f GFLOP/s -> %.2f s at GEMM speed; "
          "the kernel took %.2f s (%.0f%% of roofline)" %
          (obs, prep, rate, (obs + prep) / rate / 1e9, kernel_s,
           100.0 * (obs + prep) / rate / 1e9 / kernel_s))

    if not args.quick:
        # Whole 7B: 32 such layers, plus embed_tokens and lm_head
        # (32000 x 4096 each, no Hessian: salience-only selection, priced at
        # this run's magnitude rate per entry).
        layer_entries = sum(s[0] * s[1] for _, s, _ in layer_shapes(cfg))
        per_entry = data_free["magnitude"] / layer_entries
        emb = 2 * 32000 * 4096 * per_entry
        print("\nprojection, whole LLaMA-7B on this CPU (%d thread%s): "
              "32 x %.1f s + embeddings %.1f s = %.1f min" %
              (args.threads, "" if args.threads == 1 else "s", min(ours),
               emb, (32 * min(ours) + emb) / 60))


if __name__ == "__main__":
    sys.exit(main())
