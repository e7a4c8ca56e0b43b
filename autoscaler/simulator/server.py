"""One replica's vLLM engine: scheduler, KV blocks and step clock. Pure: the engine drives it.

Modes (`EngineSettings.mode`):

- `v1-chunked` (default, vLLM V1 as run today; `vllm/v1/core/sched/scheduler.py`): every step
  first gives each running request what it still needs, one token per decode, the rest of a
  partly prefilled prompt as far as the token budget (`max_num_batched_tokens`) goes; then, if
  nothing was preempted, admits waiting requests in order while budget is left and fewer than
  `max_num_seqs` run. A new prompt gets min(prompt, budget left) tokens; the rest follow as
  chunks. Admission needs the whole prompt to fit in free KV blocks (0.33's default
  `scheduler_reserve_full_isl`); a head that does not fit blocks the queue.
- `v0-prefill-first` (vLLM V0 without chunked prefill, `vllm/core/scheduler.py`
  `_schedule_default`): if waiting prompts fit (whole prompts within the token budget, the seat
  limit, and their blocks plus a 1% watermark free), the step prefills them and the running
  batch waits; otherwise it is a decode step of the whole running batch. With
  `num_scheduler_steps` k > 1 (V0's multi-step scheduling, `--num-scheduler-steps`): a prefill
  is one step, but decodes run in groups of k steps with the blocks for all k reserved at the
  group's start (vLLM's lookahead slots); the scheduler runs, and the group's tokens stream to
  clients, only when the group ends, so a request finishing inside a group runs to its end.
- `stall`: the simulator's earlier model, kept for comparison: a prefill of everything admitted
  stalls the batch, KV reserved for prompt + output on admission.

KV is allocated in blocks of 16 tokens as tokens are computed. When a step's decodes need
blocks that are not free, the newest running request is preempted: its blocks are freed and it
goes back to the front of the queue to be recomputed (prompt plus the output so far), as vLLM
does by default. A step costs `linear_ms(tokens in the step) + kv_read_ms * context read` on
the GPU (profiles.py) or the engine's CPU costs (`Overheads`: per step, per sequence in a step
and per request in the step that starts it), whichever is longer: the CPU schedules and
processes outputs while the GPU runs (V0's asynchronous output processing with multi-step,
V1's asynchronous scheduling), so a step waits for it only where it takes longer. The costs are
fitted to published vLLM measurements (benchmarks/published_vllm.py). Before any of that, the
API server (one asyncio thread) takes each request in (parsing, tokenising) at a cost per
request, and hands what it took in to the engine
once it is through its queue: the engine starts on a burst only when the whole burst is in (in
the published runs the first token of a burst of 1,280 came 3.3 s after it was sent). Streamed
tokens wait behind the intake too, on the same thread.

Cost: most steps are decode steps of an unchanged batch, so a run of them is one span computed
in closed form (the context grows by the batch size per step, and the step time is linear in
it), ending at the next completion or at the first step whose KV allocation would fail; an
arrival mid-span cuts it at the step in progress. Decodes run in
lock step, so a decode's block boundaries recur every 16 steps at a fixed phase: per-phase
counts give the blocks a span allocates without visiting requests.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..policy.sizing import token_budget  # vLLM's default, which the planner reads too
from .profiles import StepTimes

MODES = ("v1-chunked", "v0-prefill-first", "stall")
BLOCK_SIZE = 16  # vLLM's default KV block (config/cache.py)
V0_WATERMARK = 0.01  # V0's block manager keeps 1% of blocks free when admitting a prompt


@dataclass(frozen=True)
class Overheads:
    """The engine's CPU costs per step, per sequence in a step and per new request; the API
    server's per request (one thread: what it streams waits behind the requests it takes in)."""

    step_ms: float = 0.0
    seq_ms: float = 0.0
    request_ms: float = 0.0  # the engine's cost to take in a request, paid in the step that starts it
    frontend_ms: float = 0.0  # the API server's intake per request, before the engine sees it


