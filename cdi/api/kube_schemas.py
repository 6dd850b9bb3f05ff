"""Kubernetes' own JSON schemas of its built-in types (Pod, Service, ObjectMeta, ...), version 1.32.

They come from the `kubernetes-validate` package, which ships the schemas kube publishes, one
`_definitions.json` per version holding every type under `$defs` and naming others by `$ref`.
The API server walks them to find unknown fields and wrong JSON types in built-in kinds and in
every object's metadata, as kube's typed decoding does.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

Obj = dict[str, Any]

KUBE_VERSION = "1.32.0"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


@lru_cache(maxsize=1)
def definitions() -> dict[str, Obj]:
    """Every type of kube 1.32 by its full name, e.g. `io.k8s.api.core.v1.Pod`."""
    base = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{KUBE_VERSION}-local"
    doc: Obj = json.loads((base / "_definitions.json").read_text())
    defs: dict[str, Obj] = doc["$defs"]
    return defs


def definition_name(group: str, version: str, kind: str) -> str | None:
    """The name of a built-in kind's type (`io.k8s.api.rbac.v1.Role`), None when kube has none."""
    if not group:
        package = "core"
    elif group.endswith(".k8s.io") or "." not in group:
        package = group.split(".")[0]
    else:
        return None
    name = f"io.k8s.api.{package}.{version}.{kind}"
    return name if name in definitions() else None


def ref_name(schema: Obj) -> str | None:
    """The type a `{"$ref": "#/$defs/<name>"}` schema names."""
    ref = schema.get("$ref")
    return ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None
