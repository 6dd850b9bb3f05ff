"""What the webhook asks the cluster's API server: SubjectAccessReviews and whether a namespace exists.

The clone check (`cdi.apiserver.clone_admission.CloneSourceCheck`) asks an authorizer whether the
requesting user may read the clone source; inside `cdi serve` that is the server's own RBAC, in a
cluster it is kube-apiserver, asked with a `SubjectAccessReview` for the user kube-apiserver names in
the AdmissionReview (name, uid, groups, extra), as CDI's webhook does.
"""

from __future__ import annotations

import logging

from cdi.apiserver.rbac import Attributes, Decision
from cdi.kube import Client, Obj
from cdi.kube.kinds import DATASOURCE, NAMESPACE, Kind

log = logging.getLogger(__name__)

SUBJECTACCESSREVIEW = Kind("authorization.k8s.io", "v1", "SubjectAccessReview", "subjectaccessreviews",
                           namespaced=False)


class ClusterAuthorizer:
    """Authorizes through the API server's SubjectAccessReview API."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def authorize(self, attrs: Attributes) -> Decision:
        resource = {"namespace": attrs.namespace, "verb": attrs.verb, "group": attrs.group,
                    "resource": attrs.resource, "subresource": attrs.subresource, "name": attrs.name}
        spec = {"user": attrs.user.name, "uid": attrs.user.uid, "groups": list(attrs.user.groups),
                "extra": attrs.user.extra, "resourceAttributes": {k: v for k, v in resource.items() if v}}
        review = self.client.create(SUBJECTACCESSREVIEW, {"spec": spec})
        status = review.get("status") or {}
        return Decision(bool(status.get("allowed")), str(status.get("reason") or ""))

    def namespace_exists(self, name: str) -> bool:
        return self.client.find(NAMESPACE, None, name) is not None

    def find_datasource(self, namespace: str, name: str) -> Obj | None:
        return self.client.find(DATASOURCE, namespace, name)
