/// Checked arithmetic that throws ``WardenError`` (code `.corrupt`) instead of trapping.
///
/// Every size, count and offset read from an image goes through these before use.
public enum Checked {
    @inlinable
    public static func add<T: FixedWidthInteger>(_ a: T, _ b: T, _ what: @autoclosure () -> String = "value") throws -> T {
        let (r, o) = a.addingReportingOverflow(b)
        if o { throw WardenError.corrupt("\(what()) overflows") }
        return r
    }

    @inlinable
    public static func mul<T: FixedWidthInteger>(_ a: T, _ b: T, _ what: @autoclosure () -> String = "value") throws -> T {
        let (r, o) = a.multipliedReportingOverflow(by: b)
        if o { throw WardenError.corrupt("\(what()) overflows") }
        return r
    }

    @inlinable
    public static func sub<T: FixedWidthInteger>(_ a: T, _ b: T, _ what: @autoclosure () -> String = "value") throws -> T {
        let (r, o) = a.subtractingReportingOverflow(b)
        if o { throw WardenError.corrupt("\(what()) underflows") }
        return r
    }

    /// Converts between integer types, throwing if the value does not fit.
    @inlinable
    public static func cast<T: FixedWidthInteger, U: BinaryInteger>(_ v: U, _ what: @autoclosure () -> String = "value") throws -> T {
        guard let r = T(exactly: v) else { throw WardenError.corrupt("\(what()) \(v) is out of range") }
        return r
    }
}
