"""The batched chain against closed forms and against a state-by-state reference."""

import json
import math
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.optimizer import reference
from autoscaler.optimizer.domain import DecodePrefillParams, IterationParams
from autoscaler.optimizer.performance import ServiceModel
from autoscaler.optimizer.loader import load_system
from autoscaler.optimizer.queueing import ChainBatch
from autoscaler.optimizer.solver import solve

from .samples import SAMPLES


def mm1k_mean_in_system(rho: float, capacity: int) -> float:
    return rho / (1 - rho) - (capacity + 1) * rho ** (capacity + 1) / (1 - rho ** (capacity + 1))


@pytest.mark.parametrize("rho", [0.05, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("max_batch", [1, 7, 64])
def test_constant_service_rate_is_textbook_mm1k(rho, max_batch):
    mu = 0.02
    chains = ChainBatch(np.full((1, max_batch), mu), np.array([max_batch]))
    stats = chains.solve(np.array([0]), np.array([rho * mu]))
    capacity = 11 * max_batch
    p0 = (1 - rho) / (1 - rho ** (capacity + 1))
    loss = p0 * rho**capacity
    assert stats.num_in_system[0] == pytest.approx(mm1k_mean_in_system(rho, capacity), rel=1e-9)
    assert stats.throughput[0] == pytest.approx(rho * mu * (1 - loss), rel=1e-12)
    # Little's law on the whole system
    assert stats.resp_time[0] * stats.throughput[0] == pytest.approx(stats.num_in_system[0], rel=1e-12)


def test_blocks_of_different_batch_sizes_solve_independently():
    rates = np.array([[0.01, 0.018, 0.025, 0.03], [0.02, 0.02, 0.02, 0.02]])
    together = ChainBatch(rates, np.array([4, 1]))
    alone = ChainBatch(rates[:1], np.array([4]))
    both = together.solve(np.array([0, 1]), np.array([0.02, 0.01]))
    first = alone.solve(np.array([0]), np.array([0.02]))
    assert both.num_in_system[0] == pytest.approx(first.num_in_system[0], rel=1e-13)
    assert both.num_in_system[1] == pytest.approx(mm1k_mean_in_system(0.5, 11), rel=1e-12)


params_2025 = st.builds(
    DecodePrefillParams,
    alpha=st.floats(1, 200),
    beta=st.floats(0.01, 10),
    gamma=st.floats(1, 2000),
    delta=st.floats(1e-4, 0.3),
)
params_2026 = st.builds(IterationParams, alpha=st.floats(1, 200), beta=st.floats(1e-3, 1), gamma=st.floats(1e-5, 0.02))


@settings(max_examples=60, deadline=None)
@given(
    params=st.one_of(params_2025, params_2026),
    inp=st.integers(0, 4096),
    out=st.integers(2, 2048),
    max_batch=st.integers(1, 96),
    load=st.floats(0.01, 0.99),
)
def test_vectorised_model_equals_state_by_state_reference(params, inp, out, max_batch, load):
    model = ServiceModel.from_rows([params], [inp], [out], [max_batch])
    chains = ChainBatch(model.service_rates, model.max_batch)
    lam = load * chains.mu_full[0]
    stats = chains.solve(np.array([0]), np.array([lam]))
    itl, ttft = model.latencies(np.array([0]), stats)
    ref_itl, ref_ttft, ref_x = reference.analyze(params, inp, out, max_batch, lam)
    assert stats.throughput[0] == pytest.approx(ref_x, rel=1e-9)
    assert itl[0] == pytest.approx(ref_itl, rel=1e-8, abs=1e-9)
    assert ttft[0] == pytest.approx(ref_ttft, rel=1e-8, abs=1e-9)
    assert math.isfinite(itl[0]) and math.isfinite(ttft[0])


def test_a_denormal_arrival_rate_gives_the_zero_load_latencies_not_nan(tmp_path):
    """5e-324 req/s underflowed the state probabilities to 0/0: NaN TTFT in a decision."""
    sample = SAMPLES / "849e1e8" / "small"
    for name in ("accelerator", "capacity", "model", "optimizer", "server", "serviceclass"):
        shutil.copy(sample / f"{name}-data.json", tmp_path)
    servers = json.loads((tmp_path / "server-data.json").read_text())
    for server in servers["servers"]:
        server["currentAlloc"]["load"]["arrivalRate"] = 5e-324
    (tmp_path / "server-data.json").write_text(json.dumps(servers))
    allocations = solve(load_system(tmp_path)).allocations
    assert allocations and all(math.isfinite(a.ttft_ms) and math.isfinite(a.itl_ms) for a in allocations.values())
