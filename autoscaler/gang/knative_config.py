"""What gang admission needs from Knative's `config-deployment` (knative-serving namespace).

- `pod-is-always-schedulable`: unless "true", Knative marks a revision ResourcesAvailable=False
  as soon as its pods are unschedulable, and pods held by our scheduling gate are; the revision
  would then fail while its group waits for GPUs.
- `progress-deadline`: how long Knative lets a revision's Deployment progress before failing it
  (default 600 s; a revision may set its own with `serving.knative.dev/progress-deadline`). A
  pod group must be decided within it, or Knative fails the revision first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NAMESPACE = "knative-serving"
NAME = "config-deployment"
POD_IS_ALWAYS_SCHEDULABLE = "pod-is-always-schedulable"
PROGRESS_DEADLINE = "progress-deadline"
REVISION_PROGRESS_DEADLINE = "serving.knative.dev/progress-deadline"
DEFAULT_PROGRESS_DEADLINE_S = 600.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def duration_s(text: str) -> float | None:
    """A Go duration ("600s", "10m", "1h30m") in seconds; None when it is not one."""
    text = (text or "").strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _UNIT_S[unit] for number, unit in parts)


@dataclass(frozen=True)
class KnativeDeploymentConfig:
    pod_is_always_schedulable: bool = False
    progress_deadline_s: float = DEFAULT_PROGRESS_DEADLINE_S

    @classmethod
    def from_configmap(cls, configmap: dict) -> "KnativeDeploymentConfig":
        data = configmap.get("data") or {}
        deadline = duration_s(data.get(PROGRESS_DEADLINE, "")) or DEFAULT_PROGRESS_DEADLINE_S
        return cls(data.get(POD_IS_ALWAYS_SCHEDULABLE, "false").strip().lower() == "true", deadline)

    @property
    def problem(self) -> str:
        """What is wrong for gang admission, or ""."""
        if self.pod_is_always_schedulable:
            return ""
        return (
            f'{NAMESPACE}/{NAME} has {POD_IS_ALWAYS_SCHEDULABLE} not "true": Knative fails a revision whose pods '
            'wait at our scheduling gate (ResourcesAvailable=False); set it to "true"'
        )
