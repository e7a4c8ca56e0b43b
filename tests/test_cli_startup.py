"""`optimize` starts without the services' dependencies (issue #15: start-up time).

A fresh interpreter is needed: other tests import those modules into this one. Start-up time
itself is measured, not tested (README, "The optimizer").
"""

import subprocess
import sys

SERVICE_MODULES = ("kubernetes_asyncio", "aiohttp", "grpc", "cryptography", "autoscaler.controller", "autoscaler.simulator")
SCRIPT = """
import contextlib, io, sys
from autoscaler.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    assert main(["optimize", "--json"]) == 0
print("\\n".join(sys.modules))
"""


def test_optimize_imports_only_what_it_uses():
    loaded = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout.split()
    assert [m for m in loaded if m.startswith(SERVICE_MODULES)] == []
