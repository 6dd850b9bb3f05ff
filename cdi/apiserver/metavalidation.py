"""ObjectMeta validation as apimachinery's ValidateObjectMeta words it: names, labels, annotations.

- names: a DNS-1123 subdomain for most kinds, a DNS-1123 label for namespaces, a DNS-1035 label
  for services; `generateName` is cut to 58 characters (five random ones follow) and a bad prefix
  is reported on `metadata.generateName`;
- label keys and annotation keys are qualified names (`[prefix/]name`), label values at most 63
  characters of `[A-Za-z0-9_.-]` starting and ending alphanumeric;
- annotations together at most 256 KiB (keys and values), `Too long` in kube 1.32's words;
- finalizers are qualified names; ownerReferences name their owner fully (apiVersion, kind, name,
  uid: garbage collection needs the uid) and at most one of them is the controller.

Every problem is a `<field>: <detail>` string, turned into a 422 with one cause each.
"""

from __future__ import annotations

import re
from typing import Any

from cdi.api.registry import ResourceKind

Obj = dict[str, Any]

MAX_GENERATE_NAME = 58
TOTAL_ANNOTATION_BYTES = 256 * 1024

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = _DNS1123_LABEL + r"(\." + _DNS1123_LABEL + r")*"
_DNS1035_LABEL = r"[a-z]([-a-z0-9]*[a-z0-9])?"
_QUALIFIED_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE = r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"

NAME_RULES: dict[str, tuple[str, int, str]] = {
    "subdomain": (
        _DNS1123_SUBDOMAIN,
        253,
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
        "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
        f"validation is '{_DNS1123_SUBDOMAIN}')",
    ),
    "label": (
        _DNS1123_LABEL,
        63,
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
        "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
        f"validation is '{_DNS1123_LABEL}')",
    ),
    "dns1035": (
        _DNS1035_LABEL,
        63,
        "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
        "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
        f"regex used for validation is '{_DNS1035_LABEL}')",
    ),
}
# Kinds whose names are stricter than a subdomain, as kube validates them.
NAME_RULE_OF_KIND = {("", "Namespace"): "label", ("", "Service"): "dns1035"}


def _q(value: Any) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def name_rule(kind: ResourceKind) -> str:
    return NAME_RULE_OF_KIND.get((kind.group, kind.kind), "subdomain")


def check_name(kind: ResourceKind, name: str, *, field: str = "metadata.name") -> list[str]:
    pattern, limit, words = NAME_RULES[name_rule(kind)]
    errs = []
    if len(name) > limit:
        errs.append(f"{field}: Invalid value: {_q(name)}: must be no more than {limit} characters")
    if not re.fullmatch(pattern, name):
        errs.append(f"{field}: Invalid value: {_q(name)}: {words}")
    return errs


def generated_prefix(generate_name: str) -> str:
    """The part of generateName kube keeps: at most 58 characters, so the name stays within 63."""
    return generate_name[:MAX_GENERATE_NAME]


def _qualified_name(key: str, field: str) -> list[str]:
    prefix, sep, name = key.rpartition("/")
    errs = []
    if sep and not prefix:
        errs.append(f"{field}: Invalid value: {_q(key)}: prefix part must be non-empty")
    elif sep:
        if len(prefix) > 253:
            errs.append(f"{field}: Invalid value: {_q(key)}: prefix part must be no more than 253 characters")
        elif not re.fullmatch(_DNS1123_SUBDOMAIN, prefix):
            errs.append(f"{field}: Invalid value: {_q(key)}: prefix part {NAME_RULES['subdomain'][2]}")
    if not name:
        errs.append(f"{field}: Invalid value: {_q(key)}: name part must be non-empty")
    elif len(name) > 63:
        errs.append(f"{field}: Invalid value: {_q(key)}: name part must be no more than 63 characters")
    elif not re.fullmatch(_QUALIFIED_NAME, name):
        errs.append(
            f"{field}: Invalid value: {_q(key)}: name part must consist of alphanumeric characters, '-', "
            "'_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or "
            f"'my.name',  or '123-abc', regex used for validation is '{_QUALIFIED_NAME}')"
        )
    return errs


def _labels(labels: Any) -> list[str]:
    if labels is None:
        return []
    if not isinstance(labels, dict):
        return ["metadata.labels: Invalid value: must be a map of strings"]
    errs = []
    for key, value in labels.items():
        errs += _qualified_name(str(key), "metadata.labels")
        if not isinstance(value, str):
            errs.append(f"metadata.labels: Invalid value: {_q(value)}: must be a string")
        elif len(value) > 63:
            errs.append(f"metadata.labels: Invalid value: {_q(value)}: must be no more than 63 characters")
        elif not re.fullmatch(_LABEL_VALUE, value):
            errs.append(
                f"metadata.labels: Invalid value: {_q(value)}: a valid label must be an empty string or "
                "consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                "alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for "
                f"validation is '{_LABEL_VALUE}')"
            )
    return errs


def _annotations(annotations: Any) -> list[str]:
    if annotations is None:
        return []
    if not isinstance(annotations, dict):
        return ["metadata.annotations: Invalid value: must be a map of strings"]
    errs = []
    total = 0
    for key, value in annotations.items():
        errs += _qualified_name(str(key).lower(), "metadata.annotations")
        total += len(str(key).encode()) + len(str(value).encode())
    if total > TOTAL_ANNOTATION_BYTES:
        errs.append(f"metadata.annotations: Too long: may not be more than {TOTAL_ANNOTATION_BYTES} bytes")
    return errs


def _finalizers(finalizers: Any) -> list[str]:
    if not isinstance(finalizers, list):
        return [] if finalizers is None else ["metadata.finalizers: Invalid value: must be a list of strings"]
    errs = []
    for i, f in enumerate(finalizers):
        errs += _qualified_name(str(f), f"metadata.finalizers[{i}]")
    return errs


def _owner_references(refs: Any) -> list[str]:
    """kube's ValidateOwnerReferences: the four identifying fields, at most one controller."""
    if not isinstance(refs, list):
        return [] if refs is None else ["metadata.ownerReferences: Invalid value: must be a list"]
    errs = []
    controllers = []
    for ref in refs:
        ref = ref if isinstance(ref, dict) else {}
        for key, what in (("apiVersion", "version"), ("kind", "kind"), ("name", "name"), ("uid", "uid")):
            if not ref.get(key):
                errs.append(f'metadata.ownerReferences.{key}: Invalid value: "": {what} must not be empty')
        if ref.get("controller") is True:
            controllers.append(f"{ref.get('kind')}/{ref.get('name')}")
    if len(controllers) > 1:
        errs.append(
            "metadata.ownerReferences: Invalid value: only one reference can have Controller set to true. "
            f'Found "true" in references for {" and ".join(controllers)}'
        )
    return errs


def check_metadata(meta: Obj) -> list[str]:
    """Label, annotation, finalizer and ownerReference problems of an object's metadata."""
    return (
        _labels(meta.get("labels"))
        + _annotations(meta.get("annotations"))
        + _finalizers(meta.get("finalizers"))
        + _owner_references(meta.get("ownerReferences"))
    )
