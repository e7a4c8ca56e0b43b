"""Issue 13, point 5: reading Knative's config-deployment (Go durations, its defaults).

Gang admission against Knative runs on the real kube-apiserver, scheduler and kwok: a group's
minimum from its revision's PodAutoscaler, Knative's progress deadline capping ours, a failed
group never failed again (tests/e2e/test_gang_knative.py), and a group that does not fit ungated
for the Cluster Autoscaler (tests/e2e/test_webhook_gang_provision.py).
"""

from __future__ import annotations

from autoscaler.gang.knative_config import KnativeDeploymentConfig, duration_s


def knative_config(**data: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "config-deployment", "namespace": "knative-serving"},
        "data": data,
    }


def test_go_durations_and_the_config_s_defaults():
    assert duration_s("600s") == 600 and duration_s("10m") == 600 and duration_s("1h30m") == 5400
    assert duration_s("ten") is None and duration_s("") is None
    assert KnativeDeploymentConfig.from_configmap(knative_config()).progress_deadline_s == 600
    assert KnativeDeploymentConfig.from_configmap(knative_config(**{"pod-is-always-schedulable": "true"})).problem == ""
