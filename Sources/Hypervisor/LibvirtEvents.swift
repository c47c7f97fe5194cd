import CLibvirt
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import WardenCore

/// A domain lifecycle event as libvirt reports it (`VIR_DOMAIN_EVENT_ID_LIFECYCLE`).
public struct LibvirtLifecycleEvent: Sendable, Equatable {
    public var domain: String
    public var uuid: UUID?
    /// `virDomainEventType` (0 defined … 8 crashed).
    public var event: Int32
    /// The event's detail (e.g. for started: 0 booted, 1 migrated, 2 restored, 3 from snapshot).
    public var detail: Int32
    /// The domain's XML at the time of the event (not for undefine).
    public var xml: String?
    /// For ``deviceAdded``: the alias of the device libvirt attached (`net1`).
    public var device: String?

    /// Not a lifecycle event: a device was hot-plugged (`VIR_DOMAIN_EVENT_ID_DEVICE_ADDED`).
    public static let deviceAdded: Int32 = 100

    public init(domain: String, uuid: UUID?, event: Int32, detail: Int32, xml: String? = nil, device: String? = nil) {
        self.domain = domain; self.uuid = uuid; self.event = event; self.detail = detail; self.xml = xml; self.device = device
    }

    static let eventNames = ["defined", "undefined", "started", "suspended", "resumed", "stopped", "shutdown", "pmsuspended", "crashed"]
    static let detailNames: [Int32: [String]] = [
        0: ["added", "updated", "renamed", "from-snapshot"],
        1: ["removed", "renamed"],
        2: ["booted", "migrated", "restored", "from-snapshot", "wakeup"],
        3: ["paused", "migrated", "ioerror", "watchdog", "restored", "from-snapshot", "api-error", "postcopy", "postcopy-failed"],
        4: ["unpaused", "migrated", "from-snapshot", "postcopy", "postcopy-failed"],
        5: ["shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from-snapshot"],
        6: ["finished", "guest", "host"],
        7: ["memory", "disk"],
        8: ["panicked", "crashloaded"],
    ]

    /// `started/from-snapshot`.
    public var name: String {
        if event == Self.deviceAdded { return "device-added/\(device ?? "?")" }
        let e = Int(event)
        let en = e >= 0 && e < Self.eventNames.count ? Self.eventNames[e] : "event-\(event)"
        let dn = Self.detailNames[event].flatMap { Int(detail) >= 0 && Int(detail) < $0.count ? $0[Int(detail)] : nil } ?? "detail-\(detail)"
        return "\(en)/\(dn)"
    }
}

/// Follows domain lifecycle events through the libvirt C API: the default event loop
/// (`virEventRegisterDefaultImpl`, run by `virEventRunDefaultImpl` on the calling thread) and one
/// `virConnectDomainEventRegisterAny` lifecycle callback.
public final class LibvirtEventWatcher: @unchecked Sendable {
    /// Called on the event-loop thread for every event, in order.
    public typealias Handler = (LibvirtLifecycleEvent) -> Void

    private final class Box {
        let handler: Handler
        init(_ handler: @escaping Handler) { self.handler = handler }
    }

    private static let registerLoop: Void = {
        _ = virEventRegisterDefaultImpl()
    }()

    private let lock = NSLock()
    private var stopRequested = false

    public init() {}

    /// Asks `run` to return (from any thread); it does within a second.
    public func stop() { lock.withLock { stopRequested = true } }
    private var shouldStop: Bool { lock.withLock { stopRequested } }

    static func lastError() -> String { libvirtLastError() }

    /// Called for a hot-plugged device; false asks the watcher to pause the domain (its new
    /// device could not be brought under its network state: fail closed).
    public typealias DeviceHandler = (LibvirtLifecycleEvent) -> Bool

    private final class DeviceBox {
        let handler: DeviceHandler
        init(_ handler: @escaping DeviceHandler) { self.handler = handler }
    }

