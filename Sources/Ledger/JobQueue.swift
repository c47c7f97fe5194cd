import Foundation
import GRDB
import Storage
import WardenCore

/// A unit of fleet work in the job queue (docs/fleet.md, "Assessment as work on the database").
public struct Job: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable, CaseIterable {
        /// Inspect an image on its host and report its inventory (an agent's work).
        case scan
        /// Re-match one stored inventory against the advisories stored now (the server's work).
        case rescan
    }
    public enum State: String, Codable, Sendable, CaseIterable {
        case queued, leased, done, failed
    }
    public var id: Int64
    public var kind: Kind
    /// The host whose agent does it; nil for the server's own work.
    public var host: String?
    /// The image path (scan) or inventory key (rescan).
    public var target: String
    public var state: State
    /// Times it was handed out (a lease that expired counts).
    public var attempts: Int
    public var leaseOwner: String?
    public var leaseUntil: Date?
    public var createdAt: Date
    public var finishedAt: Date?
    /// What the worker said when it finished, or why it failed.
    public var result: String?

    public init(id: Int64, kind: Kind, host: String?, target: String, state: State, attempts: Int, leaseOwner: String?,
                leaseUntil: Date?, createdAt: Date, finishedAt: Date?, result: String?) {
        self.id = id; self.kind = kind; self.host = host; self.target = target; self.state = state; self.attempts = attempts
        self.leaseOwner = leaseOwner; self.leaseUntil = leaseUntil; self.createdAt = createdAt; self.finishedAt = finishedAt
        self.result = result
    }
}

/// The fleet's work queue, on the database engine (no queue of Warden's own).
///
/// **No job is lost or done twice.** A worker *claims* jobs with a lease; only the lease holder
/// can complete or fail a job, and only while it still holds it. A worker that dies leaves its
/// lease to expire, and the next claim hands the job to another worker (its attempts count);
/// the dead worker's late answer is refused. On PostgreSQL concurrent claims skip each other's
/// rows (`FOR UPDATE SKIP LOCKED`); on SQLite the write lock serialises them.
public protocol JobQueue: Sendable {
    /// Queues a job, unless the same (kind, host, target) is already queued or leased: then
    /// that job is returned with `created == false`.
    func enqueue(_ kind: Job.Kind, host: String?, target: String, at now: Date) throws -> (job: Job, created: Bool)
    /// Leases up to `limit` jobs for `host` (nil: the server's jobs), oldest first: queued ones,
    /// and leased ones whose lease ended before `now`.
    func claim(host: String?, worker: String, lease: TimeInterval, limit: Int, at now: Date) throws -> [Job]
    /// Marks the job done if `worker` still holds its lease; false otherwise (nothing changes).
    func complete(_ id: Int64, worker: String, result: String, at now: Date) throws -> Bool
    /// Gives the job back (queued again) if `worker` holds its lease, or marks it failed after
    /// ``JobQueueLimits/maxAttempts``; false when `worker` does not hold it.
    func fail(_ id: Int64, worker: String, reason: String, at now: Date) throws -> Bool
    func job(_ id: Int64) throws -> Job?
    /// Jobs, newest first, in one state or all.
    func jobs(state: Job.State?, limit: Int) throws -> [Job]
    /// Jobs per state.
    func depth() throws -> [Job.State: Int]
}

public enum JobQueueLimits {
    /// After this many attempts a failing job is marked failed instead of queued again.
    public static let maxAttempts = 5
    /// The longest lease a worker may ask for.
    public static let maxLease: TimeInterval = 3600

    /// Refuses malformed arguments before any SQL runs.
    public static func check(host: String?, target: String? = nil, worker: String? = nil, lease: TimeInterval? = nil, limit: Int? = nil) throws {
        if let host, !(1...253).contains(host.utf8.count) { throw WardenError(.invalidArgument, "a job's host is 1-253 bytes") }
        if let target, !(1...4096).contains(target.utf8.count) || target.contains("\0") {
            throw WardenError(.invalidArgument, "a job's target is 1-4096 bytes without NUL")
        }
        if let worker, !(1...256).contains(worker.utf8.count) { throw WardenError(.invalidArgument, "a worker name is 1-256 bytes") }
        if let lease, !(lease >= 1 && lease <= maxLease) { throw WardenError(.invalidArgument, "a lease is 1 s to 1 h") }
        if let limit, !(1...1000).contains(limit) { throw WardenError(.invalidArgument, "claim 1-1000 jobs at a time") }
    }
}

extension JobQueue {
    public func enqueue(_ kind: Job.Kind, host: String?, target: String) throws -> (job: Job, created: Bool) {
        try enqueue(kind, host: host, target: target, at: Date())
    }
}

/// The job queue in Warden's SQLite database (the embedded server's).
public struct SQLiteJobQueue: JobQueue {
    public let database: WardenDatabase
    public init(_ database: WardenDatabase) { self.database = database }

