"""Generated gRPC code for decisions.proto (made by the build; see setup.py)."""

try:
    from . import decisions_pb2, decisions_pb2_grpc  # noqa: F401
except ImportError as exc:  # a source checkout that was never built or installed
    raise ImportError(
        "autoscaler/proto/decisions_pb2.py is generated at build time: run `pip install -e .` (or `pip install .`)"
    ) from exc
