"""Status conditions on InferenceServices: ours replaced in place, KServe's left alone."""

from __future__ import annotations

import time

from ..kube import INFERENCE_SERVICES, Kube, with_retries


def rfc3339(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


def conditions_with(existing: list[dict], new: dict, now_rfc3339: str, message_too: bool = True) -> list[dict] | None:
    """The status conditions with ours replaced; None when ours is unchanged (in status and
    reason; in its message too when `message_too`)."""
    others = [c for c in existing if c.get("type") != new["type"]]
    ours = next((c for c in existing if c.get("type") == new["type"]), None)
    compared = new.keys() if message_too else ("status", "reason")
    if ours is not None and all(ours.get(k) == new[k] for k in compared):
        return None
    changed = ours is None or ours.get("status") != new["status"]
    stamped = {**new, "lastTransitionTime": now_rfc3339 if changed else ours.get("lastTransitionTime", now_rfc3339)}
    return others + [stamped]


async def write_condition(kube: Kube, isvc: dict, wanted: dict, now: float, message_too: bool = True) -> bool:
    """Set our condition on the ISVC's status; returns whether anything was written.

    `isvc` is the caller's latest copy; a merge patch replaces the whole conditions list, so it
    carries the copy's resourceVersion: if KServe wrote the status meanwhile, the API server
    answers 409 and the write starts again from a fresh read."""
    meta = isvc["metadata"]
    if conditions_with((isvc.get("status") or {}).get("conditions") or [], wanted, rfc3339(now), message_too) is None:
        return False
    known = [isvc]

    async def write() -> None:
        fresh = known.pop() if known else await kube.get(INFERENCE_SERVICES, meta["namespace"], meta["name"])
        conditions = conditions_with((fresh.get("status") or {}).get("conditions") or [], wanted, rfc3339(now), message_too)
        if conditions is not None:
            body = {"metadata": {"resourceVersion": fresh["metadata"]["resourceVersion"]}, "status": {"conditions": conditions}}
            await kube.patch(INFERENCE_SERVICES, meta["namespace"], meta["name"], body, subresource="status")

    await with_retries(write, f"condition of {meta['namespace']}/{meta['name']}")
    return True
