"""Calibration statistics for any PyTorch model, as tailor-hessian/1 files.

    from tailor_client import calibrate
    calibrate.collect(model, batches, "task.hessians.safetensors")

For every torch.nn.Linear of `model` (Hugging Face models included), a
forward pre-hook adds the Gram matrix of its input rows, X^T X, to a
float64 accumulator on the input's (the module's) device; activations are
never kept, so memory is one c x c matrix per linear plus one batch. The
file holds H = (2/n) X^T X per weight, keyed and aliased exactly as
``tailorctl calibrate`` writes it (src/DESIGN.md §3.3):

- the key of weight "<module>.weight" is "<module>.hessian";
- n counts the input rows each linear saw: every position of the input
  but the last axis (batch x tokens for a language model);
- linears fed the same input tensor in a forward pass (q/k/v, gate/up)
  share one Hessian: one of them (tailorctl's choice for the LLaMA names,
  q_proj and up_proj; otherwise the first called) holds the key, the others
  are recorded in the ``aliases`` metadata {weight name: key};
- a Linear whose weight is a parameter registered first under another name
  (a tied lm_head) has no Hessian, as tailorctl skips a tied lm_head.

torch (and numpy) are imported only when collect() runs.
"""

import fnmatch
import json
import os
import re
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import (Any, Callable, Dict, Iterable, List, Optional, Pattern,
                    Sequence, Union)

from tailor_client._files import write_atomically
from tailor_client.errors import InvalidArgument

FORMAT = "tailor-hessian/1"

# tailorctl's alias rules (src/model/hessian_collector.cc): weight-name
# suffix -> the sibling key that holds the shared Hessian. Used to pick the
# key holder of a group of linears sharing an input, so LLaMA-family files
# match tailorctl's exactly.
_ALIAS_RULES = (
    ("self_attn.k_proj.weight", "self_attn.q_proj.hessian"),
    ("self_attn.v_proj.weight", "self_attn.q_proj.hessian"),
    ("mlp.gate_proj.weight", "mlp.up_proj.hessian"),
)

Include = Union[None, str, Pattern, Sequence[Union[str, Pattern]]]
Progress = Callable[[int, Optional[int]], None]


@dataclass
class CalibrationResult:
    """What collect() wrote."""
    path: str
    nsamples: int                 # the metadata's nsamples
    columns: Dict[str, int]       # Hessian key -> c
    rows: Dict[str, int]          # Hessian key -> n (input rows seen)
    aliases: Dict[str, str] = field(default_factory=dict)


def hessian_key(weight_name: str) -> str:
    """"<stem>.weight" -> "<stem>.hessian"."""
    if not weight_name.endswith(".weight") and weight_name != "weight":
        raise InvalidArgument("%r is not a weight name (must end with "
                              "'.weight')" % weight_name)
    return weight_name[:-len("weight")] + "hessian"


class _Group:
    """Linears sharing one input; the first member accumulates."""

    def __init__(self, first: str):
        self.members = [first]
        self.sum = None   # float64 [c, c] on the input's device
        self.rows = 0

    def key(self) -> str:
        keys = {hessian_key(m): m for m in self.members}
        for member in self.members:
            for suffix, target in _ALIAS_RULES:
                if member.endswith(suffix):
                    want = member[:-len(suffix)] + target
                    if want in keys:
                        return want
        return hessian_key(self.members[0])


