#ifndef WARDEN_CLIBVIRT_LAZY_H
#define WARDEN_CLIBVIRT_LAZY_H

/// Why libvirt could not be loaded (dlopen's message), or NULL when it is loaded or was
/// never needed. The libvirt functions Warden calls load libvirt.so.0 on first use.
const char *warden_libvirt_load_error(void);

#endif
