"""OpenAPI v3 schema of the DataVolume (field for field CDI's v1beta1 types).

Served by the API server under /openapi/v3 so that `kubectl explain dv` and `kubectl apply
--validate` work. Helpers keep the declaration close to the Go types it mirrors.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def s(desc: str = "", **kw: Any) -> Schema:
    return {"type": "string", "description": desc, **kw}


def b(desc: str = "") -> Schema:
    return {"type": "boolean", "description": desc}


def i(desc: str = "") -> Schema:
    return {"type": "integer", "format": "int32", "description": desc}


def o(desc: str = "", required: list[str] | None = None, **props: Schema) -> Schema:
    out: Schema = {"type": "object", "description": desc, "properties": props}
    if required:
        out["required"] = required
    return out


def arr(items: Schema, desc: str = "") -> Schema:
    return {"type": "array", "description": desc, "items": items}


def qty(desc: str = "") -> Schema:
    return {
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "x-kubernetes-int-or-string": True,
        "description": desc,
    }


def str_map(desc: str = "") -> Schema:
    return {"type": "object", "description": desc, "additionalProperties": {"type": "string"}}


def _label_selector() -> Schema:
    req = o(
        "A label selector requirement.",
        ["key", "operator"],
        key=s("The label key."),
        operator=s("In, NotIn, Exists or DoesNotExist."),
        values=arr(s(), "Values for In and NotIn."),
    )
    return o(
        "A label query over volumes to consider for binding.",
        matchExpressions=arr(req, "A list of label selector requirements."),
        matchLabels=str_map("A map of {key,value} pairs."),
    )


def _typed_ref(desc: str) -> Schema:
    return o(
        desc,
        ["kind", "name"],
        apiGroup=s("The group for the resource being referenced."),
        kind=s("The type of resource being referenced."),
        name=s("The name of resource being referenced."),
        namespace=s("The namespace of resource being referenced."),
    )


def _resources(desc: str) -> Schema:
    return o(
        desc,
        limits={"type": "object", "additionalProperties": qty(), "description": "Maximum resources."},
        requests={
            "type": "object",
            "additionalProperties": qty(),
            "description": "Minimum resources required; `storage` is the volume size.",
        },
    )


def _claim_spec(desc: str) -> Schema:
    return o(
        desc,
        accessModes=arr(s(), "The desired access modes the volume should have."),
        dataSource=_typed_ref("An existing object to populate the volume from."),
        dataSourceRef=_typed_ref("The object from which to populate the volume with data."),
        resources=_resources("The minimum resources the volume should have."),
        selector=_label_selector(),
        storageClassName=s("Name of the StorageClass required by the claim."),
        volumeMode=s("Filesystem or Block.", enum=["Filesystem", "Block"]),
        volumeName=s("The binding reference to the PersistentVolume backing this claim."),
    )


def _secret_ref(what: str) -> Schema:
    return s(f"A reference to a Secret holding {what}.")


def _sources() -> Schema:
    cert = s(
        "A ConfigMap reference containing a Certificate Authority (CA) public key, "
        "and a base64 encoded pem certificate."
    )
    return o(
        "Source is the src of the data for the requested DataVolume.",
        http=o(
            "DataVolumeSourceHTTP can be either an http or https endpoint, with an optional basic auth user "
            "name and password, and an optional configmap containing additional CAs.",
            ["url"],
            url=s("URL is the URL of the http(s) endpoint."),
            secretRef=_secret_ref("accessKeyId (user name) and secretKey (password)"),
            certConfigMap=cert,
            extraHeaders=arr(
                s(), "A list of strings containing extra headers to include with HTTP transfer requests."
            ),
            secretExtraHeaders=arr(
                s(), "Secrets containing extra headers (e.g. auth tokens) for HTTP transfer requests."
            ),
            checksum=s(
                "Checksum is the expected checksum of the downloaded data, as <algorithm>:<hex digest> "
                "(md5, sha1, sha256 or sha512); the import fails when it does not match."
            ),
        ),
        s3=o(
            "DataVolumeSourceS3 provides the parameters to create a Data Volume from an S3 source.",
            ["url"],
            url=s("URL is the url of the S3 source."),
            secretRef=_secret_ref("the S3 credentials"),
            certConfigMap=cert,
        ),
        gcs=o(
            "DataVolumeSourceGCS provides the parameters to create a Data Volume from a GCS source.",
            ["url"],
            url=s("URL is the url of the GCS source."),
            secretRef=_secret_ref("the GCS credentials"),
        ),
        registry=o(
            "DataVolumeSourceRegistry provides the parameters to create a Data Volume "
            "from a registry source.",
            url=s("URL is the url of the registry source (starting with docker:// or oci-archive://)."),
            imageStream=s("ImageStream is the name of image stream for import."),
            pullMethod=s(
                'PullMethod can be either "pod" (default import) or "node" (node docker cache based import).'
            ),
            secretRef=_secret_ref("the registry credentials"),
            certConfigMap=cert,
            platform=o(
                "Platform describes the minimum runtime requirements of the image.",
                architecture=s("Architecture specifies the image target CPU architecture."),
            ),
        ),
        pvc=o(
            "DataVolumeSourcePVC provides the parameters to create a Data Volume from an existing PVC.",
            ["namespace", "name"],
            namespace=s("The namespace of the source PVC."),
            name=s("The name of the source PVC."),
        ),
        snapshot=o(
            "DataVolumeSourceSnapshot provides the parameters to create a Data Volume "
            "from an existing VolumeSnapshot.",
            ["namespace", "name"],
            namespace=s("The namespace of the source VolumeSnapshot."),
            name=s("The name of the source VolumeSnapshot."),
        ),
        upload=o(
            "DataVolumeSourceUpload provides the parameters to create a Data Volume by uploading the source."
        ),
        blank=o("DataVolumeBlankImage provides the parameters to create a new raw blank image for the PVC."),
        imageio=o(
            "DataVolumeSourceImageIO provides the parameters to create a Data Volume from an imageio source.",
            ["url", "diskId"],
            url=s("URL is the URL of the ovirt-engine."),
            diskId=s("DiskID provides id of a disk to be imported."),
            secretRef=_secret_ref("the ovirt-engine credentials"),
            certConfigMap=cert,
            insecureSkipVerify=b("InsecureSkipVerify is a flag to skip certificate verification."),
        ),
        vddk=o(
            "DataVolumeSourceVDDK provides the parameters to create a Data Volume from a Vmware source.",
            url=s("URL is the URL of the vCenter or ESXi host with the VM to migrate."),
            uuid=s(
                "UUID is the UUID of the virtual machine that the backing file is attached to "
                "in vCenter/ESXi."
            ),
            backingFile=s("BackingFile is the path to the virtual hard disk to migrate from vCenter/ESXi."),
            thumbprint=s("Thumbprint is the certificate thumbprint of the vCenter or ESXi host."),
            secretRef=_secret_ref("the vCenter credentials"),
            initImageURL=s(
                "InitImageURL is an optional URL to an image containing an extracted VDDK library."
            ),
            extraArgs=s(
                "ExtraArgs is a reference to a ConfigMap containing extra arguments to pass "
                "directly to the VDDK library."
            ),
        ),
    )


def condition_schema(desc: str, type_desc: str = "The type of the condition.") -> Schema:
    """One entry of a CDI kind's ``status.conditions``."""
    return o(
        desc,
        ["status", "type"],
        type=s(type_desc),
        status=s("True, False or Unknown."),
        lastHeartbeatTime=s(format="date-time"),
        lastTransitionTime=s(format="date-time"),
        reason=s("A machine-readable reason for the condition."),
        message=s("A human-readable message."),
    )