    /// Connects to `uri`, calls `ready` once the callbacks are registered, then delivers events to
    /// `handler` (and hot-plugged devices to `deviceAdded`) until ``stop()`` is called or the
    /// connection closes.
    public func run(uri: String, ready: () -> Void = {}, deviceAdded: DeviceHandler? = nil, handler: @escaping Handler) throws {
        _ = Self.registerLoop
        guard let conn = virConnectOpen(uri) else {
            throw WardenError(.unavailable, "cannot connect to libvirt at \(uri): \(Self.lastError())")
        }
        defer { virConnectClose(conn) }
        _ = virConnectSetKeepAlive(conn, 5, 3)
        let opaque = Unmanaged.passRetained(Box(handler)).toOpaque()
        let callback: @convention(c) (virConnectPtr?, virDomainPtr?, Int32, Int32, UnsafeMutableRawPointer?) -> Int32 = { _, dom, event, detail, opaque in
            guard let dom, let opaque else { return 0 }
            let box = Unmanaged<Box>.fromOpaque(opaque).takeUnretainedValue()
            let name = virDomainGetName(dom).map { String(cString: $0) } ?? "?"
            var buf = [CChar](repeating: 0, count: 64)
            let uuid: UUID? = virDomainGetUUIDString(dom, &buf) == 0 ? UUID(uuidString: String(cString: buf)) : nil
            var xml: String? = nil
            if event != 1, let p = virDomainGetXMLDesc(dom, 0) {
                xml = String(cString: p)
                Glibc.free(p)
            }
            box.handler(LibvirtLifecycleEvent(domain: name, uuid: uuid, event: event, detail: detail, xml: xml))
            return 0
        }
        let generic = unsafeBitCast(callback, to: virConnectDomainEventGenericCallback.self)
        let freeBox: @convention(c) (UnsafeMutableRawPointer?) -> Void = { p in
            if let p { Unmanaged<Box>.fromOpaque(p).release() }
        }
        let id = virConnectDomainEventRegisterAny(conn, nil, Int32(VIR_DOMAIN_EVENT_ID_LIFECYCLE.rawValue), generic, opaque, freeBox)
        guard id >= 0 else {
            Unmanaged<Box>.fromOpaque(opaque).release()
            throw WardenError(.unavailable, "cannot register for domain events: \(Self.lastError())")
        }
        defer { _ = virConnectDomainEventDeregisterAny(conn, id) }
        var deviceID: Int32 = -1
        if let deviceAdded {
            let dOpaque = Unmanaged.passRetained(DeviceBox(deviceAdded)).toOpaque()
            let dCallback: @convention(c) (virConnectPtr?, virDomainPtr?, UnsafePointer<CChar>?, UnsafeMutableRawPointer?) -> Void = { _, dom, alias, opaque in
                guard let dom, let opaque else { return }
                let box = Unmanaged<DeviceBox>.fromOpaque(opaque).takeUnretainedValue()
                let name = virDomainGetName(dom).map { String(cString: $0) } ?? "?"
                var buf = [CChar](repeating: 0, count: 64)
                let uuid: UUID? = virDomainGetUUIDString(dom, &buf) == 0 ? UUID(uuidString: String(cString: buf)) : nil
                var xml: String? = nil
                if let p = virDomainGetXMLDesc(dom, 0) {
                    xml = String(cString: p)
                    Glibc.free(p)
                }
                let event = LibvirtLifecycleEvent(domain: name, uuid: uuid, event: LibvirtLifecycleEvent.deviceAdded, detail: 0, xml: xml,
                                                  device: alias.map { String(cString: $0) })
                if !box.handler(event) { _ = virDomainSuspend(dom) }
            }
            let dFree: @convention(c) (UnsafeMutableRawPointer?) -> Void = { p in
                if let p { Unmanaged<DeviceBox>.fromOpaque(p).release() }
            }
            deviceID = virConnectDomainEventRegisterAny(conn, nil, Int32(VIR_DOMAIN_EVENT_ID_DEVICE_ADDED.rawValue),
                                                        unsafeBitCast(dCallback, to: virConnectDomainEventGenericCallback.self), dOpaque, dFree)
            guard deviceID >= 0 else {
                Unmanaged<DeviceBox>.fromOpaque(dOpaque).release()
                throw WardenError(.unavailable, "cannot register for device events: \(Self.lastError())")
            }
        }
        defer { if deviceID >= 0 { _ = virConnectDomainEventDeregisterAny(conn, deviceID) } }
        // A periodic timer wakes the loop so that stop() is noticed.
        let tick: @convention(c) (Int32, UnsafeMutableRawPointer?) -> Void = { _, _ in }
        let timer = virEventAddTimeout(500, tick, nil, nil)
        defer { if timer >= 0 { _ = virEventRemoveTimeout(timer) } }
        ready()
        while !shouldStop {
            if virEventRunDefaultImpl() < 0 {
                throw WardenError(.unavailable, "libvirt event loop failed: \(Self.lastError())")
            }
            if virConnectIsAlive(conn) != 1 {
                throw WardenError(.unavailable, "the libvirt connection to \(uri) closed")
            }
        }
    }
}