# One least-squares fit over every statistic of all seven published points
# (`python benchmarks/published_vllm.py --fit`: vLLM 0.6.0, V0 with 10 scheduler steps,
# Llama-3-8B, H100, each run's own requests; sum of squared relative errors 0.19 over 49
# cells). The engine's CPU per step (3.8 ms) and per sequence in it (0.057 ms) outlast the GPU
# only in decode steps of more than about 100 sequences; the API server's intake (3.0 ms per
# request) is what delays a burst; a cost per new request fits to zero. V1 (separate engine
# core, async scheduling, persistent batch) spends less CPU per step and request, so for the
# V1 default these are an upper bound.
FITTED_OVERHEADS = Overheads(step_ms=3.79, seq_ms=0.0565, request_ms=0.0, frontend_ms=3.02)


@dataclass(frozen=True)
class EngineSettings:
    """How every simulated replica runs vLLM."""

    mode: str = "v1-chunked"
    overheads: Overheads = FITTED_OVERHEADS
    max_num_batched_tokens: int | None = None  # None: vLLM's default for the GPU (token_budget)
    # V0's multi-step scheduling (`--num-scheduler-steps`, vLLM 0.5.5-0.10): decodes run in
    # groups of this many steps; the scheduler runs, and tokens stream, only between groups
    num_scheduler_steps: int = 1

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown server mode {self.mode!r} (one of {', '.join(MODES)})")
        if self.num_scheduler_steps < 1 or (self.num_scheduler_steps > 1 and self.mode != "v0-prefill-first"):
            raise ValueError("num_scheduler_steps: a positive count, above 1 only in v0-prefill-first mode (V0's multi-step)")


@dataclass
class Ledger:
    """The run's per-request arrays, shared by all replicas, and the engine's callbacks."""

    arrival: list[float]
    in_tokens: list[int]
    out_tokens: list[int]
    first_token: list[float]
    on_finish: Callable[[int, float], None]  # (request, time its client has the last token)
    on_drop: Callable[[int], None]
    timeout_s: float  # requests queued longer than this before they start are dropped


