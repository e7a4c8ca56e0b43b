"""The deployable manifests (config/): rendered as kustomize renders them, validated offline
against the Kubernetes OpenAPI schemas, and checked to hang together (names, ports, RBAC).

Schemas: kubernetes_asyncio's models are generated from the Kubernetes OpenAPI document; every
field of every built-in object must be one the schema names, with the schema's type, and the
schema's required fields present. Objects of CRDs (KServe, cert-manager, Prometheus Operator)
have no schema there: the sample ISVCs go through our own admission webhook instead.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes_asyncio import client

from autoscaler.controller.catalog import cluster_data
from autoscaler.controller.manifests import hpa
from webhook.server import DEFAULT_CLASSES, answer

from .test_webhook import admission

CONFIG = Path(__file__).resolve().parents[1] / "config"
CRD_GROUPS = ("serving.kserve.io", "cert-manager.io", "monitoring.coreos.com")
CHECKING = client.Configuration()
CHECKING.client_side_validation = True


def _simple_render(directory: Path) -> list[dict]:
    """kustomize's resources, namespace and configMapGenerator (no patches): enough for
    config/default when kubectl is not installed."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    documents = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        documents += _simple_render(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for generator in kustomization.get("configMapGenerator", []):
        data = {Path(f).name: (directory / f).read_text() for f in generator["files"]}
        documents.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data})
    if "namespace" in kustomization:
        for d in documents:
            if d["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding", "APIService", "MutatingWebhookConfiguration"):
                d["metadata"].setdefault("namespace", kustomization["namespace"])
    return documents


def render(directory: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if "patches" in (directory / "kustomization.yaml").read_text():
            pytest.skip("kubectl (kustomize) is not installed: overlays with patches are not rendered")
        return _simple_render(directory)
    output = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(output) if d]


def _model_name(document: dict) -> str:
    version = document["apiVersion"].split("/")[-1]
    return version[0].upper() + version[1:] + document["kind"].replace("APIService", "APIService")


def schema_errors(value, type_name: str, path: str) -> list[str]:
    """Every place `value` departs from the OpenAPI type `type_name` (a kubernetes_asyncio model)."""
    if value is None:
        return []
    if type_name.startswith("list["):
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [e for i, item in enumerate(value) for e in schema_errors(item, type_name[5:-1], f"{path}[{i}]")]
    if type_name.startswith("dict("):
        if not isinstance(value, dict):
            return [f"{path}: expected a map"]
        inner = type_name[5:-1].split(", ", 1)[1]
        return [e for k, v in value.items() for e in schema_errors(v, inner, f"{path}.{k}")]
    basic = {"str": str, "int": int, "bool": bool, "float": (int, float), "datetime": str, "date": str}
    if type_name == "object":
        return []
    if type_name in basic:
        ok = isinstance(value, basic[type_name]) and not (type_name == "int" and isinstance(value, bool))
        return [] if ok else [f"{path}: expected {type_name}, got {value!r}"]
    model = getattr(client, type_name)
    if not isinstance(value, dict):
        return [f"{path}: expected an object ({type_name})"]
    by_json_name = {json_name: attribute for attribute, json_name in model.attribute_map.items()}
    errors = []
    for key, item in value.items():
        if key not in by_json_name:
            errors.append(f"{path}.{key}: unknown field of {type_name}")
        else:
            errors += schema_errors(item, model.openapi_types[by_json_name[key]], f"{path}.{key}")
    if not errors:
        try:  # the generated models check the schema's required fields (and enums) when built
            model(local_vars_configuration=CHECKING, **{by_json_name[k]: v for k, v in value.items()})
        except ValueError as exc:
            errors.append(f"{path}: {exc}")
    return errors


def validate(document: dict) -> list[str]:
    return schema_errors(document, _model_name(document), f"{document['kind']}/{document['metadata'].get('name')}")


@pytest.fixture(scope="module")
def default() -> list[dict]:
    return render(CONFIG / "default")


def one(documents, kind, name):
    return next(d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name)


def test_every_built_in_object_matches_the_kubernetes_schema(default):
    built_in = [d for d in default if d["apiVersion"].split("/")[0] not in CRD_GROUPS]
    assert {d["kind"] for d in built_in} >= {"Deployment", "Service", "MutatingWebhookConfiguration", "APIService", "ClusterRole"}
    assert [e for d in built_in for e in validate(d)] == []


