"""config/, and the HPA the controller writes, accepted by a real kube-apiserver (server-side dry
run, strict field validation).

What the emulator and the offline schema check (tests/test_manifests.py) cannot show: the API
server's own validation of every object (CEL matchConditions of the webhook configuration, the
APIService's group/version/priorities, RBAC rules, label selectors, Deployment templates,
immutable and defaulted fields), admission, and unknown fields refused under strict validation.
"""

from __future__ import annotations

import json

import yaml

from autoscaler.controller.manifests import hpa

from ..control_plane import ROOT
from .conftest import rendered


def test_default_overlay_is_accepted_by_the_api_server(deployed):
    result = deployed.kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-k", str(ROOT / "config" / "default"), check=False
    )
    assert result.returncode == 0, result.stderr
    assert "mutatingwebhookconfiguration.admissionregistration.k8s.io/inference-autoscaler" in result.stdout
    assert "apiservice.apiregistration.k8s.io/v1beta1.external.metrics.k8s.io" in result.stdout


def test_cert_manager_overlay_less_its_certificates_is_accepted(deployed):
    # cert-manager's own kinds need its CRDs, which this cluster does not have
    objects = [d for d in rendered(deployed, "cert-manager") if not d["apiVersion"].startswith("cert-manager.io/")]
    assert any(d["kind"] == "MutatingWebhookConfiguration" for d in objects)
    result = deployed.kubectl(
        "apply", "--dry-run=server", "--validate=strict", "--filename=-", input=yaml.safe_dump_all(objects), check=False
    )
    assert result.returncode == 0, result.stderr


def test_the_hpa_the_controller_writes_is_accepted_with_either_scale_down_window(deployed):
    """manifests.hpa as the actuator writes it, with the default scale-down window and with the
    one of a model with no profile being identified (Plan.scale_down_s): the real server
    validates each strictly and keeps the window it was given."""
    owner = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "chat", "uid": "u"}}
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chat-predictor"}
    for window, kept in ((None, 300), (60, 60)):
        made = hpa("chat-optimizer", "default", target, {"isvc": "chat"}, (1, 8), owner, True, window)
        result = deployed.kubectl(
            "apply", "--dry-run=server", "--validate=strict", "--output=json", "--filename=-", input=json.dumps(made), check=False
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == kept
