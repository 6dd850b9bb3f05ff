"""Minimal decoding of Kubernetes protobuf request bodies for the kinds kubectl creates imperatively.

`kubectl create namespace|configmap|secret|service|serviceaccount|role|rolebinding|clusterrole|
clusterrolebinding` send `application/vnd.kubernetes.protobuf` and do not fall back to JSON, so the
server decodes those kinds (field numbers from k8s.io/api/core/v1 and rbac/v1 generated.proto and
apimachinery's ObjectMeta). Other kinds get 415 with a hint
to use `kubectl apply -f` / `create -f`, which send JSON. Responses are always JSON.
"""

from __future__ import annotations

import base64
from typing import Any

from cdi.apiserver.errors import BadRequest, UnsupportedMediaType

Obj = dict[str, Any]
MAGIC = b"k8s\x00"
Fields = list[tuple[int, int | bytes]]


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise BadRequest("truncated protobuf body")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Fields:
    """(field number, value) pairs; varints as int, length-delimited as bytes."""
    out: Fields = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            out.append((num, value))
        elif wire == 2:
            length, pos = _varint(buf, pos)
            out.append((num, buf[pos : pos + length]))
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise BadRequest(f"unsupported protobuf wire type {wire}")
    return out


def _str(v: int | bytes) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _map_entry(v: int | bytes) -> tuple[str, bytes]:
    key, value = "", b""
    for n, x in _fields(v if isinstance(v, bytes) else b""):
        if n == 1:
            key = _str(x)
        elif n == 2 and isinstance(x, bytes):
            value = x
    return key, value


def _object_meta(buf: bytes) -> Obj:
    meta: Obj = {}
    names = {1: "name", 2: "generateName", 3: "namespace"}
    for n, v in _fields(buf):
        if n in names and v:  # proto2 sends empty optional strings too
            meta[names[n]] = _str(v)
        elif n in (11, 12):
            k, val = _map_entry(v)
            meta.setdefault("labels" if n == 11 else "annotations", {})[k] = val.decode()
        elif n == 14:
            meta.setdefault("finalizers", []).append(_str(v))
    return meta


def _message(buf: int | bytes, names: dict[int, str], repeated: tuple[int, ...] = ()) -> Obj:
    """A message of string fields (`repeated` ones as lists); empty strings are left out."""
    out: Obj = {}
    for n, v in _fields(buf if isinstance(buf, bytes) else b""):
        if n in repeated:
            out.setdefault(names[n], []).append(_str(v))
        elif n in names and v:
            out[names[n]] = _str(v)
    return out


_RULE = {1: "verbs", 2: "apiGroups", 3: "resources", 4: "resourceNames", 5: "nonResourceURLs"}
_SUBJECT = {1: "kind", 2: "apiGroup", 3: "name", 4: "namespace"}
_ROLE_REF = {1: "apiGroup", 2: "kind", 3: "name"}
_REQUIREMENT = {1: "key", 2: "operator", 3: "values"}


def _label_selector(buf: int | bytes) -> Obj:
    out: Obj = {}
    for n, v in _fields(buf if isinstance(buf, bytes) else b""):
        if n == 1:
            k, val = _map_entry(v)
            out.setdefault("matchLabels", {})[k] = val.decode()
        elif n == 2:
            out.setdefault("matchExpressions", []).append(_message(v, _REQUIREMENT, repeated=(3,)))
    return out


def _decode_rbac(kind: str, n: int, v: int | bytes, obj: Obj) -> None:
    if kind in ("Role", "ClusterRole") and n == 2:
        rule = _message(v, _RULE, repeated=(1, 2, 3, 4, 5))
        rule.setdefault("verbs", [])
        obj.setdefault("rules", []).append(rule)
    elif kind == "ClusterRole" and n == 3:
        selectors = [_label_selector(x) for m, x in _fields(v if isinstance(v, bytes) else b"") if m == 1]
        obj["aggregationRule"] = {"clusterRoleSelectors": selectors}
    elif kind in ("RoleBinding", "ClusterRoleBinding") and n == 2:
        obj.setdefault("subjects", []).append(_message(v, _SUBJECT))
    elif kind in ("RoleBinding", "ClusterRoleBinding") and n == 3:
        obj["roleRef"] = _message(v, _ROLE_REF)