class _Collector:
    def __init__(self, torch, names: List[str]):
        self.torch = torch
        self.names = set(names)
        self.group_of: Dict[str, _Group] = {}
        self.groups: List[_Group] = []
        self.seen: Dict[int, Any] = {}  # id(input) -> (weakref, group)
        self.batch = 0
        self.error: Optional[Exception] = None

    def start_batch(self) -> None:
        self.seen.clear()
        self.batch += 1

    def _shared(self, x) -> Optional[_Group]:
        entry = self.seen.get(id(x))
        if entry is not None and entry[0]() is x:
            return entry[1]
        return None

    def hook(self, weight_name: str):
        def pre_hook(module, args):
            if self.error is None:
                try:
                    self.observe(weight_name, args)
                except Exception as e:  # re-raised by collect()
                    self.error = e
        return pre_hook

    def observe(self, w: str, args) -> None:
        torch = self.torch
        if not args or not isinstance(args[0], torch.Tensor):
            raise InvalidArgument("calibrate: %s was called without a tensor "
                                  "input" % w)
        x = args[0]
        if x.dim() < 1 or x.shape[-1] < 1:
            raise InvalidArgument("calibrate: %s input has no feature axis"
                                  % w)
        shared = self._shared(x)
        group = self.group_of.get(w)
        if group is None:
            if shared is not None:   # a new member of that group
                shared.members.append(w)
                self.group_of[w] = shared
                return
            group = _Group(w)
            self.group_of[w] = group
            self.groups.append(group)
        elif group.members[0] != w:
            if shared is not group:
                raise InvalidArgument(
                    "calibrate: %s shared the input of %s in an earlier "
                    "batch but not in batch %d; the aliases would be wrong "
                    "(restrict with include=)" % (w, group.members[0],
                                                  self.batch))
            return
        elif shared is not None:
            raise InvalidArgument(
                "calibrate: %s got the same input tensor as %s in batch %d "
                "but not in the first batch it ran in" %
                (w, shared.members[0], self.batch))
        c = x.shape[-1]
        rows = x.detach().reshape(-1, c).to(torch.float64)
        if group.sum is None:
            group.sum = torch.zeros((c, c), dtype=torch.float64,
                                    device=rows.device)
        elif group.sum.shape[0] != c:
            raise InvalidArgument("calibrate: %s input width changed from "
                                  "%d to %d" % (w, group.sum.shape[0], c))
        group.sum.addmm_(rows.t(), rows)
        group.rows += rows.shape[0]
        self.seen[id(x)] = (weakref.ref(x), group)


def _matcher(include: Include) -> Callable[[str, str], bool]:
    if include is None:
        return lambda module, weight: True
    patterns = [include] if isinstance(include, (str, re.Pattern)) else list(
        include)
    if not patterns:
        raise InvalidArgument("calibrate: include is empty")

    def one(p, name):
        if isinstance(p, re.Pattern):
            return p.fullmatch(name) is not None
        if not isinstance(p, str):
            raise InvalidArgument("calibrate: include patterns must be glob "
                                  "strings or compiled regexes, not %r" % (p,))
        return fnmatch.fnmatchcase(name, p)

    return lambda module, weight: any(one(p, module) or one(p, weight)
                                      for p in patterns)


def _run(model, batch) -> None:
    if isinstance(batch, Mapping):  # dicts, transformers' BatchEncoding
        model(**batch)
    elif isinstance(batch, tuple):
        model(*batch)
    else:
        model(batch)