def kind_schema(desc: str, spec: Schema, status: Schema) -> Schema:
    """The whole-object schema of a CDI kind: apiVersion, kind, metadata, its spec and status."""
    return o(
        desc,
        ["spec"],
        apiVersion=s("APIVersion defines the versioned schema of this representation of an object."),
        kind=s("Kind is a string value representing the REST resource this object represents."),
        metadata={"type": "object", "description": "Standard object's metadata."},
        spec=spec,
        status=status,
    )


def datavolume_schema() -> Schema:
    """The whole-object schema of a v1beta1 DataVolume."""
    spec = o(
        "DataVolumeSpec defines the DataVolume type specification.",
        source=_sources(),
        sourceRef=o(
            "SourceRef is an indirect reference to the source of data for the requested DataVolume.",
            ["kind", "name"],
            kind=s('The kind of the source reference, currently only "DataSource" is supported.'),
            namespace=s("The namespace of the source reference, defaults to the DataVolume namespace."),
            name=s("The name of the source reference."),
        ),
        pvc=_claim_spec("PVC is the PVC specification."),
        storage=_claim_spec(
            "Storage is the requested storage specification; unlike pvc, access modes, volume "
            "mode and (when cloning) size are detected when omitted."
        ),
        priorityClassName=s("PriorityClassName for Importer, Cloner and Uploader pod."),
        contentType=s('DataVolumeContentType options: "kubevirt", "archive".', enum=["kubevirt", "archive"]),
        checkpoints=arr(
            o(
                "DataVolumeCheckpoint defines a stage in a warm migration.",
                ["current", "previous"],
                current=s("Current is the identifier of the snapshot created for this checkpoint."),
                previous=s("Previous is the identifier of the snapshot from the previous checkpoint."),
            ),
            "Checkpoints is a list of DataVolumeCheckpoints, representing stages in a multistage import.",
        ),
        finalCheckpoint=b(
            "FinalCheckpoint indicates whether the current DataVolumeCheckpoint is the final checkpoint."
        ),
        preallocation=b(
            "Preallocation controls whether storage for DataVolumes should be allocated in advance."
        ),
    )
    status = o(
        "DataVolumeStatus contains the current status of the DataVolume.",
        claimName=s("ClaimName is the name of the underlying PVC used by the DataVolume."),
        phase=s("Phase is the current phase of the data volume."),
        progress=s(
            'DataVolumeProgress is the current progress of the DataVolume transfer operation, e.g. "42.00%".'
        ),
        restartCount=i(
            "RestartCount is the number of times the pod populating the DataVolume has restarted."
        ),
        conditions=arr(condition_schema("DataVolumeCondition represents the state of a data volume condition.",
                                        "Bound, Ready or Running.")),
    )
    return kind_schema(
        "DataVolume is an abstraction on top of PersistentVolumeClaims to allow easy population of those "
        "PersistentVolumeClaims with relation to VirtualMachines.",
        spec, status)
