"""OpenAPI v3 schemas of ``kubevirt.io/v1`` VirtualMachine and VirtualMachineInstance (our subset).

Field names and descriptions follow KubeVirt's Go types for the part this runtime honours: CPU
topology, memory, machine type, firmware (BIOS or EFI), disks and cdroms, masquerade interfaces on
the pod network, and dataVolume, persistentVolumeClaim, cloudInitNoCloud and emptyDisk volumes.
KubeVirt's other fields of the same objects are declared by name only (`_also`), so manifests
written for a real cluster still apply (the fields are then ignored) while a misspelt field is an
unknown field, as KubeVirt's own CRD schema makes it. Only the object metadata and the statuses
(written by this runtime) keep ``x-kubernetes-preserve-unknown-fields``.
"""

from __future__ import annotations

from typing import Any

from cdi.api.dv_schema import Schema, arr, b, datavolume_schema, i, kind_schema, o, qty, s, str_map


def _open(schema: Schema) -> Schema:
    """Keep fields outside the subset (they apply to a real cluster and are ignored here)."""
    return {**schema, "x-kubernetes-preserve-unknown-fields": True}


def _also(schema: Schema, *names: str) -> Schema:
    """Declare KubeVirt fields outside the subset: any value is accepted and ignored."""
    props = dict(schema.get("properties") or {})
    for name in names:
        props.setdefault(name, {"description": "A KubeVirt field this runtime ignores.",
                                "x-kubernetes-preserve-unknown-fields": True})
    return {**schema, "properties": props}


def _condition(what: str) -> Schema:
    return o(
        f"{what} condition.",
        ["status", "type"],
        type=s("Ready, Paused, Failure, ..."),
        status=s("True, False or Unknown."),
        lastProbeTime={"type": "string", "format": "date-time", "nullable": True},
        lastTransitionTime={"type": "string", "format": "date-time", "nullable": True},
        reason=s("A machine-readable reason for the condition."),
        message=s("A human-readable message."),
    )


def _disk() -> Schema:
    bus = s("Bus indicates the type of disk device to emulate: virtio, sata or scsi.")
    return _also(o(
        "A disk of the domain, backed by the volume of the same name.",
        ["name"],
        name=s("Name is the device name; it must match the name of a volume."),
        disk=_also(o("Attach the volume as a disk.", bus=bus, readonly=b("ReadOnly.")), "pciAddress"),
        cdrom=o("Attach the volume as a cdrom.", bus=bus, readonly=b("ReadOnly; default true."),
                tray=s("Tray indicates if the tray of the device is open or closed.")),
        bootOrder=i("BootOrder is an integer value > 0, used to determine ordering of boot devices."),
        serial=s("Serial provides the ability to specify a serial number for the disk device."),
        cache=s("Cache specifies which kvm disk cache mode should be used: none, writethrough, writeback."),
        io=s("IO specifies which QEMU disk IO mode should be used: native, threads, default."),
    ), "lun", "dedicatedIOThread", "tag", "blockSize", "shareable", "errorPolicy")


