import Foundation
import Testing
import Ledger
import StoreTestSupport
import WardenCore

/// The job queue suite, over every backend: leases, expiry, no job lost or done twice.
@Suite struct JobQueueTests {
    let t0 = Date(timeIntervalSince1970: 1_800_000_000)

    @Test(arguments: StoreBackend.all) func enqueueIsDeduplicatedAndClaimsAreHostBound(_ backend: StoreBackend) throws {
        try backend.with { store in
            let q = store.jobs
            let a = try q.enqueue(.scan, host: "h1", target: "/vms/a.qcow2", at: t0)
            #expect(a.created && a.job.state == .queued && a.job.attempts == 0)
            let again = try q.enqueue(.scan, host: "h1", target: "/vms/a.qcow2", at: t0)
            #expect(!again.created && again.job.id == a.job.id)
            let b = try q.enqueue(.scan, host: "h2", target: "/vms/a.qcow2", at: t0)
            let r = try q.enqueue(.rescan, host: nil, target: "sha256:" + String(repeating: "ab", count: 32), at: t0)
            #expect(b.created && r.created)
            // A host's agent gets only its host's jobs; the server's are host-less.
            let h1 = try q.claim(host: "h1", worker: "agent-h1", lease: 30, limit: 10, at: t0)
            #expect(h1.map(\.id) == [a.job.id] && h1[0].state == .leased && h1[0].attempts == 1 && h1[0].leaseOwner == "agent-h1")
            #expect(try q.claim(host: "h1", worker: "agent-h1", lease: 30, limit: 10, at: t0).isEmpty)
            #expect(try q.claim(host: nil, worker: "server", lease: 30, limit: 10, at: t0).map(\.id) == [r.job.id])
            // Someone else cannot finish it; the holder can, once.
            #expect(try !q.complete(a.job.id, worker: "agent-h2", result: "x", at: t0))
            #expect(try q.complete(a.job.id, worker: "agent-h1", result: "inventory sha256:…", at: t0 + 1))
            #expect(try !q.complete(a.job.id, worker: "agent-h1", result: "again", at: t0 + 2))
            let done = try #require(try q.job(a.job.id))
            #expect(done.state == .done && done.result == "inventory sha256:…" && done.finishedAt != nil)
            // Done, the same target can be queued again.
            #expect(try q.enqueue(.scan, host: "h1", target: "/vms/a.qcow2", at: t0 + 3).created)
            #expect(try q.depth()[.done] == 1)
            #expect(try q.jobs(state: .leased, limit: 10).map(\.id) == [r.job.id])
        }
    }

    /// A worker dies holding a job: its lease expires, another takes the job, and the dead
    /// worker's late answer is refused, so the job is done exactly once.
    @Test(arguments: StoreBackend.all) func anExpiredLeaseMovesTheJobToAnotherWorker(_ backend: StoreBackend) throws {
        try backend.with { store in
            let q = store.jobs
            let j = try q.enqueue(.scan, host: "h1", target: "/vms/b.qcow2", at: t0).job
            #expect(try q.claim(host: "h1", worker: "A", lease: 30, limit: 1, at: t0).count == 1)
            #expect(try q.claim(host: "h1", worker: "B", lease: 30, limit: 1, at: t0 + 29).isEmpty, "still leased")
            let taken = try q.claim(host: "h1", worker: "B", lease: 30, limit: 1, at: t0 + 31)
            #expect(taken.map(\.id) == [j.id] && taken.first?.attempts == 2 && taken.first?.leaseOwner == "B")
            #expect(try !q.complete(j.id, worker: "A", result: "late", at: t0 + 32))
            #expect(try !q.fail(j.id, worker: "A", reason: "late", at: t0 + 32))
            #expect(try q.complete(j.id, worker: "B", result: "ok", at: t0 + 33))
            #expect(try q.job(j.id)?.result == "ok")
            // B's lease also ends: a complete after it is refused too (it could have been re-taken).
            let k = try q.enqueue(.scan, host: "h1", target: "/vms/c.qcow2", at: t0).job
            _ = try q.claim(host: "h1", worker: "B", lease: 10, limit: 1, at: t0 + 40)
            #expect(try !q.complete(k.id, worker: "B", result: "too late", at: t0 + 51))
        }
    }

    @Test(arguments: StoreBackend.all) func failingJobsAreRetriedThenMarkedFailed(_ backend: StoreBackend) throws {
        try backend.with { store in
            let q = store.jobs
            let j = try q.enqueue(.scan, host: "h1", target: "/vms/bad.qcow2", at: t0).job
            for attempt in 1...JobQueueLimits.maxAttempts {
                let c = try q.claim(host: "h1", worker: "A", lease: 30, limit: 1, at: t0 + Double(attempt))
                #expect(c.first?.attempts == attempt)
                #expect(try q.fail(j.id, worker: "A", reason: "unreadable image", at: t0 + Double(attempt)))
            }
            let failed = try #require(try q.job(j.id))
            #expect(failed.state == .failed && failed.result == "unreadable image")
            #expect(try q.claim(host: "h1", worker: "A", lease: 30, limit: 1, at: t0 + 100).isEmpty)
        }
    }

    @Test(arguments: StoreBackend.all) func malformedArgumentsAreRefused(_ backend: StoreBackend) throws {
        try backend.with { store throws in
            let q = store.jobs
            #expect(throws: WardenError.self) { _ = try q.enqueue(.scan, host: "h1", target: "", at: t0) }
            #expect(throws: WardenError.self) { _ = try q.enqueue(.scan, host: "h1", target: String(repeating: "x", count: 5000), at: t0) }
            #expect(throws: WardenError.self) { _ = try q.enqueue(.scan, host: "h1", target: "a\0b", at: t0) }
            #expect(throws: WardenError.self) { _ = try q.claim(host: "h1", worker: "A", lease: 0, limit: 1, at: t0) }
            #expect(throws: WardenError.self) { _ = try q.claim(host: "h1", worker: "A", lease: 30, limit: 0, at: t0) }
            #expect(throws: WardenError.self) { _ = try q.claim(host: "h1", worker: "", lease: 30, limit: 1, at: t0) }
            #expect(try q.depth().isEmpty)
        }
    }

    /// Many workers claiming at once: every job is handed to exactly one of them.
    @Test(arguments: StoreBackend.all) func concurrentClaimsNeverShareAJob(_ backend: StoreBackend) throws {
        try backend.with { store in
            let q = store.jobs
            let total = 120
            for i in 0..<total { _ = try q.enqueue(.scan, host: "h1", target: "/vms/\(i).qcow2", at: t0) }
            let claimed = Locked<[Int64]>([])
            let errors = Locked<[String]>([])
            DispatchQueue.concurrentPerform(iterations: 6) { w in
                while true {
                    do {
                        let got = try q.claim(host: "h1", worker: "w\(w)", lease: 600, limit: 4, at: t0)
                        if got.isEmpty { return }
                        for j in got {
                            guard try q.complete(j.id, worker: "w\(w)", result: "w\(w)", at: t0 + 1) else {
                                errors.withLock { $0.append("w\(w) lost job \(j.id)") }; continue
                            }
                            claimed.withLock { $0.append(j.id) }
                        }
                    } catch {
                        errors.withLock { $0.append("\(error)") }
                        return
                    }
                }
            }
            #expect(errors.withLock { $0 }.isEmpty, "\(errors.withLock { $0 }.prefix(3))")
            let ids = claimed.withLock { $0 }
            #expect(ids.count == total && Set(ids).count == total)
            #expect(try q.depth() == [.done: total])
        }
    }
}
