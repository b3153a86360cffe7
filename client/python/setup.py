"""Builds tailor_client, generating its gRPC stubs from proto/ first.

The stubs are generated into the build directory (never the source tree)
from $TAILOR_PROTO_DIR, else ../../proto beside this file, with $PROTOC and
$GRPC_PYTHON_PLUGIN, else protoc and grpc_python_plugin on PATH (Debian:
protobuf-compiler, protobuf-compiler-grpc), else the grpc_tools module. The
generated grpc module's import of the message module is rewritten to the
package path (tailor_client._proto); the descriptor keeps its file name,
tailor/v1/fusion_service.proto.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.join("tailor", "v1", "fusion_service.proto")
STUBS = ("fusion_service_pb2.py", "fusion_service_pb2_grpc.py")


def proto_dir():
    d = os.environ.get("TAILOR_PROTO_DIR") or os.path.join(HERE, "..", "..",
                                                           "proto")
    if not os.path.isfile(os.path.join(d, PROTO)):
        sys.exit("tailor_client: %s not found under %s (set TAILOR_PROTO_DIR "
                 "to the repository's proto/ directory)" % (PROTO, d))
    return os.path.abspath(d)


def protoc_command(src, out):
    protoc = os.environ.get("PROTOC") or shutil.which("protoc")
    plugin = (os.environ.get("GRPC_PYTHON_PLUGIN") or
              shutil.which("grpc_python_plugin"))
    args = ["-I", src, "--python_out=" + out, "--grpc_out=" + out,
            os.path.join(src, PROTO)]
    if protoc and plugin:
        return [protoc, "--plugin=protoc-gen-grpc=" + plugin] + args
    if importlib.util.find_spec("grpc_tools") is None:
        sys.exit("tailor_client: need protoc and grpc_python_plugin (Debian: "
                 "protobuf-compiler protobuf-compiler-grpc; or set PROTOC and "
                 "GRPC_PYTHON_PLUGIN) or the grpc_tools module to generate "
                 "the gRPC stubs")
    args[3] = "--grpc_python_out=" + out
    return [sys.executable, "-m", "grpc_tools.protoc"] + args


def generate(package_dir):
    """Writes the stubs into package_dir (tailor_client/_proto)."""
    src = proto_dir()
    with tempfile.TemporaryDirectory(prefix="tailor-stubs-") as out:
        subprocess.run(protoc_command(src, out), check=True)
        os.makedirs(package_dir, exist_ok=True)
        for name in STUBS:
            with open(os.path.join(out, "tailor", "v1", name)) as f:
                text = f.read()
            text = re.sub(r"^from tailor\.v1 import ",
                          "from tailor_client._proto import ", text,
                          flags=re.M)
            with open(os.path.join(package_dir, name), "w") as f:
                f.write(text)


class BuildPyWithStubs(build_py):
    def run(self):
        # setuptools reuses build/lib across builds: start clean, so a module
        # removed from the source is not shipped.
        shutil.rmtree(os.path.join(self.build_lib, "tailor_client"),
                      ignore_errors=True)
        super().run()
        generate(os.path.join(self.build_lib, "tailor_client", "_proto"))


setup(cmdclass={"build_py": BuildPyWithStubs})
