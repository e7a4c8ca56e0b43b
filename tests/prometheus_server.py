"""A real Prometheus server (Debian's `prometheus` package) for tests and benchmarks.

It scrapes an exporter on loopback every second; `start` returns once the first scrape's
series are queryable. Or it serves series written beforehand with timestamps (`backfill`, by
the package's promtool), queried at a chosen time: a window of simulated time read exactly,
without waiting for it. CI installs the package (see .ci/run).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

BINARY = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrometheusServer:
    def __init__(self, directory: Path, scrape_port: int, scrape_interval_s: int = 1):
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "prometheus.yml").write_text(
            f"global:\n  scrape_interval: {scrape_interval_s}s\n  evaluation_interval: {scrape_interval_s}s\n"
            "scrape_configs:\n  - job_name: controller\n    honor_labels: true\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{scrape_port}']\n"
        )
        self.process: subprocess.Popen | None = None

    def start(self, expect_query: str, expect_count: int, timeout_s: float = 60.0) -> "PrometheusServer":
        if not Path(BINARY).exists():
            raise RuntimeError("the prometheus binary is missing: apt-get install prometheus")
        self.process = subprocess.Popen(
            [
                BINARY,
                f"--config.file={self.directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.directory / "prometheus.log", "wb"),
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(self.directory / 'prometheus.log').read_text()[-2000:]}")
            try:
                if self.count(expect_query) >= expect_count:
                    return self
            except OSError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"prometheus did not scrape {expect_count} series of {expect_query} in {timeout_s:g} s")

    def backfill(self, openmetrics: str) -> "PrometheusServer":
        """Write timestamped samples (OpenMetrics text ending in `# EOF`) into the storage, before `start`."""
        source = self.directory / "backfill.om"
        source.write_text(openmetrics)
        subprocess.run(
            [PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", str(source), str(self.directory / "data")],
            check=True,
            capture_output=True,
        )
        return self

    def query(self, promql: str, at: float) -> list[dict]:
        """An instant query's result vector at unix time `at`."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql, "time": f"{at:.3f}"})
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)["data"]["result"]

    def count(self, query: str) -> int:
        url = f"{self.url}/api/v1/query?query=" + urllib.parse.quote(f"count({query})")
        with urllib.request.urlopen(url, timeout=2) as response:
            result = json.load(response)["data"]["result"]
            return int(result[0]["value"][1]) if result else 0

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
