import CLibvirt
// The hook protocol and the domain XML reader live in HypervisorHook (shared with the lean
// `warden-hook` executable); users of Hypervisor keep seeing them here.
@_exported import HypervisorHook

/// Enforcement and lifecycle beside the hypervisor: the QEMU launcher and QMP client,
/// the libvirt hook protocol and event watcher, generation IDs and the guest state channel.
public enum Hypervisor {}
