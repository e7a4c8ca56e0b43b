"""The adapter's manifests hang together: names, ports, RBAC an extension API server needs."""

from pathlib import Path

import yaml

CONFIG = Path(__file__).resolve().parents[1] / "config" / "metrics-adapter"


def documents():
    kustomization = yaml.safe_load((CONFIG / "kustomization.yaml").read_text())
    found = []
    for resource in kustomization["resources"]:
        found += [d for d in yaml.safe_load_all((CONFIG / resource).read_text()) if d]
    return found


def one(kind, name):
    return next(d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name)


def test_apiservice_points_at_the_adapter_service_over_verified_tls():
    api = one("APIService", "v1beta1.external.metrics.k8s.io")
    assert api["spec"]["group"] == "external.metrics.k8s.io" and api["spec"]["version"] == "v1beta1"
    assert api["spec"]["insecureSkipTLSVerify"] is False
    service = one("Service", api["spec"]["service"]["name"])
    assert service["metadata"]["namespace"] == api["spec"]["service"]["namespace"]
    assert service["spec"]["ports"][0]["port"] == api["spec"]["service"]["port"]


def test_deployment_serves_the_service_port_with_health_probes():
    deployment = one("Deployment", "metrics-adapter")
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["args"][0] == "metrics-adapter"
    assert pod["metadata"]["labels"] == one("Service", "metrics-adapter")["spec"]["selector"]
    assert {p["name"] for p in container["ports"]} == {"https"}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_rbac_delegates_authentication_and_lets_the_hpa_read():
    refs = {(d["kind"], d["roleRef"]["name"]) for d in documents() if "roleRef" in d}
    assert ("ClusterRoleBinding", "system:auth-delegator") in refs
    assert ("RoleBinding", "extension-apiserver-authentication-reader") in refs
    reader = one("ClusterRoleBinding", "inference-autoscaler-hpa-external-metrics")
    assert reader["subjects"][0]["name"] == "horizontal-pod-autoscaler"
