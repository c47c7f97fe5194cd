import CLibvirt

/// Enforcement and lifecycle beside the hypervisor: the QEMU launcher and QMP client,
/// the libvirt hook protocol and event watcher, generation IDs and the guest state channel.
public enum Hypervisor {}
