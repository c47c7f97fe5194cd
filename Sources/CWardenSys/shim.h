#ifndef WARDEN_SYS_SHIM_H
#define WARDEN_SYS_SHIM_H
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

/* prctl(2) is variadic, which Swift cannot call: this fixed-arity wrapper makes the process
   non-dumpable (no core file, no ptrace by other processes of the same user) and sets its core
   size limit, which children such as QEMU inherit, to zero. Returns 0 when both worked. */
static inline int warden_disable_core_dumps(void) {
    struct rlimit none = { 0, 0 };
    int a = prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    int b = setrlimit(RLIMIT_CORE, &none);
    return (a == 0 && b == 0) ? 0 : -1;
}

/* Starts writeback of a file's dirty pages without waiting: sync_file_range(2) with
   SYNC_FILE_RANGE_WRITE (2), called through syscall(2) because glibc declares it only under
   _GNU_SOURCE. A later fsync then finds little left to write. Returns 0 or -1. */
static inline int warden_start_writeback(int fd) {
    return (int)syscall(SYS_sync_file_range, fd, (long long)0, (long long)0, 2u);
}
#endif
