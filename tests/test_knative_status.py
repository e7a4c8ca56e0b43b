"""The PodAutoscaler status we write, against Knative's KPA rule (pkg/reconciler/autoscaling/kpa:
computeActiveCondition and activeThreshold). Pure: no API server is needed to compute a status;
tests/e2e/test_knative_class.py and test_knative_serving.py show the real Knative reading it."""

from autoscaler.controller import knative
from autoscaler.kserve import INITIAL_SCALE, MIN_SCALE

READY_SKS = {
    "status": {"conditions": [{"type": "Ready", "status": "True"}], "serviceName": "r", "privateServiceName": "r-private"}
}


def pa(min_scale: int | None = None, initial_scale: int | None = None, initialized: bool = False) -> dict:
    annotations = {}
    if min_scale is not None:
        annotations[MIN_SCALE] = str(min_scale)
    if initial_scale is not None:
        annotations[INITIAL_SCALE] = str(initial_scale)
    conditions = [{"type": knative.SCALE_TARGET_INITIALIZED, "status": "True"}] if initialized else []
    return {"metadata": {"annotations": annotations, "generation": 1}, "spec": {}, "status": {"conditions": conditions}}


def condition(status: dict, kind: str) -> str:
    return next(c["status"] for c in status["conditions"] if c["type"] == kind)


def test_active_only_once_min_scale_pods_are_ready_after_initialization():
    # one ready pod of a revision held at min-scale 3: activating, not Active, so not Ready
    status = knative.pa_status(pa(min_scale=3, initialized=True), desired=3, ready_pods=1, sks=READY_SKS)
    assert (condition(status, "Active"), condition(status, "Ready")) == ("Unknown", "Unknown")
    status = knative.pa_status(pa(min_scale=3, initialized=True), desired=3, ready_pods=3, sks=READY_SKS)
    assert (condition(status, "Active"), condition(status, "Ready")) == ("True", "True")


def test_before_initialization_the_initial_scale_is_the_threshold():
    status = knative.pa_status(pa(initial_scale=3), desired=3, ready_pods=2, sks=READY_SKS)
    assert condition(status, "Active") == "Unknown"
    assert condition(status, knative.SCALE_TARGET_INITIALIZED) == "Unknown"
    status = knative.pa_status(pa(initial_scale=3), desired=3, ready_pods=3, sks=READY_SKS)
    assert condition(status, "Active") == condition(status, knative.SCALE_TARGET_INITIALIZED) == "True"
    # once initialized, one pod is enough again (min-scale 0: Knative's max(min, 1))
    status = knative.pa_status(pa(initial_scale=3, initialized=True), desired=1, ready_pods=1, sks=READY_SKS)
    assert condition(status, "Active") == "True"


def test_unreachable_revision_ignores_min_scale_and_no_demand_is_inactive():
    unreachable = pa(min_scale=3, initialized=True)
    unreachable["spec"]["reachability"] = "Unreachable"
    assert condition(knative.pa_status(unreachable, desired=1, ready_pods=1, sks=READY_SKS), "Active") == "True"
    assert condition(knative.pa_status(pa(initialized=True), desired=0, ready_pods=2, sks=READY_SKS), "Active") == "False"
