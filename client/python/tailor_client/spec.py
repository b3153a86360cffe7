"""Fusion job specs: a dict, keyword arguments or a YAML job file, as the
FusionJobSpec message tailord takes.

The keys are those of the engine's JSON spec (src/fusion/fusion_spec.cc),
which are the field names of tailor.v1.FusionJobSpec (proto/README.md):
pretrained, tasks (a list of {label, finetuned | patch, hessians, keep,
omega}), method, keep, omega, scope, normalize, compensation, dead_columns,
damp, block_size, float64, aggregate, lambda, density, drop, seed, include,
exclude, on_mismatch, out, patch_out, report, overwrite, device, threads.
Enum values are the engine's names ("task_arithmetic", "exact", ...; the
proto names such as "METHOD_TIES" are accepted too). keep, omega, lambda,
density and t take a number or a list of numbers over the layers (the
message's layer_gradients).

A YAML job file is read as ``tailorctl submit -f`` reads it
(client/job_file.cc): keys with '-' or '_', scalars read as the key's type,
the flag-style lists finetuned / patch / hessians / labels as an
alternative to ``tasks:``, and plain relative paths relative to the job
file's directory.
"""

import math
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Union

from google.protobuf.descriptor import FieldDescriptor

from tailor_client._proto import fusion_service_pb2 as pb
from tailor_client.errors import InvalidArgument

# Job files larger than this are refused (as tailorctl does).
MAX_JOB_FILE_BYTES = 1 << 20
_MAX_SHOWN = 200  # characters of a bad value quoted in an error
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SPEC_URIS = ("pretrained", "out", "patch_out", "report")
_TASK_URIS = ("finetuned", "patch", "hessians")
_LISTS = ("finetuned", "patch", "hessians", "labels")

SpecSource = Union[Mapping[str, Any], str, os.PathLike, "pb.FusionJobSpec"]


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."


def _bad(where: str, rule: str) -> InvalidArgument:
    return InvalidArgument("%s: %s" % (where, rule))


def _enum_value(field: FieldDescriptor, value: Any, where: str) -> int:
    enum = field.enum_type
    # METHOD_TASK_ARITHMETIC <-> task_arithmetic: the prefix is the enum
    # type's name in upper snake case.
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
    names = [v.name[len(prefix):].lower() for v in enum.values
             if v.number != 0]
    if isinstance(value, str):
        if value in names:
            return enum.values_by_name[prefix + value.upper()].number
        if value in enum.values_by_name and enum.values_by_name[
                value].number != 0:
            return enum.values_by_name[value].number
    raise _bad(where, "%s is not one of %s" % (_shown(value),
                                              ", ".join(names)))


def _set_field(msg, field: FieldDescriptor, value: Any, where: str) -> None:
    name = field.name
    if field.label == FieldDescriptor.LABEL_REPEATED:
        if field.type != FieldDescriptor.TYPE_STRING:
            raise _bad(where, "cannot be set here")
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, str) for v in value):
            raise _bad(where, "must be a string or a list of strings, not %s"
                       % _shown(value))
        getattr(msg, name).extend(value)
        return
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str):
            raise _bad(where, "must be a string, not %s" % _shown(value))
    elif t == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            raise _bad(where, "must be true or false, not %s" % _shown(value))
    elif t == FieldDescriptor.TYPE_DOUBLE:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(where, "must be a number, not %s" % _shown(value))
        value = float(value)
        if not math.isfinite(value):
            raise _bad(where, "must be a finite number, not %s" % value)
    elif t == FieldDescriptor.TYPE_ENUM:
        value = _enum_value(field, value, where)
    elif t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64,
               FieldDescriptor.TYPE_UINT64):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(where, "must be an integer, not %s" % _shown(value))
        bits = 32 if t == FieldDescriptor.TYPE_INT32 else 64
        low, high = ((0, (1 << 64) - 1) if t == FieldDescriptor.TYPE_UINT64
                     else (-(1 << (bits - 1)), (1 << (bits - 1)) - 1))
        if not low <= value <= high:
            raise _bad(where, "%d is out of range [%d, %d]" % (value, low,
                                                               high))
    else:
        raise _bad(where, "cannot be set here")
    setattr(msg, name, value)


_MAX_GRADIENT_VALUES = 1024


def _set_gradient(msg, name: str, value: Any, where: str) -> None:
    """A per-layer list (FusionJobSpec.layer_gradients) for key `name`."""
    if not 1 <= len(value) <= _MAX_GRADIENT_VALUES:
        raise _bad(where, "a list over the layers holds 1 to %d numbers, "
                   "not %d" % (_MAX_GRADIENT_VALUES, len(value)))
    values = []
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _bad("%s[%d]" % (where, i),
                       "must be a number, not %s" % _shown(v))
        values.append(float(v))
    getattr(msg.layer_gradients, name).extend(values)


