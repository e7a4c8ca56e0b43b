"""Properties the optimizer must keep on any problem, checked with hypothesis."""

from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.optimizer.domain import SaturationPolicy
from autoscaler.optimizer.sizing import size_candidates
from autoscaler.optimizer.solver import solve, units_per_replica

from .builders import server, service_classes, system

SLO_SLACK = 1e-6  # the rate search stops within a relative 1e-6 of the target

loads = st.floats(min_value=1, max_value=20000)
tokens = st.integers(min_value=1, max_value=2048)


@st.composite
def problems(draw):
    count = draw(st.integers(1, 8))
    servers = [
        server(
            f"s{i}",
            draw(loads),
            cls=draw(st.sampled_from(["gold", "free"])),
            inp=draw(tokens),
            out=draw(tokens),
            min_replicas=draw(st.integers(0, 3)),
        )
        for i in range(count)
    ]
    capacity = {"A": draw(st.integers(0, 200)), "B": draw(st.integers(0, 100))}
    return system(
        servers,
        capacity=capacity,
        policy=draw(st.sampled_from(list(SaturationPolicy))),
        delayed=draw(st.booleans()),
        classes=service_classes(itl=draw(st.floats(5, 200)), ttft=draw(st.floats(50, 5000))),
    )


@settings(max_examples=80, deadline=None)
@given(problems())
def test_capacity_is_never_exceeded(problem):
    solution = solve(problem)
    units = units_per_replica(problem)
    used = defaultdict(int)
    for alloc in solution.allocations.values():
        used[problem.accelerators[alloc.accelerator].type] += alloc.num_replicas * units(alloc.server, alloc.accelerator)
    for acc_type, cards in used.items():
        assert cards <= problem.capacity.get(acc_type, 0)


@settings(max_examples=80, deadline=None)
@given(problems())
def test_allocated_servers_meet_their_slos_under_the_model(problem):
    solution = solve(problem)
    for alloc in solution.allocations.values():
        if alloc.best_effort:
            continue
        srv = next(s for s in problem.servers if s.name == alloc.server)
        target = problem.classes[srv.class_name].targets[srv.model]
        assert alloc.num_replicas >= srv.min_replicas
        assert alloc.itl_ms <= target.itl_ms * (1 + SLO_SLACK)
        assert alloc.ttft_ms <= target.ttft_ms * (1 + SLO_SLACK)


@settings(max_examples=80, deadline=None)
@given(low=loads, extra=st.floats(0, 20000), inp=tokens, out=tokens, itl=st.floats(5, 200), ttft=st.floats(50, 5000))
def test_more_load_never_means_fewer_replicas(low, extra, inp, out, itl, ttft):
    classes = service_classes(itl=itl, ttft=ttft)
    sized = [
        {
            a.accelerator: a.num_replicas
            for a in size_candidates(system([server("s", rpm, inp=inp, out=out)], classes=classes))["s"]
        }
        for rpm in (low, low + extra)
    ]
    assert sized[0].keys() == sized[1].keys()
    for acc, replicas in sized[0].items():
        assert sized[1][acc] >= replicas