_RESOURCE_ATTRIBUTES = {1: "namespace", 2: "verb", 3: "group", 4: "version", 5: "resource", 6: "subresource",
                        7: "name"}
_NON_RESOURCE_ATTRIBUTES = {1: "path", 2: "verb"}
_BOUND_OBJECT = {1: "kind", 2: "apiVersion", 3: "name", 4: "uid"}


def _review_spec(kind: str, buf: int | bytes) -> Obj:
    """The spec of an access or rules review, or of a TokenRequest (authorization/v1, authentication/v1)."""
    spec: Obj = {}
    for n, v in _fields(buf if isinstance(buf, bytes) else b""):
        if kind == "SelfSubjectRulesReview":
            if n == 1 and v:
                spec["namespace"] = _str(v)
        elif kind == "TokenRequest":
            if n == 1:
                spec.setdefault("audiences", []).append(_str(v))
            elif n == 3:
                spec["boundObjectRef"] = _message(v, _BOUND_OBJECT)
            elif n == 4 and isinstance(v, int):
                spec["expirationSeconds"] = v
        elif n == 1:
            spec["resourceAttributes"] = _message(v, _RESOURCE_ATTRIBUTES)
        elif n == 2:
            spec["nonResourceAttributes"] = _message(v, _NON_RESOURCE_ATTRIBUTES)
        elif n == 3 and v:
            spec["user"] = _str(v)
        elif n == 4:
            spec.setdefault("groups", []).append(_str(v))
        elif n == 6 and v:
            spec["uid"] = _str(v)
    return spec


_SERVICE_SPEC_STRINGS = {3: "clusterIP", 4: "type", 7: "sessionAffinity", 8: "loadBalancerIP", 10: "externalName",
                         11: "externalTrafficPolicy", 20: "ipFamilyPolicy", 22: "loadBalancerClass",
                         23: "internalTrafficPolicy", 24: "trafficDistribution"}
_SERVICE_SPEC_LISTS = {5: "externalIPs", 9: "loadBalancerSourceRanges", 18: "clusterIPs", 19: "ipFamilies"}


def _int_or_string(buf: bytes) -> int | str:
    kind, number, text = 0, 0, ""
    for n, v in _fields(buf):
        if n == 1 and isinstance(v, int):
            kind = v
        elif n == 2 and isinstance(v, int):
            number = v
        elif n == 3:
            text = _str(v)
    return text if kind == 1 else number


def _service_port(buf: bytes) -> Obj:
    port: Obj = {}
    for n, v in _fields(buf):
        if n in (1, 2, 6) and v:
            port[{1: "name", 2: "protocol", 6: "appProtocol"}[n]] = _str(v)
        elif n in (3, 5) and isinstance(v, int) and v:
            port["port" if n == 3 else "nodePort"] = v
        elif n == 4 and isinstance(v, bytes):
            port["targetPort"] = _int_or_string(v)
    return port


def _service_spec(buf: bytes) -> Obj:
    """ServiceSpec (generated.proto field numbers) as far as `kubectl create service` fills it."""
    spec: Obj = {}
    for n, v in _fields(buf):
        if n == 1 and isinstance(v, bytes):
            spec.setdefault("ports", []).append(_service_port(v))
        elif n == 2:
            k, val = _map_entry(v)
            spec.setdefault("selector", {})[k] = val.decode()
        elif n in _SERVICE_SPEC_STRINGS and v:
            spec[_SERVICE_SPEC_STRINGS[n]] = _str(v)
        elif n in _SERVICE_SPEC_LISTS:
            spec.setdefault(_SERVICE_SPEC_LISTS[n], []).append(_str(v))
        elif n == 12 and v:
            spec["healthCheckNodePort"] = v
        elif n in (13, 21) and isinstance(v, int):
            spec["publishNotReadyAddresses" if n == 13 else "allocateLoadBalancerNodePorts"] = bool(v)
    return spec