def _domain() -> Schema:
    interface = _also(o(
        "An interface of the domain, connected to the network of the same name.",
        ["name"],
        name=s("Logical name of the interface as well as a reference to the associated network."),
        masquerade=o("Connect to the pod network with NAT (user-mode networking on the local node)."),
        model=s("Interface model: virtio, e1000, e1000e, rtl8139."),
        macAddress=s("Interface MAC address."),
        bootOrder=i("BootOrder is an integer value > 0."),
    ), "bridge", "slirp", "sriov", "binding", "passt", "macvtap", "ports", "pciAddress", "dhcpOptions", "tag",
        "acpiIndex", "state")
    return _also(o(
        "Specification of the virtual hardware.",
        cpu=_also(o("CPU topology.", cores=i("Cores per socket."), sockets=i("Sockets."),
                    threads=i("Threads per core."), model=s("CPU model, e.g. host-passthrough.")),
                  "features", "dedicatedCpuPlacement", "isolateEmulatorThread", "numa", "realtime", "maxSockets"),
        memory=_also(o("Memory of the guest.", guest=qty("Guest memory, e.g. 512Mi.")), "hugepages", "maxGuest"),
        resources=_also(o("Resources of the launcher pod.",
                          requests={"type": "object", "additionalProperties": qty()},
                          limits={"type": "object", "additionalProperties": qty()}), "overcommitGuestOverhead"),
        machine=o("Machine type.", type=s("QEMU machine type, e.g. q35.")),
        firmware=_also(o(
            "Firmware.",
            uuid=s("UUID reported by the VMI bios."),
            bootloader=o("Bootloader: exactly one of bios and efi.",
                         bios=o("Legacy BIOS.", useSerial=b("Show BIOS output on the serial console.")),
                         efi=o("UEFI (OVMF).", secureBoot=b("Secure boot; default true."),
                               persistent=b("Keep EFI variables across restarts."))),
        ), "serial", "kernelBoot", "acpi"),
        devices=_also(o(
            "Devices of the domain.",
            disks=arr(_disk(), "Disks, cdroms and luns attached to the vmi."),
            interfaces=arr(interface, "Interfaces attached to the vmi."),
            rng=o("Virtio random number generator."),
            autoattachPodInterface=b("Attach a masquerade interface on the pod network when none is given."),
        ), "useVirtioTransitional", "disableHotplug", "watchdog", "inputs", "autoattachGraphicsDevice",
            "autoattachSerialConsole", "autoattachMemBalloon", "autoattachInputDevice", "autoattachVSOCK",
            "blockMultiQueue", "networkInterfaceMultiqueue", "gpus", "downwardMetrics", "filesystems", "hostDevices",
            "clientPassthrough", "sound", "tpm", "logSerialConsole"),
    ), "clock", "features", "ioThreadsPolicy", "ioThreads", "chassis", "launchSecurity")


def _volume() -> Schema:
    return _also(o(
        "A named volume; exactly one source is set.",
        ["name"],
        name=s("Volume's name; must be a DNS_LABEL and unique within the vmi."),
        dataVolume=o("A DataVolume of the namespace (its PVC).", ["name"], name=s("Name of the DataVolume."),
                     hotpluggable=b("Hotpluggable.")),
        persistentVolumeClaim=_also(o("A PVC of the namespace.", ["claimName"],
                                      claimName=s("Name of the PVC."), readOnly=b("Mount read-only.")),
                                    "hotpluggable"),
        cloudInitNoCloud=_also(o(
            "A NoCloud cidata ISO built from these fields.",
            userData=s("NoCloud user data."), userDataBase64=s("NoCloud user data, base64."),
            networkData=s("NoCloud network data."), networkDataBase64=s("NoCloud network data, base64."),
        ), "userDataSecretRef", "networkDataSecretRef"),
        emptyDisk=o("A temporary sparse disk.", ["capacity"], capacity=qty("Capacity of the disk.")),
    ), "containerDisk", "ephemeral", "cloudInitConfigDrive", "hostDisk", "configMap", "secret", "downwardAPI",
        "serviceAccount", "sysprep", "memoryDump", "downwardMetrics")


def vmi_spec_schema() -> Schema:
    return _also(o(
        "VirtualMachineInstanceSpec is a description of a VirtualMachineInstance.",
        ["domain"],
        domain=_domain(),
        volumes=arr(_volume(), "List of volumes that can be mounted by disks belonging to the vmi."),
        networks=arr(_also(o("A network; only the pod network exists here.", ["name"], name=s("Network name."),
                             pod=_also(o("The default pod network.", vmNetworkCIDR=s("CIDR of the VM network.")),
                                       "vmIPv6NetworkCIDR")), "multus")),
        terminationGracePeriodSeconds=i("Grace period observed after signalling a VMI to stop."),
        hostname=s("Hostname of the vmi."),
        nodeSelector=str_map("NodeSelector is a selector which must be true for the vmi to fit on a node."),
        evictionStrategy=s("EvictionStrategy."),
    ), "priorityClassName", "affinity", "schedulerName", "tolerations", "topologySpreadConstraints", "startStrategy",
        "livenessProbe", "readinessProbe", "subdomain", "accessCredentials", "dnsPolicy", "dnsConfig", "architecture",
        "resourceClaims")


