"""An HTTP /metrics endpoint that speaks vLLM's Prometheus metrics for many ISVCs at once.

Each ISVC's traffic is a steady stream: by time t, rate*t requests have completed with the
given prompt and output lengths, `running`/`waiting` requests are in the system, and every
request's TTFT and ITL fall in one known histogram bucket. Series carry the labels a scrape
config relabelled for KServe pods gives them (namespace, isvc, model_name); the real Prometheus
in tests scrapes this with honor_labels. Changing `rate`, `waiting` mid-test moves the figures
the way a real server's would.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web

from autoscaler.simulator.observe import ITL_BOUNDS as TPOT_BUCKETS, TTFT_BOUNDS as TTFT_BUCKETS


@dataclass
class EmulatedIsvc:
    namespace: str
    name: str
    model: str
    rate: float  # completions per second
    in_tokens: int = 512
    out_tokens: int = 256
    running: int = 0
    waiting: int = 0
    ttft_s: float = 0.2
    itl_s: float = 0.02
    completed: float = 0.0
    since: float = field(default_factory=time.monotonic)

    def advance(self, now: float) -> None:
        self.completed += self.rate * (now - self.since)
        self.since = now


@dataclass
class VllmEmulator:
    isvcs: list[EmulatedIsvc] = field(default_factory=list)
    scrapes: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _metrics(self, _: web.Request) -> web.Response:
        self.scrapes += 1
        now = time.monotonic()
        lines = []
        for isvc in self.isvcs:
            isvc.advance(now)
            labels = f'namespace="{isvc.namespace}",isvc="{isvc.name}",model_name="{isvc.model}"'
            done = isvc.completed
            lines += [
                f'vllm:request_success_total{{{labels},finished_reason="stop"}} {done}',
                f"vllm:prompt_tokens_total{{{labels}}} {done * isvc.in_tokens}",
                f"vllm:generation_tokens_total{{{labels}}} {done * isvc.out_tokens}",
                f"vllm:num_requests_running{{{labels}}} {isvc.running}",
                f"vllm:num_requests_waiting{{{labels}}} {isvc.waiting}",
            ]
            for metric, value, count, bounds in (
                ("vllm:time_to_first_token_seconds", isvc.ttft_s, done, TTFT_BUCKETS),
                ("vllm:time_per_output_token_seconds", isvc.itl_s, done * (isvc.out_tokens - 1), TPOT_BUCKETS),
            ):
                for bound in bounds:
                    lines.append(f'{metric}_bucket{{{labels},le="{bound}"}} {count if value <= bound else 0.0}')
                lines.append(f'{metric}_bucket{{{labels},le="+Inf"}} {count}')
                lines.append(f"{metric}_sum{{{labels}}} {count * value}")
                lines.append(f"{metric}_count{{{labels}}} {count}")
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")