    static func us(_ d: Date) -> Int64 { LedgerTime.micros(d) }
    static func date(_ us: Int64) -> Date { LedgerTime.date(us) }

    static func job(_ r: Row, _ location: String) throws -> Job {
        guard let kind = Job.Kind(rawValue: r["kind"]), let state = Job.State(rawValue: r["state"]) else {
            throw WardenError(.corrupt, "a jobs row has an unknown kind or state", file: location)
        }
        let until: Int64? = r["lease_until_us"], finished: Int64? = r["finished_us"]
        return Job(id: r["id"], kind: kind, host: r["host"], target: r["target"], state: state, attempts: r["attempts"],
                   leaseOwner: r["lease_owner"], leaseUntil: until.map(date), createdAt: date(r["created_us"]),
                   finishedAt: finished.map(date), result: r["result"])
    }

    public func enqueue(_ kind: Job.Kind, host: String?, target: String, at now: Date) throws -> (job: Job, created: Bool) {
        try JobQueueLimits.check(host: host, target: target)
        return try database.write { db in
            if let r = try Row.fetchOne(db, sql: """
                SELECT * FROM jobs WHERE kind = ? AND host IS ? AND target = ? AND state IN ('queued', 'leased')
                """, arguments: [kind.rawValue, host, target]) {
                return (try Self.job(r, database.path), false)
            }
            try db.execute(sql: "INSERT INTO jobs (kind, host, target, state, attempts, created_us) VALUES (?, ?, ?, 'queued', 0, ?)",
                           arguments: [kind.rawValue, host, target, Self.us(now)])
            let r = try Row.fetchOne(db, sql: "SELECT * FROM jobs WHERE id = ?", arguments: [db.lastInsertedRowID])!
            return (try Self.job(r, database.path), true)
        }
    }

    public func claim(host: String?, worker: String, lease: TimeInterval, limit: Int, at now: Date) throws -> [Job] {
        try JobQueueLimits.check(host: host, worker: worker, lease: lease, limit: limit)
        let t = Self.us(now), until = Self.us(now + lease)
        return try database.write { db in
            let ids = try Int64.fetchAll(db, sql: """
                SELECT id FROM jobs WHERE host IS ? AND (state = 'queued' OR (state = 'leased' AND lease_until_us < ?))
                ORDER BY id LIMIT ?
                """, arguments: [host, t, limit])
            var out: [Job] = []
            for id in ids {
                try db.execute(sql: """
                    UPDATE jobs SET state = 'leased', lease_owner = ?, lease_until_us = ?, attempts = attempts + 1 WHERE id = ?
                    """, arguments: [worker, until, id])
                out.append(try Self.job(try Row.fetchOne(db, sql: "SELECT * FROM jobs WHERE id = ?", arguments: [id])!, database.path))
            }
            return out
        }
    }

    public func complete(_ id: Int64, worker: String, result: String, at now: Date) throws -> Bool {
        try database.write { db in
            try db.execute(sql: """
                UPDATE jobs SET state = 'done', finished_us = ?, result = ?, lease_until_us = NULL
                WHERE id = ? AND state = 'leased' AND lease_owner = ? AND lease_until_us >= ?
                """, arguments: [Self.us(now), String(result.prefix(4096)), id, worker, Self.us(now)])
            return db.changesCount == 1
        }
    }

    public func fail(_ id: Int64, worker: String, reason: String, at now: Date) throws -> Bool {
        try database.write { db in
            try db.execute(sql: """
                UPDATE jobs SET state = CASE WHEN attempts >= ? THEN 'failed' ELSE 'queued' END,
                       finished_us = CASE WHEN attempts >= ? THEN ? ELSE NULL END,
                       result = ?, lease_owner = NULL, lease_until_us = NULL
                WHERE id = ? AND state = 'leased' AND lease_owner = ? AND lease_until_us >= ?
                """, arguments: [JobQueueLimits.maxAttempts, JobQueueLimits.maxAttempts, Self.us(now), String(reason.prefix(4096)),
                                 id, worker, Self.us(now)])
            return db.changesCount == 1
        }
    }

    public func job(_ id: Int64) throws -> Job? {
        try database.read { db in try Row.fetchOne(db, sql: "SELECT * FROM jobs WHERE id = ?", arguments: [id]).map { try Self.job($0, database.path) } }
    }

    public func jobs(state: Job.State?, limit: Int) throws -> [Job] {
        try database.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM jobs WHERE ? IS NULL OR state = ? ORDER BY id DESC LIMIT ?",
                             arguments: [state?.rawValue, state?.rawValue, max(1, min(limit, 10_000))]).map { try Self.job($0, database.path) }
        }
    }

    public func depth() throws -> [Job.State: Int] {
        try database.read { db in
            var out: [Job.State: Int] = [:]
            for r in try Row.fetchAll(db, sql: "SELECT state, count(*) AS n FROM jobs GROUP BY state") {
                if let s = Job.State(rawValue: r["state"]) { out[s] = r["n"] }
            }
            return out
        }
    }
}
