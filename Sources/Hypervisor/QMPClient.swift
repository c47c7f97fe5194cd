import Foundation
import WardenCore

/// A minimal QEMU Machine Protocol client: JSON objects, one per line, over a Unix socket.
///
/// ```
/// S: {"QMP": {"version": …, "capabilities": […]}}      greeting
/// C: {"execute": "qmp_capabilities"}                    leave negotiation mode
/// S: {"return": {}}
/// C: {"execute": "query-status", "id": 1}
/// S: {"event": "…", "data": …, "timestamp": …}          events may come at any time
/// S: {"return": {...}, "id": 1}   or   {"error": {"class": "…", "desc": "…"}, "id": 1}
/// ```
///
/// Synchronous: one command at a time; events that arrive while waiting are kept in `events`.
public final class QMPClient: @unchecked Sendable {
    let socket: UnixLineSocket
    private var nextID = 1
    /// Events received so far (name and data), oldest first.
    public private(set) var events: [(name: String, data: [String: Any])] = []
    /// QEMU's version from the greeting, e.g. "7.2.22".
    public private(set) var version: String = ""

    /// Connects, reads the greeting and negotiates capabilities.
    public init(path: String, timeout: TimeInterval = 10) throws {
        socket = try UnixLineSocket(connect: path, timeout: timeout)
        socket.setReadTimeout(timeout)
        guard let greeting = try readMessage(), let qmp = greeting["QMP"] as? [String: Any] else {
            throw WardenError(.unavailable, "no QMP greeting", file: path)
        }
        if let v = (qmp["version"] as? [String: Any])?["qemu"] as? [String: Any] {
            version = "\(v["major"] ?? 0).\(v["minor"] ?? 0).\(v["micro"] ?? 0)"
        }
        _ = try execute("qmp_capabilities")
    }

    /// The error QEMU returned for a command.
    public struct CommandError: Error, CustomStringConvertible {
        public var command: String
        public var errorClass: String
        public var desc: String
        public var description: String { "QMP \(command) failed: \(errorClass): \(desc)" }
    }

    func readMessage() throws -> [String: Any]? {
        while true {
            let next: String?
            do { next = try socket.readLine() } catch is UnixLineSocket.SocketTimeout {
                throw WardenError(.unavailable, "timed out waiting for QEMU", file: socket.path)
            }
            guard let line = next else { return nil }
            if line.isEmpty { continue }
            guard let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                throw WardenError(.corrupt, "QMP sent a line that is not a JSON object", file: socket.path)
            }
            return obj
        }
    }

    /// Runs `command` and returns its `return` value (decoded JSON), or throws ``CommandError``.
    /// `timeout` bounds the wait for the answer.
    @discardableResult
    public func execute(_ command: String, _ arguments: [String: Any]? = nil, timeout: TimeInterval? = nil) throws -> Any {
        let id = nextID
        nextID += 1
        var msg: [String: Any] = ["execute": command, "id": id]
        if let arguments { msg["arguments"] = arguments }
        let data = try JSONSerialization.data(withJSONObject: msg, options: [.sortedKeys])
        try socket.write(Array(data) + [0x0A])
        if let timeout { socket.setReadTimeout(timeout) }
        while true {
            guard let m = try readMessage() else {
                throw WardenError(.unavailable, "QEMU closed the QMP socket during \(command)", file: socket.path)
            }
            if let name = m["event"] as? String {
                events.append((name, m["data"] as? [String: Any] ?? [:]))
                continue
            }
            if let mid = m["id"] as? Int, mid != id { continue }
            if let e = m["error"] as? [String: Any] {
                throw CommandError(command: command, errorClass: e["class"] as? String ?? "?", desc: e["desc"] as? String ?? "")
            }
            if let r = m["return"] { return r }
        }
    }

    /// Waits up to `timeout` for an event named `name` (already received ones count); returns its data.
    public func waitForEvent(_ name: String, timeout: TimeInterval) throws -> [String: Any]? {
        if let i = events.firstIndex(where: { $0.name == name }) { return events.remove(at: i).data }
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            socket.setReadTimeout(max(0.05, deadline.timeIntervalSinceNow))
            let m: [String: Any]?
            do { m = try readMessage() } catch let e as WardenError where e.code == .unavailable { return nil }
            guard let m else { return nil }
            if let n = m["event"] as? String {
                if n == name { return m["data"] as? [String: Any] ?? [:] }
                events.append((n, m["data"] as? [String: Any] ?? [:]))
            }
        }
        return nil
    }

    /// Runs a job-starting command (e.g. `snapshot-save`) and waits for the job to conclude.
    /// Throws when the job reports an error.
    public func runJob(_ command: String, _ arguments: [String: Any], jobID: String, timeout: TimeInterval) throws {
        try execute(command, arguments)
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let jobs = try execute("query-jobs") as? [[String: Any]] ?? []
            if let job = jobs.first(where: { $0["id"] as? String == jobID }),
               let status = job["status"] as? String, status == "concluded" || status == "null" {
                let error = job["error"] as? String
                _ = try? execute("job-dismiss", ["id": jobID])
                if let error { throw CommandError(command: command, errorClass: "JobFailed", desc: error) }
                return
            }
            usleep(100_000)
        }
        throw WardenError(.unavailable, "QMP job \(jobID) (\(command)) did not finish within \(Int(timeout)) s", file: socket.path)
    }
}
