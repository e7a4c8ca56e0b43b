"""One test's ISVC namespace on the session's control plane, and helpers to read what the
controller (as config/'s ServiceAccount) did there.

The controller watches every namespace, so tests assert about their own namespace's ISVCs, never
about totals: other tests' namespaces may still be going away.
"""

from __future__ import annotations

import json

import pytest

from autoscaler.controller.controller import Controller, ControllerSettings
from autoscaler.controller.decision_store import DECISION_KEY, name_for
from autoscaler.decision_stream import DecisionHub
from autoscaler.kserve import DEPLOYMENT_MODE
from autoscaler.kube import Kube

from ..cluster_objects import isvc
from .conftest import NAMESPACE, kubectl_json, problems_in

CHAT, CODE = "llama-2-13b", "llama-3-8b"  # models of config/data, which `deployed` applied


class Namespace:
    def __init__(self, plane, name: str):
        self.plane, self.name = plane, name

    def create_isvc(self, name: str, model: str, **kwargs) -> None:
        self.plane.kubectl("apply", "--filename=-", input=json.dumps(isvc(name, model, namespace=self.name, **kwargs)))

    def apply(self, objects: list[dict]) -> None:
        """Many objects in one kubectl call (as the admin): each call costs a process start."""
        self.plane.kubectl("apply", "--filename=-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))

    def isvc_metadata(self) -> dict[str, dict]:
        """Each ISVC's metadata (its uid the server's) by name."""
        found = kubectl_json(self.plane, "get", "inferenceservices", f"--namespace={self.name}")
        return {item["metadata"]["name"]: item["metadata"] for item in found["items"]}

    def knative_isvc_kserve_leaves_alone(self, name: str, model: str) -> dict:
        """A Knative-mode ISVC (applied) whose model format no ServingRuntime supports: the KServe
        manager, where test_knative_serving.py has started it in this session, makes no revision
        of its own, whose pods would take GPUs and status fields a test sets itself."""
        made = isvc(name, model, raw=False, namespace=self.name)
        made["metadata"]["annotations"][DEPLOYMENT_MODE] = "Knative"
        made["spec"]["predictor"]["model"]["modelFormat"]["name"] = "no-runtime"
        self.apply([made])
        return made

    def isvc(self, name: str) -> dict:
        return kubectl_json(self.plane, "get", "inferenceservice", name, f"--namespace={self.name}")

    def decision(self, name: str) -> dict | None:
        """What the controller stored for this ISVC, in its own namespace by the ISVC's uid."""
        stored = name_for(self.isvc(name)["metadata"]["uid"])
        found = self.plane.kubectl("get", "configmap", stored, f"--namespace={NAMESPACE}", "--output=json", check=False)
        return json.loads(json.loads(found.stdout)["data"][DECISION_KEY]) if found.returncode == 0 else None

    def exists(self, kind: str, name: str) -> bool:
        return self.plane.kubectl("get", kind, name, f"--namespace={self.name}", check=False).returncode == 0

    async def controller(self, collector) -> Controller:
        kube = await Kube.connect(str(self.plane.service_account_kubeconfig(NAMESPACE, "controller")))
        controller = Controller(kube, collector, DecisionHub(), ControllerSettings(namespace=NAMESPACE))
        await controller.start(sync_timeout_s=30)
        return controller

    def published(self, controller: Controller) -> list:
        return [d for d in controller.hub.current() if d.namespace == self.name]

    def mine(self, report) -> list[str]:
        return problems_in(self.name, report.failures)


async def stop(controller: Controller) -> None:
    await controller.stop()
    await controller.kube.close()


def named(name: str):
    """The test's namespace (conftest's `namespace` fixture) by that name."""
    return pytest.mark.parametrize("namespace", [name], indirect=True, ids=[""])
