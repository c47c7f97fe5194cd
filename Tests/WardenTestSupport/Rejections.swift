import Testing
import WardenCore

/// Bookkeeping for hostile-input tests: each input is either accepted, or refused with a
/// ``WardenError`` whose code is one of `expected`. Any other error, or another code, is
/// recorded as a test issue at the caller. The counts let a test say how many inputs were
/// refused, so a parser that silently accepts everything is noticed.
public struct Rejections {
    public let expected: Set<WardenError.Code>
    public private(set) var accepted = 0
    public private(set) var rejected = 0

    public init(_ codes: WardenError.Code...) { expected = Set(codes) }

    /// Runs `body` on one input.
    public mutating func feed<T>(sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> T) {
        do {
            _ = try body()
            accepted += 1
        } catch let e as WardenError {
            rejected += 1
            if !expected.contains(e.code) {
                Issue.record("refused with code \(e.code), expected one of \(expected.map(\.description).sorted()): \(e)", sourceLocation: sourceLocation)
            }
            if e.description.contains("\n") {
                Issue.record("a refusal spans lines: \(e)", sourceLocation: sourceLocation)
            }
        } catch {
            Issue.record("not a WardenError: \(error)", sourceLocation: sourceLocation)
        }
    }
}