def collect(model, batches: Iterable[Any], path: Union[str, os.PathLike],
            include: Include = None, progress: Optional[Progress] = None
            ) -> CalibrationResult:
    """Runs `model` on every batch and writes the calibration file `path`.

    Args:
        model: a torch.nn.Module (put in eval mode for the passes, then
            restored). Gradients are off during the passes.
        batches: an iterable of model inputs, each passed as given (on the
            right device): a mapping as keyword arguments
            (``model(**batch)``, e.g. a tokenizer's output), a tuple as positional arguments,
            anything else as the one positional argument.
        path: the file to write; must not exist (FileExistsError). Written
            atomically (a hidden temporary file beside it, fsynced, linked
            into place without replacing anything); nothing is left behind
            on error.
        include: restricts the linears to those whose module name or weight
            name matches one of these glob patterns (fnmatch, e.g.
            "model.layers.*.mlp.*") or compiled regexes (full match).
        progress: called after each batch with (batches done, total), the
            total being len(batches) when it has one, else None.

    Returns:
        A CalibrationResult (keys, row counts, aliases).

    n and nsamples: each Hessian is normalised by the rows its linears saw.
    When every key saw the same number (a language model: batch x tokens),
    that is the metadata's nsamples, as tailorctl writes it. When they
    differ (a vision tower and a language model in one module, mixture of
    experts), nsamples is the smallest and the metadata gains
    ``nsamples_by_key`` (a JSON object {key: n}).

    Raises:
        InvalidArgument: no Linear matched, no batch reached one, inputs
            shared inconsistently across batches, an input width changed.
        FileExistsError: `path` exists.
    """
    import torch

    path = os.fspath(path)
    if os.path.lexists(path):
        raise FileExistsError("%s already exists; choose a new output path"
                              % path)
    matches = _matcher(include)
    own = {name for name, _ in model.named_parameters()}
    chosen = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        weight = name + ".weight" if name else "weight"
        if weight not in own:
            continue  # a tied weight, registered under another name first
        if matches(name, weight):
            chosen.append((weight, module))
    if not chosen:
        raise InvalidArgument(
            "calibrate: no torch.nn.Linear of the model%s" %
            ("" if include is None else " matches include=%r" % (include,)))
    collector = _Collector(torch, [w for w, _ in chosen])
    handles = [m.register_forward_pre_hook(collector.hook(w))
               for w, m in chosen]
    total = len(batches) if hasattr(batches, "__len__") else None
    was_training = model.training
    done = 0
    try:
        model.eval()
        with torch.no_grad():
            for batch in batches:
                collector.start_batch()
                _run(model, batch)
                if collector.error is not None:
                    raise collector.error
                done += 1
                if progress is not None:
                    progress(done, total)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    groups = [g for g in collector.groups if g.rows > 0]
    if not groups:
        raise InvalidArgument("calibrate: no input reached a linear (%d "
                              "batches)" % done)
    return _write(path, groups)


def _json(value) -> str:
    # nlohmann::json::dump(): sorted keys, no spaces, UTF-8 unescaped.
    return json.dumps(value, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)


def _write(path: str, groups: List[_Group]) -> CalibrationResult:
    import torch  # and numpy, through Tensor.numpy()

    by_key = {}
    aliases = {}
    for g in groups:
        key = g.key()
        by_key[key] = g
        for member in g.members:
            if hessian_key(member) != key:
                aliases[member] = key
    rows = {k: g.rows for k, g in by_key.items()}
    columns = {k: g.sum.shape[0] for k, g in by_key.items()}
    n = min(rows.values())
    metadata = {"format": FORMAT, "nsamples": str(n),
                "aliases": _json(aliases)}
    if len(set(rows.values())) > 1:
        metadata["nsamples_by_key"] = _json(rows)
    # The header as tailor's SerializeSafetensorsHead writes it: metadata
    # first, tensors by name (all F32), padded with spaces to 8 bytes.
    parts = ['{"__metadata__":' + _json(metadata)]
    offset = 0
    keys = sorted(by_key)
    for k in keys:
        c = columns[k]
        parts.append('%s:{"dtype":"F32","shape":[%d,%d],"data_offsets":'
                     '[%d,%d]}' % (_json(k), c, c, offset, offset + 4 * c * c))
        offset += 4 * c * c
    header = (",".join(parts) + "}").encode("utf-8")
    header += b" " * (-len(header) % 8)

    def write(f):
        f.write(len(header).to_bytes(8, "little"))
        f.write(header)
        for k in keys:  # one matrix at a time
            g = by_key[k]
            h = (g.sum + g.sum.t()) * (1.0 / g.rows)
            f.write(h.to(device="cpu", dtype=torch.float32).contiguous()
                    .numpy().astype("<f4", copy=False).tobytes())

    write_atomically(path, write, tag="tailor-stage")
    return CalibrationResult(path=path, nsamples=n, columns=columns,
                             rows=rows, aliases=aliases)
