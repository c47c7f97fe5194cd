import Foundation

/// The one "wait until" of the tests: polls `check` every `interval` seconds until it holds,
/// and throws a ``TestGuestError`` naming `what` after `timeout` seconds. Bounded, so a test
/// that waits for a guest, a daemon or a file never hangs CI.
public func waitUntil(_ what: String, timeout: TimeInterval = 240, interval: TimeInterval = 0.25,
                      _ check: () throws -> Bool) throws {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try check() { return }
        usleep(useconds_t(interval * 1_000_000))
    }
    throw TestGuestError("timed out after \(Int(timeout)) s waiting for \(what)")
}
