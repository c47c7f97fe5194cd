import HypervisorHook
#if canImport(Glibc)
import Glibc
#endif

// libvirt's qemu hook, without the rest of warden: see LibvirtHookProcess and docs/libvirt.md.
exit(LibvirtHookProcess.main(Array(CommandLine.arguments.dropFirst())))
