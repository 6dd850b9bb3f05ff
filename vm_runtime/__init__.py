"""Compact VM runtime: runs ``kubevirt.io/v1`` VirtualMachineInstances as qemu processes.

- ``vmi_spec``: the supported VMI subset, validated into typed objects (``SpecError`` names the field).
- ``qemu_cmd``: VMI -> qemu-system-x86_64 argv (``build_command``) and its files (``prepare``).
- ``accel``: KVM only after a real probe guest ran under it, else TCG (``choose_accel``).
- ``launcher``: ``python -m vm_runtime.launcher``, the process a launcher pod runs.
- ``supervisor``: follows one qemu over QMP and decides how its run ended.
- ``status``: the launcher's JSON status file (``read_status``).
- ``console``: attach a terminal to the guest serial console (``python -m vm_runtime.console``).
"""
