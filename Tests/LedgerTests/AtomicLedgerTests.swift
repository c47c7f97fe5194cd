import Foundation
import Testing
import WardenTestSupport
@testable import Ledger
import WardenCore

@Suite struct AtomicLedgerTests {
    /// A rolled-back transaction leaves the witness where the committed log is, so verify passes.
    @Test func theWitnessFollowsOnlyCommittedCheckpoints() throws {
        try withLedger { ledger, _ in
            _ = try ledger.append(NewEvent(kind: .policyDecision, vm: nil))
            var threw = false
            do {
                try ledger.atomically(family: nil) { () throws -> Void in
                    _ = try ledger.append(NewEvent(kind: .policyDecision, vm: nil))
                    throw StoreTestError()
                }
            } catch is StoreTestError { threw = true }
            #expect(threw)
            do {
                try ledger.atomically(family: nil) { () throws -> Void in _ = try ledger.append(NewEvent(kind: .policyDecision, vm: nil)) }
            } catch {
                Issue.record("second transaction threw \(error)")
            }
            let report = try LedgerVerifier(database: ledger.database, keysDirectory: ledger.keysDirectory).verify()
            #expect(report.firstBad == nil && report.ok, "\(String(describing: report.firstBad))")
            #expect(try ledger.eventCount() == 2)
        }
    }
}
