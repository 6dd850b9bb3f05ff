"""DataVolume admission rules (CDI's webhook, worded as kube-apiserver field errors)."""

from __future__ import annotations

import copy

import pytest

from cdi.api import default_registry
from cdi.api.datavolume import validate_datavolume
from cdi.units import QuantityError, parse_quantity, quantity_bytes

STORAGE = {"resources": {"requests": {"storage": "1Gi"}}}


def dv(**spec: object) -> dict:
    return {
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": {"name": "x"},
        "spec": spec,
    }


@pytest.mark.parametrize(
    "spec",
    [
        {
            "source": {
                "http": {"url": "https://example.com/disk.img", "secretRef": "s", "certConfigMap": "c"}
            },
            "storage": STORAGE,
        },
        {
            "source": {"http": {"url": "http://example.com/disk.img"}},
            "pvc": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "500Mi"}}},
        },
        {"source": {"blank": {}}, "storage": STORAGE},
        {"source": {"upload": {}}, "storage": STORAGE, "contentType": "kubevirt"},
        {"source": {"registry": {"url": "docker://quay.io/containerdisks/fedora:40"}}, "storage": STORAGE},
        {"source": {"registry": {"url": "oci-archive:///tmp/image.tar"}}, "storage": STORAGE},
        {"source": {"s3": {"url": "https://s3.example.com/bucket/disk.img"}}, "storage": STORAGE},
        {"source": {"pvc": {"namespace": "ns", "name": "golden"}}, "storage": {}},
        {"source": {"snapshot": {"namespace": "ns", "name": "snap"}}, "storage": {"resources": {}}},
        {"sourceRef": {"kind": "DataSource", "name": "fedora"}, "storage": {}},
        {"source": {"http": {"url": "https://x/y.tar"}}, "storage": STORAGE, "contentType": "archive"},
        {
            "source": {"http": {"url": "https://x/y", "checksum": "sha256:" + "ab" * 32}},
            "storage": STORAGE,
            "preallocation": True,
        },
    ],
)
def test_valid_specs_pass(spec: dict) -> None:
    assert validate_datavolume(dv(**spec), None) == []


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        (
            {"storage": STORAGE},
            'spec.source: Invalid value: "": Data volume should have either Source or SourceRef',
        ),
        (
            {"source": {"blank": {}}, "sourceRef": {"kind": "DataSource", "name": "d"}, "storage": STORAGE},
            'spec.source: Invalid value: "source, sourceRef": Data volume should have either Source or '
            "SourceRef",
        ),
        ({"source": {"blank": {}}}, "spec.pvc: Required value: Missing Data volume PVC"),
        (
            {"source": {"blank": {}}, "storage": STORAGE, "pvc": STORAGE},
            "spec.storage: Forbidden: Duplicate storage definition",
        ),
        ({"source": {}, "storage": STORAGE}, "spec.source: Required value: Missing Data volume source"),
        ({"source": {"ftp": {}}, "storage": STORAGE}, 'spec.source.ftp: Unsupported value: "ftp"'),
        (
            {"source": {"http": {"url": ""}}, "storage": STORAGE},
            "spec.source.http.url: Required value: source URL is empty",
        ),
        (
            {"source": {"http": {"url": "file:///etc/passwd"}}, "storage": STORAGE},
            'spec.source.http.url: Invalid value: "file:///etc/passwd": Invalid source URL scheme',
        ),
        (
            {"source": {"http": {"url": "http://x/disk\n.img"}}, "storage": STORAGE},
            'Invalid source URL: parse "http://x/disk\\n.img": net/url: invalid control character in URL',
        ),
        (
            {"source": {"http": {"url": "http://x/my disk.img"}}, "storage": STORAGE},
            "Invalid source URL: it contains a space; write it as %20",
        ),
        (
            {"source": {"registry": {"url": "docker://q/x\t"}}, "storage": STORAGE},
            "net/url: invalid control character in URL",
        ),
        (
            {"source": {"s3": {"url": "s3://bucket/x"}}, "storage": STORAGE},
            "spec.source.s3.url: Invalid value",
        ),
        (
            {"source": {"http": {"url": "https://x/y"}}, "storage": STORAGE, "contentType": "iso"},
            'spec.contentType: Unsupported value: "iso": supported values: "kubevirt", "archive"',
        ),
        (
            {"source": {"registry": {"url": "docker://q/x"}}, "storage": STORAGE, "contentType": "archive"},
            "ContentType must be kubevirt when Source is Registry",
        ),
        (
            {"source": {"registry": {"url": "http://q/x"}}, "storage": STORAGE},
            "Illegal registry source URL scheme",
        ),
        (
            {"source": {"registry": {}}, "storage": STORAGE},
            "source registry should have either URL or ImageStream",
        ),
        (
            {"source": {"registry": {"url": "docker://q/x", "pullMethod": "magic"}}, "storage": STORAGE},
            "spec.source.registry.pullMethod: Unsupported value",
        ),
        (
            {"source": {"http": {"url": "https://x/y"}}, "storage": {}},
            "spec.storage.resources.requests.storage: Required value: Storage size is missing",
        ),
        (
            {
                "source": {"http": {"url": "https://x/y"}},
                "pvc": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "0"}}},
            },
            "PVC size can't be equal or less than zero",
        ),
        (
            {
                "source": {"http": {"url": "https://x/y"}},
                "pvc": {"resources": {"requests": {"storage": "1Gi"}}},
            },
            "spec.pvc.accessModes: Required value: at least 1 access mode is required",
        ),
        (
            {
                "source": {"http": {"url": "https://x/y"}},
                "pvc": {
                    "accessModes": ["ReadWriteOnce", "ReadOnlyMany"],
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
            "PVC multiple accessModes",
        ),
        (
            {
                "source": {"http": {"url": "https://x/y"}},
                "pvc": {"accessModes": ["Sometimes"], "resources": {"requests": {"storage": "1Gi"}}},
            },
            'spec.pvc.accessModes[0]: Unsupported value: "Sometimes"',
        ),
        (
            {
                "source": {"http": {"url": "https://x/y"}},
                "pvc": {"accessModes": ["ReadWriteOnce"], "volumeMode": "Weird",
                        "resources": {"requests": {"storage": "1Gi"}}},
            },
            'spec.pvc.volumeMode: Unsupported value: "Weird": supported values: "Block", "Filesystem"',
        ),
        (
            {"source": {"http": {"url": "https://x/y"}},
             "storage": {"volumeMode": "Weird", "resources": {"requests": {"storage": "1Gi"}}}},
            'spec.storage.volumeMode: Unsupported value: "Weird": supported values: "Block", "Filesystem"',
        ),
        (
            {
                "source": {"http": {"url": "https://x/y"}},
                "storage": {"resources": {"requests": {"storage": "lots"}}},
            },
            "quantities must match the regular expression",
        ),
        (
            {"source": {"pvc": {"name": "golden"}}, "storage": STORAGE},
            "spec.source.pvc.namespace: Required value: source pvc is not valid",
        ),
        (
            {
                "source": {"imageio": {"url": "https://engine/ovirt-engine/api", "diskId": "1"}},
                "storage": STORAGE,
            },
            "spec.source.imageio.secretRef: Required value",
        ),
        (
            {"sourceRef": {"kind": "PersistentVolumeClaim", "name": "x"}, "storage": {}},
            'spec.sourceRef.kind: Unsupported value: "PersistentVolumeClaim": supported values: "DataSource"',
        ),
        ({"sourceRef": {"kind": "DataSource"}, "storage": {}}, "spec.sourceRef.name: Required value"),
        (
            {"source": {"blank": {}}, "storage": STORAGE, "contentType": "archive"},
            "SourceType cannot be blank and the contentType be archive",
        ),
        (
            {"source": {"http": {"url": "http://x/y", "checksum": "crc32:1234"}}, "storage": STORAGE},
            "spec.source.http.checksum: Invalid value",
        ),
        (
            {"source": {"http": {"url": "http://x/y", "checksum": "sha256:abc"}}, "storage": STORAGE},
            "64 lowercase hex digits",
        ),
    ],
)
def test_invalid_specs_fail_with_field_error(spec: dict, error: str) -> None:
    errors = validate_datavolume(dv(**spec), None)
    assert len(errors) == 1
    assert error in errors[0]


