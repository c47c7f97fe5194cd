// libvirt, loaded on first use.
//
// Linking libvirt puts it and some forty libraries it needs (GLib, GnuTLS, curl, Kerberos…)
// into every warden process: about 11 ms of loader work before main, in every command,
// including the ones that never talk to libvirt (inspect, export, the policy hook). Instead
// the CLibvirt module is not linked, and each libvirt function Warden calls is defined here
// with libvirt's own prototype: the first call dlopens libvirt.so.0 and looks the symbol up.
// Without libvirt installed a call fails as libvirt reports failure (NULL or -1), and
// warden_libvirt_load_error() says why.
#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include "CLibvirtLazy.h"

static void *library;
static const char *load_error;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void load(void) {
    library = dlopen("libvirt.so.0", RTLD_NOW | RTLD_LOCAL);
    if (!library) load_error = dlerror();
}

static void *symbol(const char *name) {
    pthread_once(&once, load);
    return library ? dlsym(library, name) : NULL;
}

const char *warden_libvirt_load_error(void) { return load_error; }

// One definition per function: resolve once (a racing first call resolves twice, harmlessly).
#define LAZY(ret, name, params, args, failed) \
    ret name params { \
        static ret (*volatile fn) params; \
        if (!fn) fn = (ret (*) params) symbol(#name); \
        if (!fn) return failed; \
        return fn args; \
    }

LAZY(virConnectPtr, virConnectOpen, (const char *name), (name), NULL)
LAZY(virConnectPtr, virConnectOpenReadOnly, (const char *name), (name), NULL)
LAZY(int, virConnectClose, (virConnectPtr conn), (conn), -1)
LAZY(int, virConnectIsAlive, (virConnectPtr conn), (conn), -1)
LAZY(int, virConnectSetKeepAlive, (virConnectPtr conn, int interval, unsigned int count), (conn, interval, count), -1)
LAZY(int, virConnectDomainEventRegisterAny,
     (virConnectPtr conn, virDomainPtr dom, int eventID, virConnectDomainEventGenericCallback cb, void *opaque, virFreeCallback freecb),
     (conn, dom, eventID, cb, opaque, freecb), -1)
LAZY(int, virConnectDomainEventDeregisterAny, (virConnectPtr conn, int callbackID), (conn, callbackID), -1)
LAZY(virDomainPtr, virDomainLookupByName, (virConnectPtr conn, const char *name), (conn, name), NULL)
LAZY(virDomainPtr, virDomainLookupByUUIDString, (virConnectPtr conn, const char *uuid), (conn, uuid), NULL)
LAZY(char *, virDomainGetXMLDesc, (virDomainPtr domain, unsigned int flags), (domain, flags), NULL)
LAZY(int, virDomainIsActive, (virDomainPtr dom), (dom), -1)
LAZY(int, virDomainGetUUIDString, (virDomainPtr domain, char *buf), (domain, buf), -1)
LAZY(const char *, virDomainGetName, (virDomainPtr domain), (domain), NULL)
LAZY(int, virDomainFree, (virDomainPtr domain), (domain), -1)
LAZY(int, virDomainSuspend, (virDomainPtr domain), (domain), -1)
LAZY(int, virDomainCreate, (virDomainPtr domain), (domain), -1)
LAZY(virSecretPtr, virSecretDefineXML, (virConnectPtr conn, const char *xml, unsigned int flags), (conn, xml, flags), NULL)
LAZY(virSecretPtr, virSecretLookupByUUIDString, (virConnectPtr conn, const char *uuid), (conn, uuid), NULL)
LAZY(int, virSecretSetValue, (virSecretPtr secret, const unsigned char *value, size_t value_size, unsigned int flags),
     (secret, value, value_size, flags), -1)
LAZY(int, virSecretUndefine, (virSecretPtr secret), (secret), -1)
LAZY(int, virSecretFree, (virSecretPtr secret), (secret), -1)
LAZY(virErrorPtr, virGetLastError, (void), (), NULL)
LAZY(int, virEventRegisterDefaultImpl, (void), (), -1)
LAZY(int, virEventRunDefaultImpl, (void), (), -1)
LAZY(int, virEventAddTimeout, (int frequency, virEventTimeoutCallback cb, void *opaque, virFreeCallback ff), (frequency, cb, opaque, ff), -1)
LAZY(int, virEventRemoveTimeout, (int timer), (timer), -1)

void virSetErrorFunc(void *userData, virErrorFunc handler) {
    static void (*volatile fn)(void *, virErrorFunc);
    if (!fn) fn = (void (*)(void *, virErrorFunc)) symbol("virSetErrorFunc");
    if (fn) fn(userData, handler);
}