def _decode_kind(kind: str, raw: bytes) -> Obj:
    obj: Obj = {}
    for n, v in _fields(raw):
        if n == 1 and isinstance(v, bytes):
            obj["metadata"] = _object_meta(v)
        elif kind in _REVIEW_KINDS and n == 2:
            obj["spec"] = _review_spec(kind, v)
        elif kind in _RBAC_KINDS:
            _decode_rbac(kind, n, v, obj)
        elif kind == "ServiceAccount" and n == 3:
            obj["automountServiceAccountToken"] = bool(v)
        elif kind == "Service" and n == 2 and isinstance(v, bytes):
            obj["spec"] = _service_spec(v)
        elif kind == "Namespace" and n == 2 and isinstance(v, bytes):
            obj["spec"] = {"finalizers": [_str(x) for m, x in _fields(v) if m == 1]}
        elif kind == "ConfigMap" and n in (2, 3):
            k, val = _map_entry(v)
            if n == 2:
                obj.setdefault("data", {})[k] = val.decode()
            else:
                obj.setdefault("binaryData", {})[k] = base64.b64encode(val).decode()
        elif kind == "Secret" and n in (2, 4):
            k, val = _map_entry(v)
            if n == 2:
                obj.setdefault("data", {})[k] = base64.b64encode(val).decode()
            else:
                obj.setdefault("stringData", {})[k] = val.decode()
        elif kind == "Secret" and n == 3 and v:
            obj["type"] = _str(v)
        elif (kind, n) in (("ConfigMap", 4), ("Secret", 5)):
            obj["immutable"] = bool(v)
    return obj


_RBAC_KINDS = ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")
_AUTHZ_REVIEWS = ("SelfSubjectAccessReview", "SubjectAccessReview", "SelfSubjectRulesReview")
_REVIEW_KINDS = (*_AUTHZ_REVIEWS, "SelfSubjectReview", "TokenRequest")
SUPPORTED = (
    {("v1", k) for k in ("Namespace", "ConfigMap", "Secret", "Service", "ServiceAccount")}
    | {("rbac.authorization.k8s.io/v1", k) for k in _RBAC_KINDS}
    | {("authorization.k8s.io/v1", k) for k in _AUTHZ_REVIEWS}
    | {("authentication.k8s.io/v1", k) for k in ("SelfSubjectReview", "TokenRequest")}
)


def decode(body: bytes) -> Obj:
    """Decode a protobuf-encoded kind of `SUPPORTED` to its JSON form."""
    if not body.startswith(MAGIC):
        raise BadRequest("protobuf body without the k8s envelope")
    api_version = kind = ""
    raw = b""
    for n, v in _fields(body[len(MAGIC) :]):
        if n == 1 and isinstance(v, bytes):
            for m, x in _fields(v):
                if m == 1:
                    api_version = _str(x)
                elif m == 2:
                    kind = _str(x)
        elif n == 2 and isinstance(v, bytes):
            raw = v
    if (api_version, kind) not in SUPPORTED:
        raise UnsupportedMediaType(
            f"this server accepts protobuf bodies only for v1 Namespace, ConfigMap, Secret, Service and ServiceAccount "
            f"and rbac.authorization.k8s.io/v1 kinds, not "
            f"{api_version} {kind}; send JSON (for example `kubectl apply -f` or `kubectl create -f`)"
        )
    obj = _decode_kind(kind, raw)
    obj["apiVersion"], obj["kind"] = api_version, kind
    obj.setdefault("metadata", {})
    return obj