def test_the_schema_check_catches_mistakes(default):
    deployment = json.loads(json.dumps(one(default, "Deployment", "controller")))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    deployment["spec"]["replicas"] = "1"
    del deployment["spec"]["selector"]
    errors = validate(deployment)
    assert any("imagePullPolcy: unknown field" in e for e in errors) and any("replicas: expected int" in e for e in errors)
    deployment = json.loads(json.dumps(one(default, "Deployment", "controller")))
    del deployment["spec"]["selector"]
    assert any("selector" in e for e in validate(deployment))


def test_the_hpas_the_controller_writes_match_the_schema():
    owner = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "chat", "uid": "u"}}
    made = hpa(
        "chat-optimizer",
        "prod",
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chat-predictor"},
        {"isvc": "chat"},
        (1, 8),
        owner,
        True,
    )
    assert validate(made) == []
    assert made["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300  # the HPA's default
    # while a model with no profile is identified (Plan.scale_down_s): the plan's window, as valid
    shorter = hpa("chat-optimizer", "prod", made["spec"]["scaleTargetRef"], {"isvc": "chat"}, (1, 8), owner, True, 60)
    assert validate(shorter) == [] and shorter["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 60


def test_webhook_configuration_is_safe_for_the_cluster(default):
    config = one(default, "MutatingWebhookConfiguration", "inference-autoscaler")
    service = one(default, "Service", "webhook")
    for hook in config["webhooks"]:
        assert hook["timeoutSeconds"] == 5 and hook["sideEffects"] == "None" and hook["admissionReviewVersions"] == ["v1"]
        excluded = hook["namespaceSelector"]["matchExpressions"][0]
        assert excluded["operator"] == "NotIn" and set(excluded["values"]) == {"kube-system", "inference-autoscaler"}
        assert hook["matchConditions"] and hook["clientConfig"]["service"]["name"] == service["metadata"]["name"]
        assert hook["clientConfig"]["service"]["path"] == "/mutate"
    policies = {h["name"].split(".")[0]: h["failurePolicy"] for h in config["webhooks"]}
    assert policies == {"inferenceservices": "Fail", "pods": "Ignore"}


def test_one_certificate_covers_both_https_services(default):
    webhook = one(default, "Deployment", "webhook")["spec"]["template"]["spec"]
    args = dict(a.split("=", 1) for a in webhook["containers"][0]["args"] if "=" in a)
    secret = args["--manage-certificates"].split("/")[1]
    assert set(args["--services"].split(",")) == {"webhook", "metrics-adapter", "controller"}
    assert args["--webhook-configuration"] == "inference-autoscaler"
    assert args["--api-service"] == one(default, "APIService", "v1beta1.external.metrics.k8s.io")["metadata"]["name"]
    for component in ("metrics-adapter", "controller"):
        pod = one(default, "Deployment", component)["spec"]["template"]["spec"]
        assert pod["volumes"][0]["secret"]["secretName"] == secret
        assert {i["key"] for i in pod["volumes"][0]["secret"]["items"]} == {"tls.crt", "tls.key", "ca.crt"}
        mounted = {a.split("=", 1)[1] for a in pod["containers"][0]["args"] if a.endswith((".crt", ".key"))}
        assert mounted <= {f"/var/run/serving-cert/{i}" for i in ("tls.crt", "tls.key", "ca.crt")} and len(mounted) == 3


WRITES = {"create", "update", "patch", "delete", "deletecollection", "*"}
CONTROLLER_CALLS = [  # (API group, resource, verb) of every call the controller makes
    ("serving.kserve.io", "inferenceservices", "watch"),
    ("serving.kserve.io", "inferenceservices", "patch"),
    ("serving.kserve.io", "inferenceservices/status", "patch"),
    ("autoscaling", "horizontalpodautoscalers", "watch"),
    ("autoscaling", "horizontalpodautoscalers", "create"),
    ("autoscaling", "horizontalpodautoscalers", "patch"),
    ("autoscaling", "horizontalpodautoscalers", "delete"),
    ("autoscaling.internal.knative.dev", "podautoscalers", "watch"),
    ("autoscaling.internal.knative.dev", "podautoscalers/status", "patch"),
    ("networking.internal.knative.dev", "serverlessservices", "watch"),
    ("networking.internal.knative.dev", "serverlessservices", "create"),
    ("networking.internal.knative.dev", "serverlessservices", "patch"),
    ("apps", "deployments/scale", "patch"),
    ("", "pods", "watch"),
    ("", "pods", "get"),
    ("", "pods", "patch"),
    ("", "pods", "delete"),
    ("", "events", "create"),
    ("", "nodes", "watch"),
]


def _allows(rules, group, resource, verb):
    return any(group in r.get("apiGroups", ()) and resource in r.get("resources", ()) and verb in r["verbs"] for r in rules)


def test_rbac_covers_what_each_component_calls(default):
    rules = {r["metadata"]["name"]: r["rules"] for r in default if r["kind"] in ("ClusterRole", "Role")}
    cluster_wide = rules["inference-autoscaler-controller"]
    per_namespace = rules["inference-autoscaler-controller-namespace"]
    for group, resource, verb in CONTROLLER_CALLS:
        granted = _allows(cluster_wide, group, resource, verb) or _allows(per_namespace, group, resource, verb)
        assert granted, (group, resource, verb)
    assert _allows(rules["controller"], "", "configmaps", "update")
    webhook = rules["inference-autoscaler-webhook-ca-injection"]
    assert _allows(webhook, "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "update")
    refs = {(d["kind"], d["roleRef"]["name"]) for d in default if "roleRef" in d}
    assert ("ClusterRoleBinding", "system:auth-delegator") in refs
    assert ("RoleBinding", "extension-apiserver-authentication-reader") in refs


def test_the_controller_writes_only_in_namespaces_bound_to_it(default):
    """Cluster-wide the controller reads; its writes (pods, scale, HPAs, ISVCs...) are in a
    ClusterRole that only a RoleBinding in an opted-in namespace grants."""
    cluster_wide = one(default, "ClusterRole", "inference-autoscaler-controller")["rules"]
    assert [r for r in cluster_wide if WRITES & set(r["verbs"])] == []
    bound = {(d["kind"], d["roleRef"]["name"]) for d in default if "roleRef" in d}
    assert ("ClusterRoleBinding", "inference-autoscaler-controller-namespace") not in bound
    sample = [d for d in render(CONFIG / "samples") if d["kind"] == "RoleBinding"]
    assert [(d["metadata"]["namespace"], d["roleRef"]["name"]) for d in sample] == [
        ("llm", "inference-autoscaler-controller-namespace")
    ]
    assert sample[0]["subjects"] == [{"kind": "ServiceAccount", "name": "controller", "namespace": "inference-autoscaler"}]
    assert validate(sample[0]) == []


def test_services_and_probes_match_the_containers(default):
    for component in ("controller", "webhook", "metrics-adapter"):
        pod = one(default, "Deployment", component)["spec"]["template"]
        container = pod["spec"]["containers"][0]
        service = one(default, "Service", component)
        assert container["args"][0] == component
        assert pod["metadata"]["labels"] == service["spec"]["selector"]
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= {p["name"] for p in container["ports"]}
        assert pod["spec"]["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
    adapter_args = one(default, "Deployment", "metrics-adapter")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--decisions=controller.inference-autoscaler.svc:9090" in adapter_args


def test_the_optimizer_data_configmap_loads(default):
    configmap = one(default, "ConfigMap", "inference-autoscaler-data")
    data = cluster_data(configmap, "config/data")
    assert set(data.catalog.accelerators) == {"H100", "A100", "L40S"} and data.gpu_products["NVIDIA-H100-80GB-HBM3"] == "H100"


@pytest.mark.parametrize("sample", ["isvc-knative.yaml", "isvc-standard.yaml"])
def test_sample_isvcs_pass_our_admission_webhook(sample):
    isvc = yaml.safe_load((CONFIG / "samples" / sample).read_text())
    status, body = answer(json.dumps(admission(isvc)).encode(), DEFAULT_CLASSES)
    assert status == 200 and body["response"]["allowed"] and not body["response"].get("warnings"), body


def test_cert_manager_overlay_hands_the_secret_to_cert_manager():
    documents = render(CONFIG / "cert-manager")
    webhook = one(documents, "Deployment", "webhook")["spec"]["template"]["spec"]
    assert not any(a.startswith("--manage-certificates") for a in webhook["containers"][0]["args"])
    assert webhook["volumes"][0] == {"name": "tls", "secret": {"secretName": "inference-autoscaler-tls"}}
    for kind, name in (
        ("MutatingWebhookConfiguration", "inference-autoscaler"),
        ("APIService", "v1beta1.external.metrics.k8s.io"),
    ):
        annotations = one(documents, kind, name)["metadata"]["annotations"]
        assert annotations["cert-manager.io/inject-ca-from"] == "inference-autoscaler/inference-autoscaler-tls"
    certificate = one(documents, "Certificate", "inference-autoscaler-tls")
    assert "webhook.inference-autoscaler.svc" in certificate["spec"]["dnsNames"]
    assert [e for d in documents if d["apiVersion"].split("/")[0] not in CRD_GROUPS for e in validate(d)] == []


def test_two_controllers_elect_a_leader_on_a_lease_they_may_write(default):
    deployment = one(default, "Deployment", "controller")
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"]["type"] == "Recreate"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]
    role = one(default, "Role", "controller")["rules"]
    lease = [r for r in role if r["apiGroups"] == ["coordination.k8s.io"]]
    assert {v for r in lease for v in r["verbs"]} >= {"get", "create", "update"}
    named = [r for r in lease if "update" in r["verbs"]]
    assert named and all(r["resourceNames"] == ["inference-autoscaler-controller"] for r in named)


def test_secrets_are_read_by_name_and_only_the_webhook_reads_the_ca_key(default):
    readers = {
        (d["metadata"]["name"], tuple(r.get("resourceNames", ["*"])))
        for d in default
        if d["kind"] in ("Role", "ClusterRole")
        for r in d["rules"]
        if "secrets" in r.get("resources", ()) and {"get", "list", "watch"} & set(r["verbs"])
    }
    assert readers == {
        ("webhook-certificates", ("inference-autoscaler-tls", "inference-autoscaler-tls-ca")),
    }
    for deployment in (d for d in default if d["kind"] == "Deployment"):
        for volume in deployment["spec"]["template"]["spec"].get("volumes", []):
            if "secret" in volume:  # named keys only: a whole-Secret mount would carry whatever is added to it
                keys = {i["key"] for i in volume["secret"].get("items", [])}
                assert keys and "ca.key" not in keys, deployment["metadata"]["name"]


def _policy_for(default, component: str) -> dict:
    pod = one(default, "Deployment", component)["spec"]["template"]
    policies = [
        d
        for d in default
        if d["kind"] == "NetworkPolicy"
        and d["spec"]["podSelector"].get("matchLabels")
        and d["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    ]
    assert len(policies) == 1, (component, [p["metadata"]["name"] for p in policies])
    return policies[0]


def _ingress(policy: dict) -> dict[str, list[dict]]:
    """port name -> the peers allowed to reach it."""
    return {port["port"]: rule.get("from", []) for rule in policy["spec"]["ingress"] for port in rule["ports"]}


def test_network_policies_let_in_only_who_must_come(default):
    deny = [d for d in default if d["kind"] == "NetworkPolicy" and d["spec"]["podSelector"] == {}]
    assert len(deny) == 1 and deny[0]["spec"]["policyTypes"] == ["Ingress"] and not deny[0]["spec"].get("ingress")
    adapter_pods = one(default, "Deployment", "metrics-adapter")["spec"]["template"]["metadata"]["labels"]
    for component in ("controller", "webhook", "metrics-adapter"):
        policy = _policy_for(default, component)
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        container = one(default, "Deployment", component)["spec"]["template"]["spec"]["containers"][0]
        assert set(_ingress(policy)) == {p["name"] for p in container["ports"]}  # every port has its sources, no more
    controller = _ingress(_policy_for(default, "controller"))
    [stream] = controller["grpc"]
    assert stream == {"podSelector": {"matchLabels": adapter_pods}}  # the decision stream: the adapter, in our namespace
    [prometheus] = controller["https"]
    assert prometheus["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    assert prometheus["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
    for component in ("webhook", "metrics-adapter"):  # the API server: not a pod, so addresses
        [api_server] = _ingress(_policy_for(default, component))["https"]
        assert set(api_server) == {"ipBlock"}