def _fill(msg, values: Mapping[str, Any], where: str) -> None:
    fields = msg.DESCRIPTOR.fields_by_name
    for key, value in values.items():
        if not isinstance(key, str):
            raise _bad(where, "key %s is not a string" % _shown(key))
        canonical = key.rstrip("_") if key.endswith("_") else key  # lambda_
        field = fields.get(canonical)
        here = "%s.%s" % (where, canonical) if where else canonical
        if field is None:
            raise _bad(here, "unknown key (allowed: %s)" % ", ".join(
                f.name for f in msg.DESCRIPTOR.fields))
        if value is None:
            continue  # unset: the server's default
        if (isinstance(value, (list, tuple)) and
                msg.DESCRIPTOR.name == "FusionJobSpec" and
                canonical in pb.LayerGradients.DESCRIPTOR.fields_by_name):
            _set_gradient(msg, canonical, value, here)  # keep: [0.1, 0.3]
            continue
        if field.message_type is not None:  # tasks
            if field.message_type.name != "TaskSpec":
                raise _bad(here, "cannot be set here")
            if not isinstance(value, (list, tuple)):
                raise _bad(here, "must be a list of tasks")
            for i, task in enumerate(value):
                tw = "%s[%d]" % (here, i)
                if isinstance(task, pb.TaskSpec):
                    msg.tasks.add().CopyFrom(task)
                    continue
                if not isinstance(task, Mapping):
                    raise _bad(tw, "must be a mapping")
                _fill(msg.tasks.add(), task, tw)
            continue
        _set_field(msg, field, value, here)


def spec_from_dict(values: Mapping[str, Any]) -> "pb.FusionJobSpec":
    """A FusionJobSpec from the JSON spec's keys (see the module doc).

    None values are left unset. Raises InvalidArgument naming the key for
    an unknown key or a wrongly typed value. ``lambda_`` is accepted for
    ``lambda`` (a Python keyword).
    """
    if not isinstance(values, Mapping):
        raise _bad("spec", "must be a mapping of spec keys")
    spec = pb.FusionJobSpec()
    _fill(spec, values, "")
    return spec


class _UniqueKeyLoader:  # built lazily: PyYAML is optional
    cls = None

    @classmethod
    def get(cls, path: str):
        if cls.cls is None:
            import yaml

            class Loader(yaml.BaseLoader):  # every scalar a str
                def construct_mapping(self, node, deep=False):
                    seen = set()
                    for key_node, _ in node.value:
                        key = self.construct_object(key_node, deep=deep)
                        canonical = (key.replace("-", "_")
                                     if isinstance(key, str) else key)
                        if canonical in seen:
                            raise _bad(Loader.path, "%s: given twice" % key)
                        seen.add(canonical)
                    return super().construct_mapping(node, deep=deep)

            cls.cls = Loader
        cls.cls.path = path
        return cls.cls


def _scalar(value: Any, where: str, kind: str, field: FieldDescriptor):
    """A YAML scalar (text) read as the type of `field`."""
    if field.label == FieldDescriptor.LABEL_REPEATED:
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list):
            raise _bad(where, "must be a string or a list of strings")
        for i, v in enumerate(value):
            if not isinstance(v, str):
                raise _bad("%s[%d]" % (where, i), "must be a string")
        return value
    if not isinstance(value, str):
        raise _bad(where, "must be %s" % kind)
    t = field.type
    try:
        if t == FieldDescriptor.TYPE_DOUBLE:
            return float(value)
        if t == FieldDescriptor.TYPE_BOOL:
            lower = value.lower()
            if lower in ("true", "yes", "on", "y"):
                return True
            if lower in ("false", "no", "off", "n"):
                return False
            raise ValueError(value)
        if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64,
                 FieldDescriptor.TYPE_UINT64):
            return int(value, 10)
    except ValueError:
        raise _bad(where, "must be %s, not %s" % (kind, _shown(value))) from None
    return value  # strings and enum names


_KINDS = {
    FieldDescriptor.TYPE_DOUBLE: "a number",
    FieldDescriptor.TYPE_BOOL: "true or false",
    FieldDescriptor.TYPE_INT32: "an integer",
    FieldDescriptor.TYPE_INT64: "an integer",
    FieldDescriptor.TYPE_UINT64: "a non-negative integer",
}


def _typed(values: Mapping[str, Any], descriptor, path: str,
           prefix: str) -> Dict[str, Any]:
    out = {}
    for key, value in values.items():
        canonical = key.replace("-", "_")
        where = "%s: %s%s" % (path, prefix, canonical)
        field = descriptor.fields_by_name.get(canonical)
        if field is None or field.message_type is not None:
            allowed = ", ".join(f.name for f in descriptor.fields)
            raise _bad(where, "unknown key (allowed: %s)" % allowed)
        if (isinstance(value, list) and descriptor.name == "FusionJobSpec" and
                canonical in pb.LayerGradients.DESCRIPTOR.fields_by_name):
            # A list over the layers: each value a number.
            out[canonical] = [
                _scalar(v, "%s[%d]" % (where, i), "a number", field)
                for i, v in enumerate(value)]
            continue
        out[canonical] = _scalar(value, where,
                                 _KINDS.get(field.type, "a string"), field)
    return out


