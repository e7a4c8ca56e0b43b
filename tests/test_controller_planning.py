"""The controller's pure parts: data and capacity from the cluster, ISVCs read, plans made."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest

from autoscaler.controller.catalog import (
    POD_TEMPLATE_HASH,
    available_capacity,
    cluster_data,
    gpu_type_of,
    node_gpu_types,
    pod_binding,
    ready_replicas,
)
from autoscaler.controller.collector import CollectorSettings, bracketing_bounds, observations, queries
from autoscaler.policy.guards import ArrivalHistory, GuardSettings, planned_rate, z_score
from autoscaler.policy.identify import LINE, Identification
from autoscaler.policy.observation import Observation, WindowFigures, observe, within
from autoscaler.controller.manifests import condition, hpa, spec_patch
from autoscaler.policy.planner import Outcome, Plan, PlannerSettings, PlannerState, _beyond_capacity, plan
from autoscaler.policy.sizing import rate_variation
from autoscaler.controller.services import ServiceReader, read_services
from autoscaler.policy.decisions import LastDecision
from autoscaler.errors import InputError
from autoscaler.kserve import ISVC_LABEL, REVISION_LABEL

from .cluster_objects import data_configmap, gpu_pod, isvc, node

DATA = cluster_data(data_configmap(), "test")
CAPACITY = {"L4": 64, "L40S": 64, "A100": 64, "H100": 64, "AIU2": 0, "G2": 0, "MI210": 0, "MI250": 0, "MI300X": 0}


def observed(
    rate: float, previous: float | None = None, waiting: float = 0.0, ttft_s: float = 0.2, itl_s: float = 0.02
) -> Observation:
    completed = rate * 60
    buckets = lambda v: ((v, completed), (float("inf"), completed))  # noqa: E731 - every request in one bucket
    return Observation(
        rate,
        rate if previous is None else previous,
        512,
        256,
        4,
        waiting,
        ttft_s * 1e3,
        itl_s * 1e3,
        buckets(ttft_s),
        buckets(itl_s),
    )


def service(name="chat", model="llama_13b", last: LastDecision | None = None, **extra):
    obj = isvc(name, model, **extra)
    if last is not None:
        obj["metadata"]["uid"] = f"uid-{name}"
    services, rejected = read_services(
        [obj], DATA.catalog, lambda uid: (last.to_json(), "1") if last and uid == f"uid-{name}" else None
    )
    assert not rejected, rejected
    return services[0]


def only(plans):
    assert len(plans) == 1
    return plans[0]


def plan_one(svc, rate: float | None = 5.0, state: PlannerState | None = None, capacity=CAPACITY, now: float = 1000.0, obs=None):
    """The plan of one ISVC: at `rate` req/s (or `obs`), or with no data when rate is None."""
    observed_now = {} if rate is None and obs is None else {("prod", "chat"): obs or observed(rate)}
    return only(plan(DATA.catalog, capacity, [svc], observed_now, now, state or PlannerState()))


def test_gpu_products_map_to_types_by_whole_words():
    types = ["L4", "L40S", "H100", "A100"]
    assert gpu_type_of("NVIDIA-H100-80GB-HBM3", types, {}) == "H100"
    assert gpu_type_of("NVIDIA-L40S", types, {}) == "L40S"
    assert gpu_type_of("NVIDIA-L4", types, {}) == "L4"
    assert gpu_type_of("Tesla-V100-SXM2-16GB", types, {}) is None
    assert gpu_type_of("Tesla-V100-SXM2-16GB", types, {"Tesla-V100-SXM2-16GB": "A100"}) == "A100"


def test_capacity_counts_ready_nodes_minus_other_workloads_and_reservations():
    nodes = [
        node("h1", "NVIDIA-H100-80GB-HBM3", 8),
        node("h2", "NVIDIA-H100-80GB-HBM3", 8),
        node("down", "NVIDIA-H100-80GB-HBM3", 8, ready=False),
    ]
    pods = [gpu_pod("training", "h1", 3), gpu_pod("ours", "h2", 4, labels={"mine": "yes"}), gpu_pod("pending", None, 8)]
    managed = lambda pod: pod["metadata"]["labels"].get("mine") == "yes"  # noqa: E731
    assert available_capacity(nodes, node_gpu_types(nodes, DATA), pods, managed, {"H100": 2}) == {"H100": 8 + 8 - 3 - 2}


def test_ready_replicas_are_each_isvcs_ready_predictor_pods_of_every_revision():
    def pod(name: str, isvc_name: str, ready: bool, namespace: str = "prod", component: str = "predictor", **meta) -> dict:
        labels = {ISVC_LABEL: isvc_name, "component": component, REVISION_LABEL: f"{isvc_name}-predictor-0000{name[-1]}"}
        made = gpu_pod(name, "h1", 1, namespace=namespace, labels=labels)
        made["metadata"].update(meta)
        made["status"]["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
        return made

    pods = [
        pod("chat-1", "chat", True),
        pod("chat-2", "chat", True),  # a superseded revision's, still serving
        pod("chat-3", "chat", False),  # starting
        pod("chat-4", "chat", True, deletionTimestamp="2026-01-01T00:00:00Z"),  # draining
        pod("chat-5", "chat", True, component="transformer"),  # not a replica of the model
        pod("chat-6", "chat", True, namespace="staging"),
        pod("code-1", "code", False),
        gpu_pod("training", "h1", 2),  # no ISVC's
    ]
    assert ready_replicas(pods) == {("prod", "chat"): 2, ("staging", "chat"): 1, ("prod", "code"): 0}


def test_pod_binding_counts_each_isvcs_pods_bound_and_waiting_for_a_node_while_one_revision_runs():
    def pod(name: str, isvc_name: str, node_name: str | None, revision: str = "1", template: str = "a", **extra) -> dict:
        labels = {ISVC_LABEL: isvc_name, "component": "predictor", REVISION_LABEL: f"{isvc_name}-predictor-0000{revision}"}
        made = gpu_pod(name, node_name, 1, namespace="prod", labels={**labels, POD_TEMPLATE_HASH: template})
        made["spec"].update(extra.pop("spec", {}))
        made["metadata"].update(extra)
        return made

    pods = [
        pod("chat-1", "chat", "h1"),
        pod("chat-2", "chat", "h1"),
        pod("chat-3", "chat", None),  # asked for, waiting for a GPU
        pod("chat-4", "chat", "h1", deletionTimestamp="2026-01-01T00:00:00Z"),  # draining: no longer the ReplicaSet's
        pod("code-1", "code", "h1"),
        pod("code-2", "code", None, revision="2"),  # a new revision in flight
        pod("std-1", "std", "h1", revision=""),
        pod("std-2", "std", None, revision="", template="b"),  # a Standard-mode roll-out: a second ReplicaSet
        pod("gang-1", "gang", None, spec={"schedulingGates": [{"name": "gated"}]}),  # held by the gang admission
        gpu_pod("training", None, 2),  # no ISVC's
    ]
    assert pod_binding(pods) == {("prod", "chat"): (2, 1)}


def test_the_pods_the_hpa_keeps_beyond_the_plan_that_wait_for_a_gpu_are_let_go_at_once():
    """A pod asked for when the GPUs were full and no longer planned serves nothing and would
    take the next GPU that frees: the plan's scale-down window is none, so the HPA lets it go at
    its next sync (the ReplicaSet deletes the pods bound to no node first). Not where the HPA
    also keeps bound pods beyond the plan (a window of none would let those go too), nor where
    the waiting pods are what the plan asks."""
    chat = service()
    steady = plan_one(chat)
    replicas = steady.decision.replicas
    assert steady.scale_down_s is None

    def window(bound: int, unbound: int) -> int | None:
        pods = dataclasses.replace(observed(5.0), bound_pods=bound, unbound_pods=unbound)
        return plan_one(chat, obs=pods).scale_down_s

    assert window(replicas, 1) == 0 and window(replicas - 1, 2) == 0
    assert "wait for a GPU" in plan_one(chat, obs=dataclasses.replace(observed(5.0), bound_pods=replicas, unbound_pods=1)).reason
    assert window(replicas + 1, 1) is None  # a bound pod beyond the plan: the window holds it
    assert window(replicas - 1, 1) is None  # the waiting pod is the plan's
    assert window(replicas, 0) is None


def test_bad_data_configmap_names_key_and_field():
    broken = data_configmap()
    broken["data"]["model-data.json"] = '{"models": [{"name": "x"'
    with pytest.raises(InputError, match="model-data.json.*malformed JSON"):
        cluster_data(broken, "ConfigMap ns/data")
    del broken["data"]["model-data.json"]
    with pytest.raises(InputError, match="model-data.json.*missing"):
        cluster_data(broken, "ConfigMap ns/data")


def test_isvcs_with_unknown_models_or_bad_annotations_are_rejected_with_the_reason():
    good = isvc("chat", "llama_13b")
    unknown = isvc("mystery", "gpt-17")
    bad = isvc("broken", "llama_13b", min_replicas="five")
    other = {"metadata": {"name": "plain", "namespace": "prod"}}
    services, rejected = read_services([good, unknown, bad, other], DATA.catalog)
    assert [s.name for s in services] == ["chat"]
    assert {r.name: r.problem for r in rejected}.keys() == {"mystery", "broken"}
    assert "unknown model 'gpt-17'" in rejected[0].problem and "min-replicas" in rejected[1].problem


def test_more_load_means_more_replicas():
    low = plan_one(service(), 1.0)
    high = plan_one(service(), 20.0)
    assert high.decision.replicas > low.decision.replicas >= 1
    assert not low.stale and low.decision.arrival_rate == 1.0


def test_missing_data_keeps_the_last_decision_marked_stale_never_scaling_down():
    last = LastDecision("H100", 7, 64, 300.0, 30.0, 12.0, 525.0, decided_at=900.0, avg_in_tokens=512, avg_out_tokens=256)
    result = plan_one(service(last=last), None)
    assert result.stale and result.decision == last


def test_a_new_isvc_without_data_gets_its_minimum():
    result = plan_one(service(min_replicas="2"), None)
    assert not result.stale and result.decision.replicas == 2


def test_gpu_type_is_pinned_unless_spec_changes_are_allowed():
    last = LastDecision("L40S", 3, 16, 300.0, 30.0, 5.0, 96.0, decided_at=0.0, spec_changed_at=0.0)
    pinned = plan_one(service(last=last))
    free = plan_one(service(last=last, spec_changes="true"))
    assert pinned.decision.accelerator == "L40S" and pinned.decision.max_batch == 16 and not pinned.roll_out
    assert free.roll_out and (free.decision.accelerator, free.decision.max_batch) != ("L40S", 16)
    assert free.decision.spec_changed_at == 1000.0


def test_spec_changes_wait_for_the_interval():
    last = LastDecision("L40S", 3, 16, 300.0, 30.0, 5.0, 96.0, decided_at=0.0, spec_changed_at=900.0)
    result = plan_one(service(last=last, spec_changes="true"))
    assert not result.roll_out and result.decision.accelerator == "L40S" and result.decision.max_batch == 16


def test_capacity_too_small_keeps_what_runs():
    last = LastDecision("H100", 2, 64, 300.0, 30.0, 2.0, 150.0, decided_at=0.0)
    tiny = {name: 0 for name in CAPACITY}
    result = plan_one(service(last=last), 50.0, capacity=tiny)
    assert result.decision.replicas == 2 and result.decision.accelerator == "H100" and "capacity" in result.reason


def test_the_latency_models_counts_are_placed_within_the_capacity_moving_the_least_valued_isvc():
    """The optimizer places by its own queueing model: chat and a Free-class batch ISVC at 6 req/s
    each fit 10 A100s as 5 + 4, but the latency model asks 7 + 5, and two replicas would wait for
    A100s that never free up while H100s have room. The optimizer places again with the A100s'
    room short by that excess: the Free ISVC moves to H100s, chat keeps its 7 A100s. Where no
    other type has room, moving would leave the batch ISVC unplaced: the placement stands (its
    pods wait, as a plan over capacity always made them, and its reasons say so)."""

    def placed(capacity: dict[str, int]) -> list[Plan]:
        services = [service("chat"), service("batch", service_class="Free")]
        observed_now = {("prod", "chat"): observed(6.0), ("prod", "batch"): observed(6.0)}
        return plan(DATA.catalog, capacity, services, observed_now, 1000.0, PlannerState())

    def decided(plans: list[Plan]) -> dict[str, tuple[str, int]]:
        return {p.service.name: (p.decision.accelerator, p.decision.replicas) for p in plans}

    moved = placed(dict(CAPACITY, A100=10))
    assert decided(moved)["chat"] == ("A100", 7) and decided(moved)["batch"][0] == "H100"
    assert not any("wait for one" in p.reason for p in moved)
    stood = placed({**{name: 0 for name in CAPACITY}, "A100": 10})
    assert decided(stood) == {"chat": ("A100", 7), "batch": ("A100", 5)}
    assert all("the plans ask 12 A100 GPUs of the 10 offered: replicas will wait for one" in p.reason for p in stood)
    assert all(condition(p)["status"] == "False" and condition(p)["reason"] == "Constrained" for p in stood)


def test_a_plan_on_an_accelerator_of_several_gpus_is_noted_by_its_gpu_type_beyond_the_capacity():
    """The note on plans beyond the capacity counts GPU types, not accelerator names: 6 replicas
    of a 2xA100 accelerator hold 12 A100s, more than the 10 offered."""
    decided = plan_one(service()).decision
    doubled = Plan(service(), dataclasses.replace(decided, accelerator="2xA100", replicas=6))
    [noted] = _beyond_capacity(DATA.catalog, dict(CAPACITY, A100=10), [doubled])
    assert "the plans ask 12 A100 GPUs of the 10 offered: replicas will wait for one" in noted.reason
    [fits] = _beyond_capacity(DATA.catalog, dict(CAPACITY, A100=12), [doubled])
    assert fits.reason == ""


def test_missed_slo_lowers_the_capacity_bias_which_is_persisted():
    state = PlannerState()
    served = plan_one(service(), obs=observed(5.0), now=0.0).decision  # what has run since
    slow = observed(5.0, ttft_s=5.0)  # every request of the window missed Premium's 1 s TTFT
    slow = dataclasses.replace(slow, ttft_buckets=((1.0, 0.0), *slow.ttft_buckets))  # vLLM has a 1 s bound
    plan_one(service(last=served), obs=slow, state=state, now=940.0)  # a window's fleet is seen first
    first = plan_one(service(last=served), obs=slow, state=state)
    assert first.decision.ttft_scale < 1.0 and first.decision.replicas >= served.replicas
    resumed = PlannerState()  # a restarted controller: the bias from the annotation
    plan_one(service(last=first.decision), obs=slow, state=resumed, now=1000.0)
    restarted = plan_one(service(last=first.decision), obs=slow, state=resumed, now=1060.0)
    assert restarted.decision.ttft_scale < first.decision.ttft_scale  # resumed from the annotation, lowered again


def test_the_rate_variation_is_stored_with_the_decision_and_read_afresh_after_a_restart():
    clumped = dataclasses.replace(observed(5.0), arrival_dispersion=30.0, dispersion_pairs=10, dispersion_s=5.0)
    first = plan_one(service(), obs=clumped, now=0.0).decision
    assert first.replica_capacity > 0 and rate_variation(clumped) > 0.0
    assert first.rate_variation == pytest.approx(rate_variation(clumped))
    assert service(last=first).last.rate_variation == first.rate_variation  # through the stored decision
    # a restarted controller sizes with what its first window's arrivals show (Poisson here), not the stored one
    restarted = plan_one(service(last=first), obs=observed(5.0), state=PlannerState(), now=30.0).decision
    assert restarted.replica_capacity > 0 and restarted.rate_variation == 0.0


def test_observations_from_query_results():
    settings = CollectorSettings(window_s=60)
    key = {"namespace": "prod", "isvc": "chat"}
    v = lambda x: [{"metric": key, "value": [0, str(x)]}]  # noqa: E731
    results = {
        "completed": v(600),
        "completed_before": v(300),
        "growth": v(60),
        "growth_before": v(0),
        "running": v(10),
        "waiting": v(70),
        "prompt_tokens": v(600 * 100),
        "prompt_len": v(100),
        "output_len": v(50),
        "ttft_sum": v(0.25 * 600),
        "itl_sum": v("NaN"),
        "ttft_buckets": [
            {"metric": key | {"le": le}, "value": [0, c]} for le, c in (("0.5", "500"), ("1", "590"), ("+Inf", "600"))
        ],
        # vLLM's info gauge: two replicas, the smaller cache is the bound; another ISVC's labels unusable
        "kv_cache": [
            {"metric": key | {"num_gpu_blocks": "2000", "block_size": "16"}, "value": [0, "1"]},
            {"metric": key | {"num_gpu_blocks": "1900", "block_size": "16"}, "value": [0, "1"]},
            {"metric": {"namespace": "prod", "isvc": "other", "num_gpu_blocks": "None", "block_size": "16"}, "value": [0, "1"]},
        ],
    }
    obs = observations(results, settings)[("prod", "chat")]
    assert obs.kv_cache_tokens == 1900 * 16
    assert obs.arrival_rate == pytest.approx(11.0) and obs.previous_rate == pytest.approx(5.0)
    assert (obs.avg_in_tokens, obs.avg_out_tokens, obs.waiting, obs.ttft_ms, obs.itl_ms) == (100, 50, 70, 250.0, None)
    assert within(obs.ttft_buckets, 0.8) == pytest.approx((554, 600))  # interpolated inside (0.5 s, 1 s]
    assert within(obs.ttft_buckets, 5.0) == (590, 600)  # beyond the last finite bound: only what is known
    assert obs.recent_rate is None  # the short window not answered: the planner plans from the window alone
    assert len(queries(settings)) == 18  # one per figure, whatever the number of ISVCs
    assert "increase(vllm:request_success_total[30s])" in queries(settings)["completed_recent"]
    assert len(queries(CollectorSettings(window_s=60, recent_s=None))) == 16
    assert len(queries(CollectorSettings(window_s=60, dispersion_s=None))) == 17
    assert obs.arrival_dispersion is None and obs.dispersion_pairs == 0  # not answered: Poisson

    # the arrivals' Allan factor over the window's 5 s intervals: 12 intervals, 11 pairs, the largest left out
    bursty = observations(results | {"dispersion": v(4.5)}, settings)[("prod", "chat")]
    assert (bursty.arrival_dispersion, bursty.dispersion_pairs, bursty.dispersion_s) == (4.5, 10, 5.0)
    # at a 15 s scrape: 4 intervals, 3 pairs, the largest left out
    coarse = observations(results | {"dispersion": v(4.5)}, dataclasses.replace(settings, dispersion_s=15))[("prod", "chat")]
    assert (coarse.dispersion_pairs, coarse.dispersion_s) == (2, 15.0)
    # no arrivals in it (0 / 0): unknown, and the ISVC's other figures still stand
    empty = observations(results | {"dispersion": v("NaN")}, settings)[("prod", "chat")]
    assert empty.arrival_dispersion is None and empty.arrival_rate == obs.arrival_rate

    # the last 30 s of the window: 450 completed, the queue grew by 30
    recent = observations(results | {"completed_recent": v(450), "growth_recent": v(30)}, settings)[("prod", "chat")]
    assert (recent.recent_rate, recent.recent_s) == (pytest.approx(16.0), 30.0)
    assert recent.arrival_rate == obs.arrival_rate
    # its growth unusable: no short window, and the ISVC's other figures still stand
    broken = observations(results | {"completed_recent": v(450), "growth_recent": v("NaN")}, settings)[("prod", "chat")]
    assert broken.recent_rate is None and broken.arrival_rate == obs.arrival_rate


def test_only_buckets_around_the_slos_are_asked_for():
    bounds = ["0.001", "0.01", "0.04", "0.1", "0.25", "1.0", "2.5", "+Inf"]
    assert bracketing_bounds(bounds, {0.08, 2.5}) == "0\\.04|0\\.1|1\\.0|2\\.5|\\+Inf"
    assert bracketing_bounds(bounds, {0.0005}) == "0\\.001|\\+Inf"  # below every bound: the first (from 0)
    assert r'le=~"1|\\+Inf"' in queries(CollectorSettings(), {"ttft": r"1|\+Inf"})["ttft_buckets"]  # PromQL string escapes


def test_hpa_publishes_on_desired_replicas_with_zero_tolerance():
    owner = isvc("chat", "llama_13b") | {"metadata": {"name": "chat", "uid": "u1"}}
    made = hpa("chat-optimizer", "prod", {"kind": "Deployment", "name": "chat-predictor"}, {"isvc": "chat"}, (1, 8), owner, True)
    metric = made["spec"]["metrics"][0]["external"]
    assert metric["metric"]["name"] == "desired_replicas" and metric["target"] == {"type": "AverageValue", "averageValue": "1"}
    assert made["spec"]["behavior"]["scaleUp"]["tolerance"] == "0"
    assert made["metadata"]["ownerReferences"][0]["uid"] == "u1"


def test_roll_out_patch_sets_gpu_affinity_resources_and_max_num_seqs():
    last = LastDecision("L40S", 3, 16, 300.0, 30.0, 5.0, 96.0, decided_at=0.0)
    obj = isvc("chat", "llama_13b")
    obj["spec"]["predictor"]["model"]["args"] += ["--max-num-seqs=16"]
    result = plan_one(service(last=last, spec_changes="true"))
    patch = spec_patch(obj, result, {"NVIDIA-H100-80GB-HBM3"}, 2)
    predictor = patch["spec"]["predictor"]
    assert predictor["model"]["args"] == ["--model_name", "llama_13b", f"--max-num-seqs={result.decision.max_batch}"]
    assert predictor["model"]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    expression = predictor["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert expression["matchExpressions"] == [
        {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H100-80GB-HBM3"]}
    ]


def test_service_reader_reads_an_isvc_again_only_when_it_changed():
    reader = ServiceReader(lambda uid: None)
    obj = isvc("chat", "llama_13b")
    obj["metadata"]["resourceVersion"] = "1"
    [first], _ = reader.read([obj], DATA.catalog)
    [again], _ = reader.read([obj], DATA.catalog)
    assert again is first
    obj = isvc("chat", "llama_13b", max_replicas="3")
    obj["metadata"]["resourceVersion"] = "2"
    [changed], _ = reader.read([obj], DATA.catalog)
    assert changed.max_replicas == 3 and reader.read([], DATA.catalog) == ([], [])


def test_a_rise_is_planned_for_the_windows_lag_at_the_pace_measured_between_windows():
    guards = GuardSettings()
    z = z_score(0.95)

    def planned(window_s: float, previous: float = 8.0, backlog: float = 0.0, startup_s: float = 90.0) -> float:
        return planned_rate(
            10.0, previous, window_s=window_s, period_s=30.0, startup_s=startup_s, backlog=backlog, in_system=0.0,
            history=ArrivalHistory(), now=1000.0, goal=0.95, settings=guards,
        )  # fmt: skip

    def quantile(rate: float, horizon_s: float = 120.0) -> float:  # the first cycle knows no burstiness: Poisson over the horizon
        return rate + z * (rate / horizon_s) ** 0.5

    # +2 req/s per minute: the window's mean lags the rate by half a window (30 s); the same rise
    # between windows half as long: twice as steep, over a lag half as long
    assert planned(60.0) == pytest.approx(quantile(10.0 + 2.0 * 30 / 60))
    assert planned(30.0) == pytest.approx(quantile(10.0 + 2.0 * 15 / 30))
    assert planned(60.0, previous=9.8) == pytest.approx(quantile(10.0))  # within a Poisson deviation over a minute: noise
    # a queue is worked off in a minute, or within the startup where that is longer: what is asked
    # for it serves only then
    assert planned(60.0, previous=10.0, backlog=120.0, startup_s=30.0) == pytest.approx(quantile(10.0, 60.0) + 120.0 / 60)
    assert planned(60.0, previous=10.0, backlog=120.0) == pytest.approx(quantile(10.0) + 120.0 / 90)


def test_no_data_for_the_window_before_is_no_rise_from_zero():
    buckets = ((1.0, 60.0), (float("inf"), 60.0))
    figures = dict(
        window_s=60.0, completed=60.0, growth=0.0, growth_before=0.0, running=2.0, waiting=0.0, prompt_tokens=6000.0,
        prompt_len=100.0, output_len=50.0, ttft_sum=12.0, itl_sum=None, itl_count=None, ttft_buckets=buckets, tpot_buckets=(),
    )  # fmt: skip
    fresh = observe(WindowFigures(completed_before=None, **figures))
    assert fresh.previous_rate == fresh.arrival_rate == 1.0 and fresh.ttft_ms == pytest.approx(200.0) and fresh.itl_ms is None
    assert not fresh.previous_measured and fresh.problem() is None
    later = observe(WindowFigures(completed_before=30.0, **figures))
    assert later.previous_rate == 0.5 and later.previous_measured


def test_an_isvc_without_the_per_request_tpot_histogram_is_said_once(caplog):
    """vLLM < 0.11 exports no request_time_per_output_token_seconds: the ITL SLO's share is not
    measured, and the operator is told once per ISVC, not every cycle, and again if it comes
    back and goes again, or if the ISVC leaves the observations (deleted: forgotten) and
    returns."""
    from autoscaler.controller.collector import PrometheusCollector

    collector = PrometheusCollector("http://127.0.0.1:9")  # never asked here
    old, new = dataclasses.replace(observed(5.0), tpot_buckets=()), observed(5.0)
    with caplog.at_level(logging.WARNING):
        for obs in (old, old, new, old):
            collector._say_without_tpot({("prod", "chat"): obs, ("prod", "code"): new})
        collector._say_without_tpot({("prod", "code"): new})
        assert collector._without_tpot == set()  # the ISVC that left is forgotten
        collector._say_without_tpot({("prod", "chat"): old, ("prod", "code"): new})
    said = [r.getMessage() for r in caplog.records if "request_time_per_output_token_seconds" in r.getMessage()]
    assert len(said) == 3 and all(line.startswith("prod/chat: ") for line in said)


def test_bucket_bounds_are_asked_for_again_next_cycle_only_while_no_histogram_has_series():
    """vLLM registers its histograms at start-up: no series at all is nothing scraped yet (asked
    again next cycle); TTFT's without the per-request TPOT's is a vLLM < 0.11 (asked again at
    relearn_s, not every cycle, its buckets queried in full meanwhile)."""
    from autoscaler.controller.collector import PrometheusCollector

    collector = PrometheusCollector("http://127.0.0.1:9")  # never asked: _ask is replaced
    asked: list[list[str]] = []
    answers = {"ttft": [], "tpot": []}

    async def ask(named):
        asked.append(sorted(named))
        return {name: answers[name] for name in named}

    collector._ask = ask
    slos = {"ttft": {0.5}, "tpot": {0.05}}
    asyncio.run(collector._learn_bounds(slos))
    asyncio.run(collector._learn_bounds(slos))
    assert len(asked) == 2  # nothing scraped yet
    answers["ttft"] = [{"metric": {"le": le}, "value": [0, "1"]} for le in ("0.25", "0.5", "1", "+Inf")]
    asyncio.run(collector._learn_bounds(slos))
    asyncio.run(collector._learn_bounds(slos))
    assert len(asked) == 3  # TTFT's series without TPOT's: not asked again this side of relearn_s
    assert "le=~" in collector.queries["ttft_buckets"] and "le=~" not in collector.queries["tpot_buckets"]


def test_a_first_window_rising_is_planned_at_its_short_windows_pace():
    """A new ISVC's first window has nothing before it: a load rising through it is read from
    its last 30 s against its first 30 s (as rate_now reads that pair), where beyond Poisson
    noise; a flat one, or one whose window before was measured, as before."""
    guards, z = GuardSettings(), z_score(0.95)

    def planned(recent: float, previous_measured: bool = False) -> float:
        return planned_rate(
            17.0, 17.0, window_s=60.0, period_s=30.0, startup_s=60.0, backlog=0.0, in_system=0.0,
            history=ArrivalHistory(), now=60.0, goal=0.95, settings=guards, recent_rate=recent, recent_s=30.0,
            previous_measured=previous_measured,
        )  # fmt: skip

    def quantile(rate: float) -> float:  # Poisson over the 90 s horizon
        return rate + z * (rate / 90) ** 0.5

    # the Azure conversation trace's first minute for chat-8b: 13.85 then 20.15 req/s
    assert planned(20.15) == pytest.approx(quantile(20.15 + (20.15 - 13.85) * 30 / 60))
    assert planned(17.5) == pytest.approx(quantile(17.0))  # 0.5 req/s apart over 30 s: noise
    assert planned(20.15, previous_measured=True) == pytest.approx(quantile(17.0))  # the windows' pair: flat


def test_a_deleted_or_recreated_isvcs_state_is_forgotten_and_the_others_kept():
    state = PlannerState()
    chat, code = service("chat"), service("code", model="granite_13b")
    obs = {("prod", "chat"): observed(5.0), ("prod", "code"): observed(3.0)}
    plan(DATA.catalog, CAPACITY, [chat, code], obs, 1000.0, state)
    assert set(state.arrivals) == {("prod", "chat"), ("prod", "code")}
    assert set(state.learned.rate_cv2) == {"prod/chat", "prod/code"}
    plan(DATA.catalog, CAPACITY, [chat], obs, 1030.0, state)  # code deleted
    assert set(state.arrivals) == {("prod", "chat")} and set(state.learned.rate_cv2) == {"prod/chat"}
    assert len(state.arrivals[("prod", "chat")].samples) == 2
    again = dataclasses.replace(chat, uid="another")  # chat deleted and created again under its name
    plan(DATA.catalog, CAPACITY, [again], obs, 1060.0, state)
    assert len(state.arrivals[("prod", "chat")].samples) == 1 and len(state.learned.rate_cv2["prod/chat"]) == 1


def test_the_plan_sizes_with_the_mean_request_shape_of_the_isvcs_last_windows():
    """A window's mean of heavy-tailed prompts moves with its sample alone (sizing.sized_shape):
    the decision is sized at, and carries, the mean over the last windows' requests, each window
    weighed by its requests."""
    state, chat = PlannerState(), service("chat")
    for now, prompt, rate in ((1000.0, 512.0, 5.0), (1030.0, 1024.0, 5.0), (1060.0, 2048.0, 10.0)):
        obs = dataclasses.replace(observed(rate), avg_in_tokens=prompt)
        plans = plan(DATA.catalog, CAPACITY, [chat], {("prod", "chat"): obs}, now, state)
    decision = only(plans).decision
    assert decision.avg_in_tokens == round((5 * 512 + 5 * 1024 + 10 * 2048) / 20)  # 1,408, not the window's 2,048
    assert decision.avg_out_tokens == 256


def test_a_fleet_behind_a_load_aware_router_is_sized_one_replica_fewer_only_while_it_meets_its_goal():
    """Behind a router that balances by load a fleet pools its queues (latency.Shape.pool): 6
    req/s of chat on A100s asks for 7 replicas at one replica's capacity, and 6 where the router
    balances by load, the six's pooled capacity covering the rate planned. Not while the ISVC's
    requests miss their SLOs (every first token 30 s late): a fleet that misses shows no headroom
    for its pool to take up. Nor for a model whose step costs were identified online (no
    profile: their error is more than a pool adds). The default router is blind to load."""

    def sized(settings: PlannerSettings, ttft_s: float = 0.2, identified: bool = False) -> tuple[int, str]:
        state = PlannerState()
        if identified:  # as if the catalog had no profile of it: read off the line online
            costs = DATA.catalog.profiles[("llama_13b", "A100")].params
            state.learned.identified[("llama_13b", "A100")] = Identification(costs, reading=LINE)
        observed_now = {("prod", "chat"): observed(6.0, ttft_s=ttft_s)}
        decision = plan(DATA.catalog, CAPACITY, [service()], observed_now, 1000.0, state, settings)[0].decision
        return decision.replicas, decision.accelerator

    pooled = PlannerSettings(load_aware_router=True)
    assert sized(PlannerSettings()) == (7, "A100")
    assert sized(pooled) == (6, "A100")
    assert sized(pooled, ttft_s=30.0) == sized(PlannerSettings(), ttft_s=30.0) == (7, "A100")
    assert sized(pooled, identified=True) == (7, "A100")


@pytest.mark.parametrize(
    "outcome, status",
    [
        (Outcome.DECIDED, "True"),
        (Outcome.SCALED_TO_ZERO, "True"),
        (Outcome.BEST_EFFORT, "False"),
        (Outcome.CONSTRAINED, "False"),
        (Outcome.NO_PLACEMENT, "False"),
        (Outcome.STALE, "Unknown"),
    ],
)
def test_the_isvcs_condition_names_the_plans_outcome_and_is_false_only_where_gpus_fall_short(outcome, status):
    """AutoscalerDecision: the outcome is the reason and sets the status an operator reads; the
    plan's notes go in the message. A decision kept where a move does not pay, or with pods
    waiting for a GPU let go, is as decided (True); a plan with no decision says only why."""
    decided = plan_one(service()).decision
    with_decision = condition(Plan(service(), decided, reason="a note", outcome=outcome))
    assert (with_decision["status"], with_decision["reason"]) == (status, outcome.value)
    assert with_decision["message"].startswith(f"{decided.replicas} x {decided.accelerator}")
    assert with_decision["message"].endswith("(a note)")
    without = condition(Plan(service(), None, reason="nothing to decide yet", outcome=outcome))
    assert (without["status"], without["reason"], without["message"]) == (status, outcome.value, "nothing to decide yet")


def test_each_way_the_planner_ends_names_its_outcome():
    """The planner sets each plan's outcome where it decides: a fresh decision, one over the
    capacity, one with no load data, an ISVC that cannot be placed at all."""
    assert plan_one(service()).outcome is Outcome.DECIDED
    stale = plan(DATA.catalog, CAPACITY, [service(last=plan_one(service()).decision)], {}, 1000.0, PlannerState())
    assert [(p.stale, p.outcome) for p in stale] == [(True, Outcome.STALE)]
    no_gpus = {name: 0 for name in CAPACITY}
    nowhere = plan(DATA.catalog, no_gpus, [service()], {("prod", "chat"): observed(6.0)}, 1000.0, PlannerState())
    assert [(p.decision, p.outcome) for p in nowhere] == [(None, Outcome.NO_PLACEMENT)]
