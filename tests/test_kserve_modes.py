"""Issue 13, point 2: KServe >= 0.16's deployment modes (Standard / Knative; the old RawDeployment /
Serverless read as them; `status.deploymentMode` authoritative) and the Deployment a Standard
ISVC's HPA must target, read as KServe reads them. What the controller makes of them on a real API
server: tests/e2e/test_kserve_modes.py, test_kserve_contract.py and test_kserve_standard.py.
"""

from __future__ import annotations

from autoscaler.kserve import DEPLOYMENT_MODE, deployment_mode, predictor_deployment


def test_modes_and_names_read_as_kserve_reads_them():
    assert deployment_mode({}) == "Knative" and deployment_mode({}, default="RawDeployment") == "Standard"
    assert deployment_mode({"metadata": {"annotations": {DEPLOYMENT_MODE: "Serverless"}}}) == "Knative"
    assert deployment_mode({"status": {"deploymentMode": "ModelMesh"}}) == "ModelMesh"
    assert predictor_deployment({"metadata": {"name": "a"}, "spec": {"predictor": {}}}) == "a-predictor"