class Steps:
    """An ISVC's engine steps that emitted output, its replicas together: the count of vLLM's
    vllm:iteration_tokens_total histogram (v1/metrics/loggers.py observes it once per step with
    outputs: the tokens of the prefills it finished plus those it generated; a step that only
    carries a chunk of a prompt emits nothing and is not counted)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


def blocks(tokens: int) -> int:
    return -(-tokens // BLOCK_SIZE)


class VllmServer:
    """vLLM's scheduler (V1 chunked or V0 prefill-first) over one replica's KV cache."""

    def __init__(
        self,
        settings: EngineSettings,
        times: StepTimes,
        ledger: Ledger,
        *,
        max_num_seqs: int,
        budget: int,
        steps: Steps | None = None,
    ):
        self.v1 = settings.mode == "v1-chunked"
        self.output_steps = steps or Steps()  # the ISVC's, where its steps are read
        self.times = times
        self.ledger = ledger
        self.max_num_seqs = max_num_seqs
        self.budget = max(budget, max_num_seqs)  # vLLM refuses to start with fewer tokens than seats
        self.total_blocks = times.kv_cache_tokens // BLOCK_SIZE
        self.free = self.total_blocks
        self.watermark = 0 if self.v1 else int(V0_WATERMARK * self.total_blocks)
        over = settings.overheads
        self.group = settings.num_scheduler_steps  # decode steps per scheduling (V0 multi-step)
        self.step_ms, self.seq_ms = over.step_ms, over.seq_ms
        self.request_ms, self.frontend_s = over.request_ms, over.frontend_ms / 1000.0
        self.api_free = -math.inf  # when the API server's thread is through its queued work
        self.intake: list[int] = []  # requests the API server has not yet handed to the engine
        self.waiting: deque[int] = deque()
        self.running: dict[int, None] = {}  # admission order; the last is preempted first
        self.known: dict[int, int] = {}  # tokens to prefill: prompt, plus the output so far after a preemption
        self.prefilled: dict[int, int] = {}  # running requests still in prefill: tokens computed
        # decodes: context = counter - offset; every decode step advances all by one token
        self.counter = 0
        self.offset: dict[int, int] = {}
        self.offset_sum = 0
        self.phases = [0] * BLOCK_SIZE  # decodes by (-offset) mod 16: their block boundaries' phase
        self.finishes: list[tuple[int, int]] = []  # (counter at which it finishes, request)
        # the step (or span of decode steps) in flight
        self.start = 0.0
        self.next_event = math.inf
        self.span = 0  # decode steps in the span; 0: a single built step (chunks, maybe decodes)
        self.chunks: list[tuple[int, int]] = []
        self.decoding = False  # the built step advances the decodes
        self.base_ms = 0.0  # span: per-step GPU cost at zero context
        self.cpu_ms = 0.0  # span: per-step CPU cost (a step takes the longer of the two)
        self.context0 = 0  # span: context summed over decodes at its first step
        self.preemptions = 0
        self.load = 0  # requests running or waiting (the router reads it on every arrival)

    # ------------------------------------------------------------------ engine
    @property
    def idle(self) -> bool:
        return not self.running and not self.waiting and not self.intake

    def submit(self, request: int, now: float) -> bool:
        """Queue a request; True if the next event moved (the engine reschedules)."""
        ledger = self.ledger
        if blocks(ledger.in_tokens[request] + ledger.out_tokens[request]) > self.total_blocks:
            ledger.on_drop(request)  # longer than the cache: vLLM rejects it (max_model_len)
            return False
        # The API server (one asyncio thread) parses and tokenises each request; the engine gets
        # what it took in once the thread is through its queue (a burst reaches it all at once).
        self.intake.append(request)
        self.load += 1
        self.api_free = max(now, self.api_free) + self.frontend_s
        if self.next_event == math.inf:  # idle: a step starts once the request is in
            self.start = self.next_event = self.api_free
            return True
        if self.span and not self.waiting and len(self.running) < self.max_num_seqs:
            # cut the span after the group in progress when the request is in: it may join the next step
            steps = self._group_steps(self._steps_until(self.api_free))
            if steps < self.span:
                self.span = steps
                self.next_event = self.start + self._span_s(steps)
                return True
        return False

    def wake(self, now: float) -> None:
        """The step or span in flight ended at `now`: apply it, then build the next."""
        if self.span:
            self._commit_span(now)
        elif self.chunks or self.decoding:
            self._commit_step(now)
        if self.finishes and self.finishes[0][0] <= self.counter:
            self._finish(now)
        self._build(now)

    # ------------------------------------------------------------- committing
    def _commit_span(self, now: float) -> None:
        self.free -= self._decode_blocks(self.span)
        self.counter += self.span
        self.output_steps.count += self.span  # each decodes: each emits output
        self.span = 0

    def _decode_blocks(self, steps: int) -> int:
        """Blocks the running decodes allocate over their next `steps` steps."""
        cycles, rest = divmod(steps, BLOCK_SIZE)
        counter, phases = self.counter, self.phases
        return cycles * len(self.offset) + sum(phases[(1 - counter - i) % BLOCK_SIZE] for i in range(rest))

    def _commit_step(self, now: float) -> None:
        if self.decoding:
            self.counter += 1
        ledger, first = self.ledger, self.ledger.first_token
        seen = max(now, self.api_free)  # the API server streams it once through its queued work
        emitted = self.decoding
        for request, chunk in self.chunks:
            done = self.prefilled[request] + chunk
            known = self.known[request]
            if done < known:
                self.prefilled[request] = done
                continue
            emitted = True
            # last chunk: the step samples the next token, the request decodes from here
            del self.prefilled[request]
            if first[request] != first[request]:  # nan: its first token
                first[request] = seen
            offset = self.counter - (known + 1)
            self.offset[request] = offset
            self.offset_sum += offset
            self.phases[-offset % BLOCK_SIZE] += 1
            heapq.heappush(self.finishes, (offset + ledger.in_tokens[request] + ledger.out_tokens[request], request))
        self.chunks = []
        self.decoding = False
        self.output_steps.count += emitted

    def _finish(self, now: float) -> None:
        finishes, offsets, ledger = self.finishes, self.offset, self.ledger
        while finishes and finishes[0][0] <= self.counter:
            at, request = heapq.heappop(finishes)
            offset = offsets.get(request)
            if offset is None or at != offset + ledger.in_tokens[request] + ledger.out_tokens[request]:
                continue  # preempted since; its entry is stale
            # KV held: the context less the last sampled token, which was never computed (with
            # multi-step, the steps to the group's end ran on and hold their tokens too)
            self.free += blocks(self.counter - offset - 1)
            self._remove_decode(request)
            del self.running[request]
            del self.known[request]
            self.load -= 1
            ledger.on_finish(request, max(self.api_free, now))

    def _remove_decode(self, request: int) -> None:
        offset = self.offset.pop(request)
        self.offset_sum -= offset
        self.phases[-offset % BLOCK_SIZE] -= 1

    # --------------------------------------------------------------- building
    def _build(self, now: float) -> None:
        self.start = now
        if self.intake and now >= self.api_free:
            self.waiting.extend(self.intake)
            self.intake.clear()
        if not self.v1 and self.waiting:  # V0: waiting prompts first; that step carries no decodes
            admitted, fresh = self._admit(now, self.budget, prefill_first=True)
            if admitted:
                self._run_step(now, admitted, 0, fresh)
                return
        if self.group > 1 and self.offset:
            self._build_group(now)
            return
        counter, offsets, n = self.counter, self.offset, len(self.offset)
        # decodes whose context reaches a new block this step (context = 16m + 1)
        need = self.phases[(1 - counter) % BLOCK_SIZE] if n else 0
        plan: list[tuple[int, int, int]] = []  # partial prefills: (request, chunk, new blocks)
        planned = 0
        budget = self.budget - n
        if self.prefilled:  # V1 only: V0 prefills whole prompts in one step
            for request, done in self.prefilled.items():
                if budget <= 0:
                    break
                chunk = min(self.known[request] - done, budget)
                budget -= chunk
                plan.append((request, chunk, blocks(done + chunk) - blocks(done)))
                planned += plan[-1][2]
        preempted = False
        while self.running and need + planned > self.free:
            preempted = True
            victim = next(reversed(self.running))
            if victim in offsets:
                context = counter - offsets[victim]
                need -= context % BLOCK_SIZE == 1
                self._remove_decode(victim)
                n -= 1
                budget += 1
                self.known[victim] = context  # recomputed: the prompt and the output so far
                held = blocks(context - 1)
            else:
                held = blocks(self.prefilled.pop(victim))
                for i, (request, chunk, new_blocks) in enumerate(plan):
                    if request == victim:
                        budget += chunk
                        planned -= new_blocks
                        del plan[i]
                        break
            self.preemptions += 1
            self.free += held
            del self.running[victim]
            self.waiting.appendleft(victim)
        chunks = [(request, chunk) for request, chunk, _ in plan]
        self.free -= planned
        fresh = 0
        if self.v1 and self.waiting and not preempted:  # V1 admits only if nothing was preempted
            self.free -= need  # the running requests' blocks come first
            admitted, fresh = self._admit(now, budget, prefill_first=False)
            self.free += need
            chunks += admitted
        if not chunks and n:
            self._start_span(now, n)  # a span allocates its steps' blocks when it is applied
        elif chunks or n:
            self.free -= need
            self._run_step(now, chunks, n, fresh)
        else:
            self.chunks, self.decoding = [], False
            # idle until the API server hands over what it is taking in (or a queue head that
            # fits in no free cache waits for ever)
            self.next_event = self.api_free if self.intake else math.inf

    def _build_group(self, now: float) -> None:
        """V0 multi-step: the scheduler reserves every decode's slots for the whole group (its
        lookahead slots), preempting the newest while they do not fit, then the group runs."""
        group, counter, offsets = self.group, self.counter, self.offset
        need = self._decode_blocks(group)
        while need > self.free:
            victim = next(reversed(self.running))
            context = counter - offsets[victim]
            need -= blocks(context - 1 + group) - blocks(context - 1)
            self._remove_decode(victim)
            self.known[victim] = context  # recomputed: the prompt and the output so far
            self.preemptions += 1
            self.free += blocks(context - 1)
            del self.running[victim]
            self.waiting.appendleft(victim)
        if offsets:
            self._start_span(now, len(offsets))
        else:
            self._build(now)  # every decode was preempted: their prompts are recomputed

    def _run_step(self, now: float, chunks: list[tuple[int, int]], decodes: int, new_requests: int) -> None:
        self.chunks, self.decoding = chunks, decodes > 0
        prefill_tokens = sum(chunk for _, chunk in chunks)
        context = decodes * self.counter - self.offset_sum if decodes else 0
        gpu_ms = self.times.linear_ms(decodes + prefill_tokens) + self.times.kv_read_ms * (context + prefill_tokens)
        cpu_ms = self.step_ms + self.seq_ms * (decodes + len(chunks)) + self.request_ms * new_requests
        self.next_event = now + max(gpu_ms, cpu_ms) / 1000.0

    def _admit(self, now: float, budget: int, *, prefill_first: bool) -> tuple[list[tuple[int, int]], int]:
        """Waiting requests that start this step, in order, as (request, chunk); and how many
        of them are new (not recomputed after a preemption)."""
        admitted: list[tuple[int, int]] = []
        fresh = 0
        waiting, ledger = self.waiting, self.ledger
        reserved = 0
        while waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            request = waiting[0]
            if now - ledger.arrival[request] > ledger.timeout_s and ledger.first_token[request] != ledger.first_token[request]:
                waiting.popleft()
                self.load -= 1
                ledger.on_drop(request)
                continue
            known = self.known.get(request) or ledger.in_tokens[request]
            whole = blocks(known)
            if whole + self.watermark > self.free - reserved:
                break  # the head does not fit: nothing behind it starts either
            if prefill_first:
                if known > budget and admitted:
                    break  # V0 schedules whole prompts; a prompt over the budget runs alone
                chunk = known
            else:
                chunk = min(known, budget)
            waiting.popleft()
            fresh += request not in self.known
            self.running[request] = None
            self.known[request] = known
            self.prefilled[request] = 0
            budget -= chunk
            reserved += blocks(chunk)
            admitted.append((request, chunk))
        self.free -= reserved
        return admitted, fresh

    # ------------------------------------------------------------------ spans
    def _start_span(self, now: float, n: int) -> None:
        """Decode steps of an unchanged batch until the next event that could change it: whole
        groups of steps, to the end of the one in which the first request finishes."""
        counter = self.counter
        steps = self.finishes[0][0] - counter if self.finishes else 1
        steps = self._group_steps(max(steps, 1))
        # the first step whose block allocation would fail is built alone (it preempts)
        cycles = self.free // n
        safe = cycles * BLOCK_SIZE
        left = self.free - cycles * n
        while safe < steps:
            left -= self.phases[(1 - counter - safe) % BLOCK_SIZE]
            if left < 0:
                break
            safe += 1
        # a single step: the first whose allocation fails is built alone (it preempts); a group
        # was checked to fit whole before it started
        steps = min(steps, max(safe // self.group * self.group, self.group))
        self.base_ms = self.times.linear_ms(n)
        self.cpu_ms = self.step_ms + self.seq_ms * n
        self.context0 = n * counter - self.offset_sum
        if self.intake:  # the requests being taken in may start after the group in progress
            steps = min(steps, self._group_steps(self._steps_until(self.api_free)))
        self.span = steps
        self.next_event = now + self._span_s(steps)

    def _group_steps(self, steps: int) -> int:
        """`steps` rounded up to whole groups."""
        return -(-steps // self.group) * self.group

    def _cpu_bound_steps(self) -> float:
        """How many of the span's first steps the CPU outlasts (the GPU's grow with the context;
        inf if they never do)."""
        gpu0, growth = self.base_ms + self.times.kv_read_ms * self.context0, self.times.kv_read_ms * len(self.offset)
        if self.cpu_ms <= gpu0:
            return 0
        return math.inf if growth <= 0 else math.ceil((self.cpu_ms - gpu0) / growth)

    def _span_s(self, steps: int) -> float:
        """Duration of the span's first `steps` steps: the GPU's step grows with the context (by
        the batch per step); a step takes its CPU cost where that is longer."""
        n = len(self.offset)
        kv = self.times.kv_read_ms
        cpu_steps = min(self._cpu_bound_steps(), steps)
        gpu_steps = steps - cpu_steps
        gpu0 = self.base_ms + kv * (self.context0 + n * cpu_steps)
        return (cpu_steps * self.cpu_ms + gpu_steps * gpu0 + kv * n * gpu_steps * (gpu_steps - 1) / 2) / 1000.0

    def _steps_until(self, time: float) -> int:
        """Steps of the span to reach the first boundary at or after `time` (at least one)."""
        target = (time - self.start) * 1000.0
        if target <= 0:
            return 1
        n, kv = len(self.offset), self.times.kv_read_ms
        cpu_steps = self._cpu_bound_steps()
        if target <= cpu_steps * self.cpu_ms:
            steps = target / self.cpu_ms
        else:  # the GPU-bound steps after the CPU-bound ones: their time is quadratic in their count
            rest = target - cpu_steps * self.cpu_ms
            a, b = kv * n / 2, self.base_ms + kv * (self.context0 + n * cpu_steps) - kv * n / 2
            steps = cpu_steps + (rest / b if a == 0 else (-b + math.sqrt(b * b + 4 * a * rest)) / (2 * a))
        steps = max(math.ceil(steps - 1e-9), 1)
        return steps if self._span_s(steps) * 1000.0 >= target - 1e-9 else steps + 1


class StallServer:
    """The simulator's earlier server: continuous batching in decode steps whose time depends on
    batch and mean context; what is admitted is prefilled in one pass that stalls the batch;
    admission bounded by the max batch and by the KV cache, with prompt + output reserved up
    front. Between admissions the batch is fixed, so progress is counted in fractional steps."""

    def __init__(self, times: StepTimes, ledger: Ledger, *, max_num_seqs: int):
        self.times = times
        self.ledger = ledger
        self.max_batch = max_num_seqs
        self.kv_cap = times.kv_cache_tokens
        self.waiting: deque[int] = deque()
        self.heap: list[tuple[float, int, float]] = []  # (finish step, request, start step)
        self.kv_used = 0
        self.t0 = 0.0  # decode progress is known up to t0 (later than now while a prefill runs)
        self.steps = 0.0
        self.dt = 0.0
        self.sum_in = 0
        self.sum_start = 0.0
        self.next_event = math.inf

    @property
    def load(self) -> int:
        return len(self.heap) + len(self.waiting)

    @property
    def idle(self) -> bool:
        return not self.heap and not self.waiting

    def submit(self, request: int, now: float) -> bool:
        self.waiting.append(request)
        return self._admit(now)

    def wake(self, now: float) -> None:
        self._advance(now)
        heap, ledger = self.heap, self.ledger
        limit = self.steps + 1e-9
        while heap and heap[0][0] <= limit:
            _, request, start = heapq.heappop(heap)
            self.kv_used -= ledger.in_tokens[request] + ledger.out_tokens[request]
            self.sum_in -= ledger.in_tokens[request]
            self.sum_start -= start
            ledger.on_finish(request, now)
        if not self._admit(now):
            self._reschedule()

    def _advance(self, now: float) -> None:
        if now > self.t0:
            if self.heap:
                self.steps += (now - self.t0) / self.dt
            self.t0 = now

    def _admit(self, now: float) -> bool:
        """Start what fits, prefill it (stalling the batch) and reschedule the next completion."""
        waiting, heap, ledger = self.waiting, self.heap, self.ledger
        if not waiting:
            return False
        req_in, req_out = ledger.in_tokens, ledger.out_tokens
        admitted_tokens, admitted = 0, []
        while waiting and len(heap) + len(admitted) < self.max_batch:
            request = waiting[0]
            need = req_in[request] + req_out[request]
            if now - ledger.arrival[request] > ledger.timeout_s:
                waiting.popleft()
                ledger.on_drop(request)
                continue
            if self.kv_used + need > self.kv_cap and (heap or admitted):
                break  # a request larger than the whole cache still runs alone
            waiting.popleft()
            self.kv_used += need
            admitted_tokens += req_in[request]
            admitted.append(request)
        if not admitted:
            return False
        self._advance(now)
        self.t0 = max(self.t0, now) + self.times.prefill_ms(admitted_tokens) / 1000.0
        steps = self.steps
        for request in admitted:
            ledger.first_token[request] = self.t0
            heapq.heappush(heap, (steps + req_out[request] - 1, request, steps))
            self.sum_in += req_in[request]
            self.sum_start += steps
        self._reschedule()
        return True

    def _reschedule(self) -> None:
        heap = self.heap
        if not heap:
            self.next_event = math.inf
            return
        n = len(heap)
        context = (self.sum_in + n * self.steps - self.sum_start) / n
        self.dt = self.times.decode_step_ms(n, context) / 1000.0
        self.next_event = self.t0 + max(heap[0][0] - self.steps, 0.0) * self.dt


def make_server(
    settings: EngineSettings, times: StepTimes, ledger: Ledger, *, accelerator: str, max_num_seqs: int, steps: Steps
) -> VllmServer | StallServer:
    """A replica's server; a VllmServer counts its steps in `steps` (the stall model's fractional
    steps are not vLLM's: it counts none)."""
    if settings.mode == "stall":
        return StallServer(times, ledger, max_num_seqs=max_num_seqs)
    budget = settings.max_num_batched_tokens or token_budget(accelerator)
    return VllmServer(settings, times, ledger, max_num_seqs=max_num_seqs, budget=budget, steps=steps)