def _resolve(base: str, uri: str) -> str:
    """A plain relative path made relative to `base` (canonical)."""
    if not uri or uri.startswith("/") or _URI_SCHEME.match(uri):
        return uri
    rel = uri
    while True:
        if rel.startswith("./"):
            rel = rel[2:]
            continue
        if rel == ".":
            rel = ""
        elif rel == ".." or rel.startswith("../"):
            base = os.path.dirname(base) or "/"
            rel = rel[3:]
            continue
        break
    return os.path.join(base, rel) if rel else base


def load_job_file(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Reads a YAML job file into the JSON spec's form (a dict).

    Raises InvalidArgument naming the file and the key for bad content,
    OSError when it cannot be read. Needs PyYAML (Debian python3-yaml).
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read(MAX_JOB_FILE_BYTES + 1)
    if len(data) > MAX_JOB_FILE_BYTES:
        raise _bad(path, "larger than %d bytes" % MAX_JOB_FILE_BYTES)
    try:
        import yaml
    except ImportError:
        raise ImportError("tailor_client: YAML job files need PyYAML "
                          "(Debian: python3-yaml)") from None
    try:
        root = yaml.load(data.decode("utf-8"), Loader=_UniqueKeyLoader.get(path))
    except UnicodeDecodeError:
        raise _bad(path, "is not UTF-8 text") from None
    except yaml.YAMLError as e:
        raise _bad(path, "not valid YAML: %s" % str(e)[:_MAX_SHOWN]) from None
    if not isinstance(root, dict):
        raise _bad(path, "(top level): must be a mapping of job fields")
    lists: Dict[str, List[str]] = {}
    rest = {}
    for key, value in root.items():
        canonical = key.replace("-", "_")
        if canonical in _LISTS:
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(
                    isinstance(v, str) for v in value):
                raise _bad("%s: %s" % (path, canonical),
                           "must be a string or a list of strings")
            lists[canonical] = value
        elif canonical == "tasks":
            if not isinstance(value, list):
                raise _bad("%s: tasks" % path, "must be a list")
            tasks = []
            for i, task in enumerate(value):
                if not isinstance(task, dict):
                    raise _bad("%s: tasks[%d]" % (path, i),
                               "must be a mapping")
                tasks.append(_typed(task, pb.TaskSpec.DESCRIPTOR, path,
                                    "tasks[%d]." % i))
            rest["tasks"] = tasks
        else:
            rest.update(_typed({key: value}, pb.FusionJobSpec.DESCRIPTOR,
                               path, ""))
    if "tasks" in rest and lists:
        raise _bad("%s: tasks" % path, "cannot be combined with top-level "
                   "finetuned/patch/hessians/labels")
    if "tasks" not in rest:
        rest["tasks"] = _tasks_from_lists(path, **lists)
    base = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    for key in _SPEC_URIS:
        if key in rest:
            rest[key] = _resolve(base, rest[key])
    for task in rest["tasks"]:
        for key in _TASK_URIS:
            if key in task:
                task[key] = _resolve(base, task[key])
    return rest


def _tasks_from_lists(path: str, finetuned=(), patch=(), hessians=(),
                      labels=()) -> List[Dict[str, str]]:
    if hessians and len(hessians) != len(finetuned):
        raise _bad(path, "hessians: %d given for %d finetuned checkpoints; "
                   "they pair in order, one each" % (len(hessians),
                                                     len(finetuned)))
    tasks = [{"finetuned": f} for f in finetuned]
    for task, h in zip(tasks, hessians):
        task["hessians"] = h
    tasks += [{"patch": p} for p in patch]
    if labels:
        if len(labels) != len(tasks):
            raise _bad(path, "labels: %d given for %d tasks (finetuned "
                       "first, then patches)" % (len(labels), len(tasks)))
        for task, label in zip(tasks, labels):
            task["label"] = label
    return tasks


def to_spec(spec: Optional[SpecSource] = None,
            **fields: Any) -> "pb.FusionJobSpec":
    """The FusionJobSpec for submit(): `spec` is a dict of spec keys, a path
    to a YAML job file, a FusionJobSpec, or None; keyword arguments add to
    (and override) its keys."""
    if isinstance(spec, pb.FusionJobSpec):
        if not fields:
            return spec
        extra = spec_from_dict(fields)  # checks the keys first
        merged = pb.FusionJobSpec()
        merged.CopyFrom(spec)
        for key in fields:
            merged.ClearField(key.rstrip("_") if key.endswith("_") else key)
        merged.MergeFrom(extra)
        return merged
    if spec is None:
        values: Dict[str, Any] = {}
    elif isinstance(spec, (str, os.PathLike)):
        values = load_job_file(spec)
    elif isinstance(spec, Mapping):
        values = dict(spec)
    else:
        raise _bad("spec", "must be a dict, a job file path or a "
                   "FusionJobSpec, not %s" % type(spec).__name__)
    values.update(fields)
    return spec_from_dict(values)
