"""Strategic merge patch for the built-in kinds, as apimachinery's strategicpatch applies it.

kube-apiserver accepts `application/strategic-merge-patch+json` only for built-in kinds, whose Go
types carry `patchStrategy`/`patchMergeKey` tags; custom resources get 415 (see `patch.py`). The
tags of the kinds served here are declared by path in `merge_key`:

- lists merged element by element on their key: containers, initContainers, ephemeralContainers,
  env, volumes, imagePullSecrets, resourceClaims by `name`; container `ports` by `containerPort` but
  a Service's `spec.ports` by `port`; volumeMounts by `mountPath`; volumeDevices by `devicePath`;
  conditions by `type`; ownerReferences by `uid`; hostAliases by `ip`; status lists by `name`;
- `metadata.finalizers` is merged as a set of strings;
- every other list is replaced, as in a merge patch.

Directives: `$patch: delete` (map or list element), `$patch: replace` (map, or as an element of a
list: the list is replaced by the other elements), `$retainKeys`, `$deleteFromPrimitiveList/<f>`
and `$setElementOrder/<f>` (honoured: the merged list follows the given order, other elements
after it).
"""

from __future__ import annotations

import copy
from typing import Any

_BY_NAME = (
    "containers",
    "initContainers",
    "ephemeralContainers",
    "env",
    "volumes",
    "imagePullSecrets",
    "resourceClaims",
    "containerStatuses",
    "initContainerStatuses",
    "ephemeralContainerStatuses",
)
_KEYS = {
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "conditions": "type",
    "ownerReferences": "uid",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
}


def merge_key(path: tuple[str, ...]) -> str | None:
    """The patchMergeKey of the list at `path` (field names from the object's root), or None."""
    field = path[-1]
    if field == "ports":
        return "port" if path == ("spec", "ports") else "containerPort"
    if field in _BY_NAME:
        return "name"
    return _KEYS.get(field)


def _is_set_list(path: tuple[str, ...]) -> bool:
    return path == ("metadata", "finalizers")


def _ordered(items: list[Any], order: list[Any], key: str | None) -> list[Any]:
    """`items` in the order `$setElementOrder` gives; elements it does not name keep theirs, after."""
    def ident(x: Any) -> Any:
        return x.get(key) if key and isinstance(x, dict) else x

    wanted = [ident(o) for o in order]
    first = [x for w in wanted for x in items if ident(x) == w]
    return first + [x for x in items if ident(x) not in wanted]


def _merge_list(target: list[Any], patch: list[Any], key: str | None, path: tuple[str, ...]) -> list[Any]:
    if any(isinstance(x, dict) and x.get("$patch") == "replace" for x in patch):
        return [copy.deepcopy(x) for x in patch if not (isinstance(x, dict) and "$patch" in x)]
    if key is None or not all(isinstance(x, dict) and key in x for x in [*target, *patch]):
        return [copy.deepcopy(x) for x in patch if not (isinstance(x, dict) and "$patch" in x)]
    result = [copy.deepcopy(x) for x in target]
    for item in patch:
        idx = next((i for i, x in enumerate(result) if x[key] == item[key]), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                result.pop(idx)
            continue
        if idx is None:
            result.append(_merge({}, item, path))
        else:
            result[idx] = _merge(result[idx], item, path)
    return result


def _merge(target: Any, patch: Any, path: tuple[str, ...]) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    orders: dict[str, list[Any]] = {}
    for name, value in patch.items():
        if name in ("$patch", "$retainKeys"):
            continue
        if name.startswith("$setElementOrder/"):
            orders[name.split("/", 1)[1]] = value if isinstance(value, list) else []
            continue
        if name.startswith("$deleteFromPrimitiveList/"):
            field = name.split("/", 1)[1]
            result[field] = [x for x in result.get(field) or [] if x not in (value or [])]
            continue
        sub = (*path, name)
        current = result.get(name)
        if value is None:
            result.pop(name, None)
        elif isinstance(value, list) and _is_set_list(sub):
            result[name] = list(dict.fromkeys([*(current or []), *value]))
        elif isinstance(value, list):
            result[name] = _merge_list(current if isinstance(current, list) else [], value, merge_key(sub), sub)
        else:
            merged = _merge(current, value, sub)
            if merged is None:
                result.pop(name, None)
            else:
                result[name] = merged
    for name, order in orders.items():
        if isinstance(result.get(name), list):
            result[name] = _ordered(result[name], order, merge_key((*path, name)))
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Apply a strategic merge patch to a built-in object (see the module docstring)."""
    return _merge(target, patch, ())
