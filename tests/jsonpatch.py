"""RFC 6902 JSON Patch and RFC 7386 merge patch, applied as the API server applies them."""

from __future__ import annotations

import copy
from typing import Any


class PatchFailed(ValueError):
    pass


def _locate(document: Any, pointer: str) -> tuple[Any, str]:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
    parent = document
    try:
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    except (KeyError, IndexError, ValueError, TypeError):
        raise PatchFailed(f"path {pointer} does not exist") from None
    return parent, parts[-1]


def apply_patch(document: dict, patch: list[dict]) -> dict:
    """add, remove, replace and test; any failure leaves the document unchanged (raises)."""
    result = copy.deepcopy(document)
    for operation in patch:
        op, pointer = operation["op"], operation["path"]
        parent, last = _locate(result, pointer)
        if isinstance(parent, list):
            if op == "add":
                parent.insert(len(parent) if last == "-" else int(last), operation["value"])
                continue
            index = int(last)
            if not 0 <= index < len(parent):
                raise PatchFailed(f"index {pointer} out of range")
        elif op == "add":
            if last in parent:
                raise PatchFailed(f"add: {pointer} exists (a webhook must use replace)")
            parent[last] = operation["value"]
            continue
        else:
            index = last
            if last not in parent:
                raise PatchFailed(f"{op}: {pointer} does not exist")
        if op == "remove":
            del parent[index]
        elif op == "replace":
            parent[index] = operation["value"]
        elif op == "test":
            if parent[index] != operation["value"]:
                raise PatchFailed(f"test failed at {pointer}")
        else:
            raise PatchFailed(f"unsupported op {op!r}")
    return result


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result
