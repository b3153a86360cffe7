#!/usr/bin/python3
"""Model Tailor as a plain PyTorch script, the yardstick of layer_bench.py.

Written the way a user would from SparseGPT's published loop, with the
same math as `tailorctl fuse --method tailor` (scope layer, min-max
normalisation, omega 0.5, sequential compensation, damp 0.01, block 128):
per module, the Hessian is prepared (dead inputs, damping, cholesky ->
cholesky_inverse -> cholesky), the scores are fused from min-max
normalised salience and sensitivity, torch.topk picks the mask, and the
lazy-batch OBS loop compensates with the mask fixed. Writes the fused
checkpoint (BF16) and a timings file.

  reference_tailor.py --pretrained A.safetensors --finetuned B.safetensors
      --hessians H.safetensors --out OUT.safetensors [--threads 1]
      [--keep 0.1] [--timings T.json] [--device cpu|cuda|cuda:N]

Needs a python3 with torch (Debian's python3-torch: /usr/bin/python3).
"""

import argparse
import json
import struct
import time

import numpy as np
import torch

DTYPES = {"BF16": (torch.bfloat16, np.int16), "F32": (torch.float32,
                                                     np.float32)}


def read_safetensors(path):
    """Returns ({name: tensor}, metadata)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    meta = header.pop("__metadata__", {})
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out = {}
    for name, e in header.items():
        dtype, np_type = DTYPES[e["dtype"]]
        a, b = e["data_offsets"]
        arr = np.frombuffer(raw[a:b], dtype=np_type).copy()
        t = torch.from_numpy(arr)
        if dtype == torch.bfloat16:
            t = t.view(torch.bfloat16)
        out[name] = t.view(e["shape"])
    return out, meta


def write_safetensors(path, tensors, metadata=None):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.contiguous()
        if t.dtype == torch.bfloat16:
            blob, dtype = t.view(torch.int16).numpy().tobytes(), "BF16"
        else:
            blob, dtype = t.float().numpy().tobytes(), "F32"
        header[name] = {"dtype": dtype, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def minmax(x):
    lo, hi = x.min(), x.max()
    r = hi - lo
    return (x - lo) / r if r > 0 else torch.zeros_like(x)


def tailor_module(w_pre, w_ft, h, keep, omega=0.5, damp=0.01, block=128,
                  device="cpu"):
    """Returns (fused delta on `device`, sum of squared OBS errors)."""
    d = w_ft.to(device).float() - w_pre.to(device).float()
    h = h.to(device)
    rows, cols = d.shape
    # Hessian preparation, as SparseGPT does it.
    h = h.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    h += damp * torch.mean(torch.diag(h)) * torch.eye(cols, device=device)
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    hinv_diag = torch.diag(hinv)
    u = torch.linalg.cholesky(hinv, upper=True)
    del hinv
    # Fused scores, min-max over the layer; top-k.
    score = omega * minmax(d.abs()) + (1 - omega) * minmax(
        d.pow(2) / (2 * hinv_diag))
    k = int(round(keep * d.numel()))
    mask = torch.zeros(d.numel(), dtype=torch.bool, device=device)
    mask[torch.topk(score.flatten(), k).indices] = True
    mask = mask.view(rows, cols)
    del score
    # SparseGPT's lazy-batch OBS loop with the mask fixed.
    losses = 0.0
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        count = i2 - i1
        w1 = d[:, i1:i2].clone()
        m1 = mask[:, i1:i2]
        err1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(count):
            w = w1[:, i]
            dd = u1[i, i]
            q = w.clone()
            q[~m1[:, i]] = 0
            err = (w - q) / dd
            losses += float((err ** 2).sum())
            w1[:, i:] -= err.unsqueeze(1).matmul(u1[i, i:].unsqueeze(0))
            w1[:, i] = q
            err1[:, i] = err
        d[:, i1:i2] = w1
        d[:, i2:] -= err1.matmul(u[i1:i2, i2:])
    return d, losses


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pretrained", required=True)
    p.add_argument("--finetuned", required=True)
    p.add_argument("--hessians", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--keep", type=float, default=0.1)
    p.add_argument("--timings")
    p.add_argument("--device", default="cpu",
                   help="where the maths runs: cpu, cuda or cuda:N")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    pre, _ = read_safetensors(args.pretrained)
    ft, _ = read_safetensors(args.finetuned)
    hess, meta = read_safetensors(args.hessians)
    aliases = json.loads(meta.get("aliases", "{}"))
    out, timings, losses = {}, {}, 0.0
    for name, w in pre.items():
        t0 = time.perf_counter()
        key = aliases.get(name, name[: -len(".weight")] + ".hessian")
        if w.dim() == 2 and key in hess:
            d, e = tailor_module(w, ft[name], hess[key], args.keep,
                                 device=args.device)
            losses += e
            out[name] = (w.float() + d.cpu()).to(torch.bfloat16)
        else:
            out[name] = w
        timings[name] = time.perf_counter() - t0
    write_safetensors(args.out, out)
    if args.timings:
        with open(args.timings, "w") as f:
            json.dump({"tensors": timings, "error_compensated": losses,
                       "seconds": time.perf_counter() - t_start}, f)


if __name__ == "__main__":
    main()
