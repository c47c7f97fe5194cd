/// A small thread-safe cache of at most `capacity` entries for parsed metadata (blocks,
/// inodes, extent lists, FAT sectors). When full it starts over: hostile images cannot make
/// it grow, and the readers' access patterns refill what they use.
public final class BoundedCache<Key: Hashable, Value>: @unchecked Sendable {
    // @unchecked: the dictionary is only touched inside `entries`' lock.
    private let entries: Locked<[Key: Value]>
    public let capacity: Int

    public init(capacity: Int) {
        precondition(capacity > 0)
        self.capacity = capacity
        entries = Locked([:])
    }

    public subscript(key: Key) -> Value? {
        entries.withLock { $0[key] }
    }

    public func put(_ key: Key, _ value: Value) {
        entries.withLock {
            if $0.count >= capacity { $0.removeAll(keepingCapacity: true) }
            $0[key] = value
        }
    }

    public var count: Int { entries.withLock { $0.count } }
}

/// A thread-safe list of distinct warnings, capped: past `limit` one line says the rest were
/// suppressed. Filesystem readers report damage they can read around through one of these.
public final class WarningLog: @unchecked Sendable {
    private struct State {
        var items: [String] = []
        var seen = Set<String>()
        var suppressed = false
    }
    private let state = Locked(State())
    public let limit: Int
    /// The line added once the cap is reached (`ext4: further warnings suppressed`).
    public let suppressedLine: String

    public init(limit: Int, suppressedLine: String) {
        self.limit = limit
        self.suppressedLine = suppressedLine
    }

    public func warn(_ message: String) {
        state.withLock { s in
            guard !s.seen.contains(message) else { return }
            if s.items.count < limit {
                s.seen.insert(message)
                s.items.append(message)
            } else if !s.suppressed {
                s.suppressed = true
                s.items.append(suppressedLine)
            }
        }
    }

    public var all: [String] { state.withLock { $0.items } }
}