def test_spec_is_immutable_but_metadata_and_multistage_checkpoints_may_change() -> None:
    old = dv(source={"http": {"url": "https://x/y"}}, storage=STORAGE)
    new = copy.deepcopy(old)
    new["metadata"]["labels"] = {"a": "b"}
    assert validate_datavolume(new, old) == []
    new["spec"]["source"]["http"]["url"] = "https://x/z"
    assert validate_datavolume(new, old) == [
        "spec: Forbidden: Cannot update DataVolume Spec: spec is immutable after creation "
        "(only checkpoints of a multi-stage import may change)"
    ]
    warm = dv(
        source={
            "vddk": {
                "url": "https://vc",
                "uuid": "u",
                "backingFile": "b",
                "thumbprint": "t",
                "secretRef": "s",
            }
        },
        storage=STORAGE,
        checkpoints=[{"previous": "", "current": "snap-1"}],
    )
    warmer = copy.deepcopy(warm)
    warmer["spec"]["checkpoints"].append({"previous": "snap-1", "current": "snap-2"})
    warmer["spec"]["finalCheckpoint"] = True
    assert validate_datavolume(warmer, warm) == []


def test_registry_declares_datavolume_like_the_crd() -> None:
    kind = default_registry().lookup("cdi.kubevirt.io", "v1beta1", "datavolumes")
    assert kind is not None
    assert kind.short_names == ("dv", "dvs") and kind.status_subresource and kind.namespaced
    assert [c.name for c in kind.table_columns()] == ["Name", "Phase", "Progress", "Restarts", "Age"]
    assert kind.group_resource == "datavolumes.cdi.kubevirt.io"
    assert kind.qualified_kind == "DataVolume.cdi.kubevirt.io"
    props = kind.schema["properties"]["spec"]["properties"]  # type: ignore[index]
    assert set(props["source"]["properties"]) >= {
        "http",
        "registry",
        "s3",
        "upload",
        "blank",
        "pvc",
        "snapshot",
    }
    assert props["source"]["properties"]["http"]["properties"]["checksum"]["type"] == "string"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1Gi", 2**30),
        ("500Mi", 500 * 2**20),
        ("1G", 10**9),
        ("1.5Gi", 3 * 2**29),
        ("100", 100),
        ("1e3", 1000),
        ("10k", 10_000),
        ("0.5Ki", 512),
    ],
)
def test_quantities(text: str, value: int) -> None:
    assert quantity_bytes(text) == value


@pytest.mark.parametrize("text", ["", "1GB", "Gi", "1 Gi", "abc", "1.2.3"])
def test_bad_quantities(text: str) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(text)
