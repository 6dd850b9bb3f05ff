"""`apiextensions.k8s.io/v1` CustomResourceDefinitions, served read-only: `kubectl get crd` works.

The embedded server's custom kinds are not created through CRDs, they are declared in `cdi.api`; but
tools (and people) look for the CRDs, so the server publishes the very objects the chart installs
(`cdi.api.crdgen.crd`), refreshed at every start from the kinds it serves. Writes are refused with
405 (the kind's verbs are get, list and watch): a CRD here cannot add a kind.
"""

from __future__ import annotations

import copy
import logging

from cdi.api import crdgen
from cdi.api.registry import Column, Registry, ResourceKind
from cdi.apiserver.objects import Objects

log = logging.getLogger(__name__)

CRD_KIND = ResourceKind(
    group="apiextensions.k8s.io", version="v1", kind="CustomResourceDefinition",
    plural="customresourcedefinitions", singular="customresourcedefinition", namespaced=False,
    short_names=("crd", "crds"), categories=("api-extensions",), verbs=("get", "list", "watch"),
    columns=(Column("Created At", "date", ".metadata.creationTimestamp",
                    description="CreationTimestamp of the object."),),
    age_column=False,
    description="CustomResourceDefinition represents a resource that should be exposed on the API server "
    "(read-only here: the kinds are declared in the server's code).",
)


def register(registry: Registry) -> None:
    if registry.by_kind(CRD_KIND.api_version, CRD_KIND.kind) is None:
        registry.register(CRD_KIND)


def ensure(objects: Objects, registry: Registry) -> None:
    """Create or refresh the CRD of every custom kind served, and drop those of kinds no longer served."""
    wanted = {k.group_resource: crdgen.crd(k) for k in crdgen.crd_kinds(registry)}
    for name, crd in wanted.items():
        have = objects.store.get(CRD_KIND.key, "", name)
        if have is None:
            objects.create(CRD_KIND, "", copy.deepcopy(crd))
        elif have.get("spec") != crd["spec"] or have["metadata"].get("labels") != crd["metadata"]["labels"]:
            body = {**copy.deepcopy(crd), "metadata": {**crd["metadata"],
                                                       "resourceVersion": have["metadata"]["resourceVersion"]}}
            objects.update(CRD_KIND, "", name, body)
            log.info("crd refreshed name=%s", name)
    for obj in objects.store.items(CRD_KIND.key):
        if obj["metadata"]["name"] not in wanted:
            objects.delete(CRD_KIND, "", obj["metadata"]["name"])
            log.info("crd dropped name=%s (no such kind served)", obj["metadata"]["name"])
