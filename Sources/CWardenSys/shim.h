#ifndef WARDEN_SYS_SHIM_H
#define WARDEN_SYS_SHIM_H
#include <sys/prctl.h>
#include <sys/resource.h>

/* prctl(2) is variadic, which Swift cannot call: this fixed-arity wrapper makes the process
   non-dumpable (no core file, no ptrace by other processes of the same user) and sets its core
   size limit, which children such as QEMU inherit, to zero. Returns 0 when both worked. */
static inline int warden_disable_core_dumps(void) {
    struct rlimit none = { 0, 0 };
    int a = prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    int b = setrlimit(RLIMIT_CORE, &none);
    return (a == 0 && b == 0) ? 0 : -1;
}
#endif
