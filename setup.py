"""Generates the gRPC code from autoscaler/proto/*.proto whenever the package is built,
installed or installed in editable mode; the generated files are never committed."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PROTO_DIR = Path(__file__).parent / "autoscaler" / "proto"


def generate_grpc_code() -> None:
    from grpc_tools import protoc

    root = Path(__file__).parent
    for proto in sorted(PROTO_DIR.glob("*.proto")):
        relative = proto.relative_to(root)
        args = ["grpc_tools.protoc", f"-I{root}", f"--python_out={root}", f"--grpc_python_out={root}", str(relative)]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {relative}")


class BuildWithGrpc(build_py):
    def run(self):
        generate_grpc_code()
        super().run()


setup(cmdclass={"build_py": BuildWithGrpc})