def _metadata() -> Schema:
    return _open({"type": "object", "description": "Standard object's metadata."})


def vmi_schema() -> Schema:
    status = _open(o(
        "Status is the high level overview of how the VirtualMachineInstance is doing.",
        phase=s("Phase: Pending, Scheduling, Scheduled, Running, Succeeded, Failed, Unknown."),
        reason=s("A brief CamelCase message indicating details about why the VMI is in this state."),
        nodeName=s("NodeName is the name where the VirtualMachineInstance is currently running."),
        conditions=arr(_condition("VirtualMachineInstance")),
        phaseTransitionTimestamps=arr(o("A phase and when it began.", phase=s(),
                                        phaseTransitionTimestamp=s(format="date-time"))),
        interfaces=arr(_open(o("Interface status.", name=s(), ipAddress=s(), ipAddresses=arr(s()),
                               mac=s())), "Interfaces of the running vmi."),
        activePods=str_map("ActivePods: pod UID to node name."),
        accelerator=o("Accelerator the launcher chose (cdi extension).", name=s("KVM or TCG."),
                      reason=s("Why this accelerator.")),
        launcherContainerImageVersion=s("The launcher image."),
    ))
    return kind_schema("VirtualMachineInstance is *the* VirtualMachineInstance Definition.", vmi_spec_schema(), status)


def vm_schema() -> Schema:
    dv_spec: Any = datavolume_schema()["properties"]["spec"]
    template = o(
        "Template is the direct specification of VirtualMachineInstance.",
        metadata=_metadata(),
        spec=vmi_spec_schema(),
    )
    spec = _also(o(
        "Spec contains the specification of VirtualMachineInstance created.",
        ["template"],
        running=b("Running controls whether the associated VirtualMachineInstance is created or not. "
                  "Deprecated: use runStrategy."),
        runStrategy=s("Running state: Always, Halted, Manual, RerunOnFailure, Once.",
                      enum=["Always", "Halted", "Manual", "RerunOnFailure", "Once"]),
        template=template,
        dataVolumeTemplates=arr(o("A DataVolume created with (and owned by) the VM.", ["spec"],
                                  apiVersion=s(), kind=s(), metadata=_metadata(), spec=dv_spec)),
    ), "instancetype", "preference", "updateVolumesStrategy")
    request = o("A start or stop request.", ["action"], action=s("Start or Stop."),
                uid=s("UID of the VMI the request is for."), data=str_map())
    status = _open(o(
        "Status holds the current state of the controller and brief information about its associated VMI.",
        printableStatus=s("Stopped, Provisioning, Starting, Running, Stopping, Terminating, CrashLoopBackOff, "
                          "DataVolumeError, ..."),
        created=b("Created indicates if the virtual machine is created in the cluster."),
        ready=b("Ready indicates if the virtual machine is running and ready."),
        runStrategy=s("RunStrategy tracks the last recorded RunStrategy used by the VM."),
        conditions=arr(_condition("VirtualMachine")),
        stateChangeRequests=arr(request, "StateChangeRequests indicates a list of actions to take."),
        startFailure=o("Back-off of a VM that fails to start.", retries=i(), consecutiveFailCount=i(),
                       lastFailedVMIUID=s(), retryAfterTimestamp=s(format="date-time")),
        desiredGeneration=i("The generation of the VM the controller saw."),
        observedGeneration=i("The generation observed by the VMI."),
    ))
    return kind_schema("VirtualMachine handles the VirtualMachineInstance that is supposed to be running.",
                       spec, status)
