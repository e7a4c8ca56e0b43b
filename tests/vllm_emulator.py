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

import numpy as np
from aiohttp import web

from autoscaler.simulator.observe import TPOT_BOUNDS as TPOT_BUCKETS, TTFT_BOUNDS as TTFT_BUCKETS


GAPS, OLD_GAPS = "vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"  # vLLM >= 0.11, before


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
    # False: vLLM < 0.11, which exports no per-request TPOT histogram and names its histogram of
    # every gap vllm:time_per_output_token_seconds
    per_request_tpot: bool = True
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
                f"vllm:request_prompt_tokens_sum{{{labels}}} {done * isvc.in_tokens}",
                f"vllm:request_prompt_tokens_count{{{labels}}} {done}",
                f"vllm:request_generation_tokens_sum{{{labels}}} {done * isvc.out_tokens}",
                f"vllm:request_generation_tokens_count{{{labels}}} {done}",
                f"vllm:num_requests_running{{{labels}}} {isvc.running}",
                f"vllm:num_requests_waiting{{{labels}}} {isvc.waiting}",
            ]
            # every gap and every request's mean gap at itl_s: ITL counts gaps, TPOT requests
            histograms = [
                ("vllm:time_to_first_token_seconds", isvc.ttft_s, done, TTFT_BUCKETS),
                (GAPS if isvc.per_request_tpot else OLD_GAPS, isvc.itl_s, done * (isvc.out_tokens - 1), TPOT_BUCKETS),
            ]
            if isvc.per_request_tpot:
                histograms.append(("vllm:request_time_per_output_token_seconds", isvc.itl_s, done, TPOT_BUCKETS))
            for metric, value, count, bounds in histograms:
                for bound in bounds:
                    lines.append(f'{metric}_bucket{{{labels},le="{bound}"}} {count if value <= bound else 0.0}')
                lines.append(f'{metric}_bucket{{{labels},le="+Inf"}} {count}')
                lines.append(f"{metric}_sum{{{labels}}} {count * value}")
                lines.append(f"{metric}_count{{{labels}}} {count}")
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


@dataclass(frozen=True)
class RequestStream:
    """One ISVC's requests with their timelines (s; inf: not yet, or never): the vLLM metrics
    they give at any moment, for a Prometheus backfilled with a stream's whole history.

    As vLLM counts them: running from admission to finish, waiting from arrival to admission
    unless the client gave up first (an aborted request counts in no counter); the first token
    observes TTFT and counts the prompt; a finished request observes its prompt and output
    lengths (request_prompt_tokens, request_generation_tokens: their sums and counts) and its
    mean gap (request_time_per_output_token_seconds; 0 with one output). Its gaps count in
    inter_token_latency_seconds when it finishes, as the simulator's observer counts them: it
    knows a request's decode time only then (simulator/observe.py); their buckets, which the
    collector does not read, put each gap at its request's mean."""

    namespace: str
    name: str
    model: str
    arrival: np.ndarray
    admitted: np.ndarray
    first: np.ndarray
    finish: np.ndarray
    dropped_at: np.ndarray
    in_tokens: np.ndarray
    out_tokens: np.ndarray

    def series(self, t: float) -> list[tuple[str, float]]:
        labels = f'namespace="{self.namespace}",isvc="{self.name}",model_name="{self.model}"'
        done, started = self.finish <= t, self.first <= t
        running = (self.admitted <= t) & ~done
        waiting = (self.arrival <= t) & (self.admitted > t) & (self.dropped_at > t)
        gaps = self.out_tokens - 1
        ttft = self.first - self.arrival
        itl = np.zeros(len(self.arrival))  # each request's mean gap: 0 with one output, as vLLM's TPOT
        decoding = done & (gaps > 0)
        itl[decoding] = (self.finish[decoding] - self.first[decoding]) / gaps[decoding]
        result = [
            (f'vllm:request_success_total{{{labels},finished_reason="stop"}}', done.sum()),
            (f"vllm:prompt_tokens_total{{{labels}}}", self.in_tokens[started].sum()),
            (f"vllm:request_prompt_tokens_sum{{{labels}}}", self.in_tokens[done].sum()),
            (f"vllm:request_prompt_tokens_count{{{labels}}}", done.sum()),
            (f"vllm:request_generation_tokens_sum{{{labels}}}", self.out_tokens[done].sum()),
            (f"vllm:request_generation_tokens_count{{{labels}}}", done.sum()),
            (f"vllm:num_requests_running{{{labels}}}", running.sum()),
            (f"vllm:num_requests_waiting{{{labels}}}", waiting.sum()),
        ]
        for metric, values, weights, bounds in (
            ("vllm:time_to_first_token_seconds", ttft[started], np.ones(started.sum()), TTFT_BUCKETS),
            ("vllm:inter_token_latency_seconds", itl[done], gaps[done], TPOT_BUCKETS),
            ("vllm:request_time_per_output_token_seconds", itl[done], np.ones(done.sum()), TPOT_BUCKETS),
        ):
            for bound in bounds:
                result.append((f'{metric}_bucket{{{labels},le="{bound}"}}', weights[values <= bound].sum()))
            result.append((f'{metric}_bucket{{{labels},le="+Inf"}}', weights.sum()))
            result.append((f"{metric}_sum{{{labels}}}", (values * weights).sum()))
            result.append((f"{metric}_count{{{labels}}}", weights.sum()))
        return [(name, float(value)) for name, value in result]


def openmetrics(streams: list[RequestStream], times: list[float], base: float) -> str:
    """The streams' series at each of `times`, stamped base + time: what a backfill takes."""
    lines = [f"{name} {value} {base + t:.3f}" for t in times for stream in streams for name, value in stream.series(t)]
    return "\n".join(lines) + "\n# EOF\n"
