"""Request streams for the simulator: built-in seeded scenarios and replayed traces.

A stream is four parallel arrays sorted by arrival time. Request sizes are drawn from the real
Azure traces' (prompt, output) pairs so every scenario carries realistic length distributions.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import InputError

# longer than any model's context window (10 M tokens): a count beyond it is a typo or a unit error
MAX_TOKENS = 10_000_000


@dataclass(frozen=True)
class Requests:
    """Arrivals sorted by time (s from start), each with its ISVC index and token counts."""

    time: np.ndarray
    isvc: np.ndarray
    in_tokens: np.ndarray
    out_tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.time)

    def where(self, keep: np.ndarray) -> Requests:
        """The requests `keep` (a boolean mask) selects, in their order."""
        return Requests(self.time[keep], self.isvc[keep], self.in_tokens[keep], self.out_tokens[keep])

    @staticmethod
    def merge(parts: Sequence[Requests]) -> Requests:
        time = np.concatenate([p.time for p in parts])
        order = np.argsort(time, kind="stable")
        return Requests(
            time[order],
            np.concatenate([p.isvc for p in parts])[order],
            np.concatenate([p.in_tokens for p in parts])[order],
            np.concatenate([p.out_tokens for p in parts])[order],
        )


@dataclass(frozen=True)
class Trace:
    """Arrival offsets (s) and token counts of one recorded trace."""

    time: np.ndarray
    in_tokens: np.ndarray
    out_tokens: np.ndarray


def _trace_path(name: str) -> Path:
    return Path(str(resources.files("autoscaler") / "data" / "traces" / f"AzureLLMInference{'Trace_' + name}.csv"))


def _bad(path: Path, line: int, problem: str) -> InputError:
    return InputError(str(path), f"line {line}", problem)


def read_azure_trace(path: Path) -> Trace:
    """TIMESTAMP,ContextTokens,GeneratedTokens with timestamps like 2023-11-16 18:17:03.9799600."""
    times, inputs, outputs = [], [], []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None or [h.strip() for h in header] != ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]:
                raise _bad(path, 1, "expected the header TIMESTAMP,ContextTokens,GeneratedTokens")
            for line, row in enumerate(reader, start=2):
                try:
                    stamp, context, generated = row
                    # Python's parser takes microseconds only: the trace has seven fractional digits
                    whole, _, fraction = stamp.strip().partition(".")
                    moment = datetime.fromisoformat(whole).timestamp() + float("0." + (fraction or "0"))
                    inputs.append(int(context))
                    outputs.append(int(generated))
                    times.append(moment)
                except ValueError:
                    raise _bad(path, line, f"expected TIMESTAMP,ContextTokens,GeneratedTokens, got {','.join(row)!r}") from None
                _check_tokens(path, line, inputs[-1], outputs[-1], least_out=0)
    except OSError as exc:
        raise InputError(str(path), "", f"cannot read: {exc.strerror or exc}") from None
    if not times:
        raise _bad(path, 2, "no requests")
    stamps = np.array(times)
    order = np.argsort(stamps, kind="stable")
    return Trace(stamps[order] - stamps[order][0], np.array(inputs)[order], np.array(outputs)[order])


def read_simple_trace(path: Path, isvc_of_model: Callable[[str], int | None]) -> Requests:
    """time,model,in,out with time in seconds from the start; models map to ISVCs."""
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = [h.strip() for h in next(reader, [])]
            if header != ["time", "model", "in", "out"]:
                raise _bad(path, 1, "expected the header time,model,in,out")
            for line, row in enumerate(reader, start=2):
                try:
                    when, model, inp, out = row
                    rows.append((float(when), model.strip(), int(inp), int(out)))
                except ValueError:
                    raise _bad(path, line, f"expected time,model,in,out, got {','.join(row)!r}") from None
                index = isvc_of_model(rows[-1][1])
                if index is None:
                    raise _bad(path, line, f"unknown model {rows[-1][1]!r}")
                if not 0 <= rows[-1][0] < float("inf"):
                    raise _bad(path, line, f"time must be a finite number >= 0, got {when.strip()}")
                _check_tokens(path, line, rows[-1][2], rows[-1][3], least_out=1)
    except OSError as exc:
        raise InputError(str(path), "", f"cannot read: {exc.strerror or exc}") from None
    if not rows:
        raise _bad(path, 2, "no requests")
    rows.sort(key=lambda r: r[0])
    return Requests(
        np.array([r[0] for r in rows]),
        np.array([isvc_of_model(r[1]) for r in rows]),
        np.array([r[2] for r in rows]),
        np.array([r[3] for r in rows]),
    )


def _check_tokens(path: Path, line: int, prompt: int, output: int, least_out: int) -> None:
    if not 0 <= prompt <= MAX_TOKENS or not least_out <= output <= MAX_TOKENS:
        raise _bad(
            path, line, f"tokens must be 0..{MAX_TOKENS:,} in and {least_out}..{MAX_TOKENS:,} out, got {prompt:,} and {output:,}"
        )


def builtin_trace(name: str) -> Trace:
    return read_azure_trace(_trace_path(name))


def poisson_arrivals(rate_per_second: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Arrival times of a Poisson process whose rate is constant within each second."""
    counts = rng.poisson(rate_per_second)
    starts = np.repeat(np.arange(len(rate_per_second), dtype=float), counts)
    return np.sort(starts + rng.random(starts.size))


def sized(times: np.ndarray, isvc: int, sizes: Trace, rng: np.random.Generator) -> Requests:
    """Give each arrival a (prompt, output) pair drawn from a trace."""
    pick = rng.integers(0, len(sizes.in_tokens), times.size)
    return Requests(times, np.full(times.size, isvc), sizes.in_tokens[pick], np.maximum(sizes.out_tokens[pick], 1))


def looped(trace: Trace, shift_s: float, period_s: float) -> Trace:
    """The trace read as a loop `period_s` long and shifted by `shift_s`: each request at (its
    time + shift) mod period, in time order (a tie keeps the trace's order)."""
    time = (trace.time + shift_s) % period_s
    order = np.argsort(time, kind="stable")
    return Trace(time[order], trace.in_tokens[order], trace.out_tokens[order])


def replayed(trace: Trace, isvc: int, duration_s: float, speed: float = 1.0) -> Requests:
    """The trace's own arrivals and sizes, time-scaled by `speed`, cut at `duration_s`."""
    time = trace.time / speed
    keep = time < duration_s
    return Requests(time[keep], np.full(int(keep.sum()), isvc), trace.in_tokens[keep], np.maximum(trace.out_tokens[keep], 1))
