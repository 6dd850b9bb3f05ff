"""Discovery documents: /api, /apis and their group/version lists, legacy and aggregated, and /version.

kubectl 1.32 first asks /api and /apis for aggregated discovery
(`application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`) and falls back to the
legacy per-group documents when the answer is plain JSON. Both are derived from the registry.
"""

from __future__ import annotations

from typing import Any

from cdi.api.registry import Registry, ResourceKind

Obj = dict[str, Any]

AGGREGATED_V2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
AGGREGATED_V2BETA1 = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
SUBRESOURCE_VERBS = {"status": ["get", "patch", "update"], "log": ["get"], "token": ["create"]}
# Subresources answering with another kind than their resource's: (group, version, kind).
SUBRESOURCE_KINDS = {"log": ("", "v1", "Pod"), "token": ("authentication.k8s.io", "v1", "TokenRequest")}

VERSION_INFO: Obj = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-cdi",
    "gitCommit": "",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "n/a (cdi embedded API server, Python)",
    "compiler": "cpython",
    "platform": "linux/amd64",
}


def aggregated_version(accept: str | None) -> str | None:
    """'v2' or 'v2beta1' when the Accept header asks for aggregated discovery, else None."""
    if not accept:
        return None
    for part in accept.split(","):
        params = dict(p.strip().split("=", 1) for p in part.split(";")[1:] if "=" in p)
        if (
            params.get("as") == "APIGroupDiscoveryList"
            and params.get("g") == "apidiscovery.k8s.io"
            and params.get("v") in ("v2", "v2beta1")
        ):
            return params["v"]
    return None


def _subresources(kind: ResourceKind) -> list[str]:
    return (["status"] if kind.status_subresource else []) + list(kind.extra_subresources)


def _resource_entry(kind: ResourceKind) -> Obj:
    entry: Obj = {
        "name": kind.plural,
        "singularName": kind.singular,
        "namespaced": kind.namespaced,
        "kind": kind.kind,
        "verbs": list(kind.verbs),
    }
    if kind.short_names:
        entry["shortNames"] = list(kind.short_names)
    if kind.categories:
        entry["categories"] = list(kind.categories)
    return entry


def resource_list(registry: Registry, group: str, version: str) -> Obj:
    """Legacy APIResourceList of one group/version."""
    resources = []
    for kind in registry.kinds_in(group, version):
        resources.append(_resource_entry(kind))
        for sub in _subresources(kind):
            resources.append(
                {
                    "name": f"{kind.plural}/{sub}",
                    "singularName": "",
                    "namespaced": kind.namespaced,
                    "kind": SUBRESOURCE_KINDS[sub][2] if sub in SUBRESOURCE_KINDS else kind.kind,
                    "verbs": SUBRESOURCE_VERBS[sub],
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }


def api_versions(server_address: str) -> Obj:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def api_group(registry: Registry, group: str) -> Obj:
    versions = registry.groups()[group]
    gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": gvs,
        "preferredVersion": gvs[0],
    }


def api_group_list(registry: Registry) -> Obj:
    groups = [api_group(registry, g) for g in registry.groups()]
    for g in groups:
        g.pop("kind")
        g.pop("apiVersion")
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def _aggregated_resource(kind: ResourceKind) -> Obj:
    gvk = {"group": kind.group, "version": kind.version, "kind": kind.kind}
    entry: Obj = {
        "resource": kind.plural,
        "responseKind": gvk,
        "scope": "Namespaced" if kind.namespaced else "Cluster",
        "singularResource": kind.singular,
        "verbs": list(kind.verbs),
    }
    if kind.short_names:
        entry["shortNames"] = list(kind.short_names)
    if kind.categories:
        entry["categories"] = list(kind.categories)
    subs = []
    for sub in _subresources(kind):
        kind_of = gvk
        if sub in SUBRESOURCE_KINDS:
            g, v, k = SUBRESOURCE_KINDS[sub]
            kind_of = {"group": g, "version": v, "kind": k}
        subs.append({"subresource": sub, "responseKind": kind_of, "verbs": SUBRESOURCE_VERBS[sub]})
    if subs:
        entry["subresources"] = subs
    return entry


def aggregated(registry: Registry, *, core: bool, version: str = "v2") -> Obj:
    """APIGroupDiscoveryList for /api (core=True) or /apis (core=False)."""
    items = []
    names = [""] if core else list(registry.groups())
    for group in names:
        versions = ["v1"] if core else registry.groups()[group]
        items.append(
            {
                "metadata": {"name": group, "creationTimestamp": None},
                "versions": [
                    {
                        "version": v,
                        "freshness": "Current",
                        "resources": [_aggregated_resource(k) for k in registry.kinds_in(group, v)],
                    }
                    for v in versions
                ],
            }
        )
    return {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": f"apidiscovery.k8s.io/{version}",
        "metadata": {},
        "items": items,
    }
