"""Issue 13, point 2: KServe >= 0.16's deployment modes (Standard / Knative; the old RawDeployment /
Serverless read as them; `status.deploymentMode` authoritative) and the Deployment a Standard
ISVC's HPA must target (`{isvc}-predictor`, or `{isvc}-{name}-predictor` for a named predictor).
"""

from __future__ import annotations

import pytest

from autoscaler.kserve import DEPLOYMENT_MODE, KSERVE_AUTOSCALER_CLASS, deployment_mode, predictor_deployment

from .cluster_objects import HPAS, ISVCS, isvc
from .test_controller import Cluster, StandInCollector, stop
from .test_controller_planning import observed


def standard(annotated: str | None = "Standard", recorded: str | None = None, predictor_name: str | None = None) -> dict:
    obj = isvc("chat", "llama_13b", raw=False)
    annotations = obj["metadata"]["annotations"]
    annotations[KSERVE_AUTOSCALER_CLASS] = "external"
    if annotated:
        annotations[DEPLOYMENT_MODE] = annotated
    if recorded:
        obj["status"] = {"deploymentMode": recorded}
    if predictor_name:
        obj["spec"]["predictor"]["name"] = predictor_name
    return obj


@pytest.mark.parametrize(
    "obj, target",
    [
        (standard("Standard"), "chat-predictor"),
        (standard("RawDeployment"), "chat-predictor"),
        (standard(None, recorded="Standard"), "chat-predictor"),  # KServe recorded it; the annotation is optional
        (standard("Serverless", recorded="Standard"), "chat-predictor"),  # the status wins
        (standard("Standard", predictor_name="main"), "chat-main-predictor"),
    ],
)
async def test_a_standard_isvc_gets_an_hpa_on_its_predictor_deployment(obj, target):
    async with Cluster() as cluster:
        cluster.store.put(ISVCS, obj)
        controller = await cluster.controller(StandInCollector({("prod", "chat"): observed(8.0)}))
        try:
            report = await controller.cycle()
            assert not report.rejected and not report.failures, report.as_dict()
            hpa = cluster.store.get(HPAS, "prod", "chat-optimizer")
            assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": target}
        finally:
            await stop(controller)


async def test_knative_by_status_gets_no_hpa_and_kserve_s_own_hpa_is_refused_with_the_reason():
    async with Cluster() as cluster:
        cluster.store.put(ISVCS, standard("RawDeployment", recorded="Knative"))
        own_hpa = standard("Standard")
        own_hpa["metadata"]["name"] = "other"
        del own_hpa["metadata"]["annotations"][KSERVE_AUTOSCALER_CLASS]
        cluster.store.put(ISVCS, own_hpa)
        controller = await cluster.controller(
            StandInCollector({("prod", "chat"): observed(8.0), ("prod", "other"): observed(8.0)})
        )
        try:
            report = await controller.cycle()
            assert report.services == 1 and cluster.store.items(HPAS) == []
            [rejected] = report.rejected
            assert rejected.startswith("prod/other: Standard mode with KServe's own HPA")
        finally:
            await stop(controller)


def test_modes_and_names_read_as_kserve_reads_them():
    assert deployment_mode({}) == "Knative" and deployment_mode({}, default="RawDeployment") == "Standard"
    assert deployment_mode({"metadata": {"annotations": {DEPLOYMENT_MODE: "Serverless"}}}) == "Knative"
    assert deployment_mode({"status": {"deploymentMode": "ModelMesh"}}) == "ModelMesh"
    assert predictor_deployment({"metadata": {"name": "a"}, "spec": {"predictor": {}}}) == "a-predictor"
