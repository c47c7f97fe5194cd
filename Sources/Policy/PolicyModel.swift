import Foundation
import WardenCore

// The typed policy model. Files are parsed into these by ``PolicyParser``; the evaluator
// (``PolicyEngine``) reads only these types, never YAML.

/// An operation on a VM that policy decides.
public enum VMOperation: String, Codable, Sendable, CaseIterable, Comparable {
    case start, stop, clone, copy, export, migrate, snapshot, rollback, restore, transfer, retire
    /// Releasing a VM's data keys (each QEMU start of an encrypted VM): docs/vault.md.
    case unlock
    /// Patching a dormant VM in a maintenance boot (`warden vm patch`): docs/patching.md.
    case patch
    /// Pushing a VM to an OCI registry, and pulling one from it (`warden vm push|pull`): docs/oci.md.
    case push, pull
    public static func < (a: VMOperation, b: VMOperation) -> Bool { a.rawValue < b.rawValue }
}

/// What a decision lets happen. Ordered by strength: allow < quarantine < deny.
public enum Effect: String, Codable, Sendable, CaseIterable, Comparable {
    /// The operation goes ahead.
    case allow
    /// The operation goes ahead, but the VM's network is restricted (docs/network.md).
    case quarantine
    /// The operation is refused.
    case deny

    var strength: Int { self == .allow ? 0 : self == .quarantine ? 1 : 2 }
    public static func < (a: Effect, b: Effect) -> Bool { a.strength < b.strength }
}

/// A length of time written like `7d`, `12h`, `1d12h`, `90m`, `2w`, `30s`.
public struct PolicyDuration: Sendable, Hashable, Codable, CustomStringConvertible {
    public let seconds: Int64
    public init(seconds: Int64) { self.seconds = seconds }

    /// Parses `<n><unit>…` with units w, d, h, m, s; nil if malformed, zero, or absurdly long.
    public init?(_ text: String) {
        let units: [Character: Int64] = ["w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1]
        var total: Int64 = 0
        var number: Int64? = nil
        var seen = Set<Character>()
        for ch in text {
            if let digit = ch.wholeNumberValue, ch.isASCII {
                let (m, o1) = (number ?? 0).multipliedReportingOverflow(by: 10)
                let (a, o2) = m.addingReportingOverflow(Int64(digit))
                guard !o1, !o2 else { return nil }
                number = a
            } else if let unit = units[ch], let n = number, !seen.contains(ch) {
                seen.insert(ch)
                let (m, o1) = n.multipliedReportingOverflow(by: unit)
                let (a, o2) = total.addingReportingOverflow(m)
                guard !o1, !o2 else { return nil }
                total = a
                number = nil
            } else {
                return nil
            }
        }
        // 100 years is the cap: anything longer is a typo.
        guard number == nil, total > 0, total <= 100 * 366 * 86_400 else { return nil }
        seconds = total
    }

    /// The shortest `1d12h` form.
    public var description: String {
        var rest = seconds, out = ""
        for (unit, size) in [("d", Int64(86_400)), ("h", 3_600), ("m", 60), ("s", 1)] where rest >= size {
            out += "\(rest / size)\(unit)"
            rest %= size
        }
        return out.isEmpty ? "0s" : out
    }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
    public init(from decoder: Decoder) throws {
        let s = try decoder.singleValueContainer().decode(String.self)
        guard let d = PolicyDuration(s) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not a duration"))
        }
        self = d
    }
}

/// A weekly time window: days, hours of the day in local wall-clock time, and an IANA time zone.
///
/// Wall-clock semantics: `08:00-18:00` means 08:00 to 18:00 as the clocks in `timeZone` show
/// them, on every listed day, whatever the UTC offset is that day (so DST changes move the
/// window in UTC, not in local time). A window whose end is before its start crosses midnight
/// and belongs to the day it starts on: `Fri 22:00-06:00` covers Friday 22:00 to Saturday 06:00.
/// On the spring-forward day the skipped hour simply does not occur; on the fall-back day the
/// repeated hour is inside the window both times if its wall-clock time is.
public struct TimeWindow: Sendable, Hashable, Codable {
    /// Bit n set = day n is listed (1 = Monday … 7 = Sunday, ISO 8601).
    public let dayMask: UInt8
    /// Minutes after local midnight, 0..<1440.
    public let startMinute: Int
    /// Minutes after local midnight, 1...1440 (1440 = `24:00`).
    public let endMinute: Int
    public let timeZone: String

    public init(dayMask: UInt8, startMinute: Int, endMinute: Int, timeZone: String) {
        self.dayMask = dayMask; self.startMinute = startMinute; self.endMinute = endMinute; self.timeZone = timeZone
    }

    public static let dayNames = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]

    /// `Mon-Fri`, `Sat,Sun`, `Fri-Mon` (wraps), `daily`, or a list of those.
    public static func parseDays(_ items: [String]) -> UInt8? {
        var mask: UInt8 = 0
        func index(_ s: String) -> Int? {
            let t = s.trimmingCharacters(in: .whitespaces).lowercased()
            guard t.count >= 3 else { return nil }
            for (i, name) in dayNames.enumerated() {
                let full = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"][i]
                if t == name.lowercased() || t == full { return i + 1 }
            }
            return nil
        }
        for item in items {
            for part in item.split(separator: ",", omittingEmptySubsequences: false) {
                let p = part.trimmingCharacters(in: .whitespaces)
                if ["daily", "*", "all"].contains(p.lowercased()) { mask |= 0b1111_1110; continue }
                if ["weekdays"].contains(p.lowercased()) { mask |= 0b0011_1110; continue }
                if ["weekends", "weekend"].contains(p.lowercased()) { mask |= 0b1100_0000; continue }
                let ends = p.split(separator: "-", omittingEmptySubsequences: false).map(String.init)
                if ends.count == 1, let d = index(ends[0]) {
                    mask |= 1 << d
                } else if ends.count == 2, var d = index(ends[0]), let e = index(ends[1]) {
                    mask |= 1 << d
                    while d != e { d = d % 7 + 1; mask |= 1 << d }
                } else {
                    return nil
                }
            }
        }
        return mask == 0 ? nil : mask
    }

    /// `HH:MM-HH:MM`; the end may be `24:00`; start ≠ end.
    public static func parseHours(_ s: String) -> (Int, Int)? {
        let ends = s.split(separator: "-", omittingEmptySubsequences: false)
        guard ends.count == 2 else { return nil }
        func minute(_ t: Substring, allow24: Bool) -> Int? {
            let hm = t.trimmingCharacters(in: .whitespaces).split(separator: ":", omittingEmptySubsequences: false)
            guard hm.count == 2, hm[0].count == 2, hm[1].count == 2,
                  let h = Int(hm[0]), let m = Int(hm[1]), hm[0].allSatisfy(\.isASCII), hm[1].allSatisfy(\.isASCII),
                  (0...59).contains(m) else { return nil }
            if h == 24 && m == 0 && allow24 { return 1440 }
            guard (0...23).contains(h) else { return nil }
            return h * 60 + m
        }
        guard let a = minute(ends[0], allow24: false), let b = minute(ends[1], allow24: true), a != b, !(a == 0 && b == 0) else {
            return nil
        }
        return (a, b)
    }

    public var daysText: String {
        (1...7).filter { dayMask & (1 << $0) != 0 }.map { Self.dayNames[$0 - 1] }.joined(separator: ",")
    }
    public var hoursText: String {
        func f(_ m: Int) -> String { String(format: "%02d:%02d", m / 60, m % 60) }
        return "\(f(startMinute))-\(f(endMinute))"
    }
    public var description: String { "\(daysText) \(hoursText) \(timeZone)" }

    /// Whether `date` falls inside the window (see the type's documentation for DST and midnight).
    public func contains(_ date: Date, calendar: Calendar) -> Bool {
        let c = calendar.dateComponents([.weekday, .hour, .minute], from: date)
        guard let wd = c.weekday, let h = c.hour, let m = c.minute else { return false }
        let day = (wd + 5) % 7 + 1      // Gregorian 1 = Sunday → ISO 1 = Monday
        let minute = h * 60 + m
        func listed(_ d: Int) -> Bool { dayMask & (1 << d) != 0 }
        if startMinute < endMinute {
            return listed(day) && minute >= startMinute && minute < endMinute
        }
        let previous = (day + 5) % 7 + 1
        return (listed(day) && minute >= startMinute) || (listed(previous) && minute < endMinute)
    }

    /// A Gregorian calendar in the window's time zone (nil if the zone is unknown).
    public func makeCalendar() -> Calendar? {
        guard let tz = TimeZone(identifier: timeZone) else { return nil }
        var cal = Calendar(identifier: .gregorian)
        cal.timeZone = tz
        return cal
    }
}

/// Conditions on the host an operation runs on (for migrate: the destination host).
public struct HostCondition: Sendable, Hashable, Codable {
    /// The host's name must be one of these (when given).
    public var names: [String]?
    /// The host must carry all these labels (value `*` = the key is present with any value).
    public var labels: [String: String]?
    public init(names: [String]? = nil, labels: [String: String]? = nil) { self.names = names; self.labels = labels }
}

/// Conditions on an export, copy or clone destination path.
public struct DestinationCondition: Sendable, Hashable, Codable {
    /// Holds when the destination's removability equals this.
    public var removable: Bool?
    /// Holds when the destination lies under one of these directories.
    public var roots: [String]?
    public init(removable: Bool? = nil, roots: [String]? = nil) { self.removable = removable; self.roots = roots }
}

/// Open findings (or re-exposed findings) at or above a severity.
public struct SeverityCondition: Sendable, Hashable, Codable {
    public var severity: Severity
    /// How many are needed for the condition to hold (default 1).
    public var count: Int
    public init(severity: Severity, count: Int = 1) { self.severity = severity; self.count = count }
}

/// A set of conditions; in `require` all must hold, in `deny`/`quarantine`/`allow` all must hold for the rule to fire.
public struct Conditions: Sendable, Hashable, Codable {
    public var host: HostCondition?
    /// Any of the windows.
    public var window: [TimeWindow]?
    /// The number of live members of the VM's lineage family after the operation is at most this.
    public var maxReplicas: Int?
    public var destination: DestinationCondition?
    /// The VM was scanned, and the last scan is at most this old.
    public var scanAge: PolicyDuration?
    /// `true`: the VM was scanned and no advisory was imported after its last scan.
    public var scanCurrent: Bool?
    /// The VM has open findings at or above the severity.
    public var findings: SeverityCondition?
    /// The rollback target would re-open findings at or above the severity.
    public var reexposes: SeverityCondition?
    /// The VM's owner is recorded and present.
    public var ownerPresent: Bool?
    /// The host passed TPM attestation recently enough (docs/attestation.md).
    public var attested: AttestedCondition?
    /// `true`: the VM's latest malware scan found something; `false`: it found nothing.
    /// Unknown (and failing closed) when the VM was never scanned for malware.
    public var malware: Bool?
    /// The patch's mirror (`dir:/srv/mirror` or its URL) matches one of these shell patterns
    /// (patch only).
    public var mirrors: [String]?
    /// The registry repository (`host[:port]/repository`) matches one of these shell patterns
    /// (push and pull only).
    public var registries: [String]?
    /// The pulled image's signature verdict is one of these (`trusted`, `unsigned`, `invalid`;
    /// pull only). An untrusted image is pulled only when an `allow` rule naming its verdict fires.
    public var signature: [String]?
    /// The pull keeps the pushed VM's identity (`--keep-identity`; pull only). A pull that keeps
    /// it goes ahead only when an `allow` rule with `keepIdentity: true` fires.
    public var keepIdentity: Bool?
    /// The pushed (or pulled) image is encrypted with its family's key (push and pull only).
    public var encrypted: Bool?
    public init() {}

    public var isEmpty: Bool {
        host == nil && window == nil && maxReplicas == nil && destination == nil && scanAge == nil
            && scanCurrent == nil && findings == nil && reexposes == nil && ownerPresent == nil && attested == nil && malware == nil
            && mirrors == nil && registries == nil && signature == nil && keepIdentity == nil && encrypted == nil
    }
}

/// `attested: true`, or `attested: {maxAge: 8h}`: the host's latest attestation verified, was
/// trusted, and is younger than `maxAge` (when given) and than the host trust policy's own
/// `maxAge` (always). `attested: false` holds exactly when that does not.
public struct AttestedCondition: Sendable, Hashable, Codable {
    public var expected: Bool
    public var maxAge: PolicyDuration?
    public init(expected: Bool = true, maxAge: PolicyDuration? = nil) { self.expected = expected; self.maxAge = maxAge }
}

/// Which VMs a rule applies to. Every given field must match; an empty match matches every VM.
public struct VMMatch: Sendable, Hashable, Codable {
    /// Each label key must be present with one of the listed values (`*` = any value).
    public var labels: [String: [String]] = [:]
    /// The VM's name matches one of these shell patterns (`*`, `?`, `[…]`).
    public var names: [String]?
    /// The VM's owner is one of these.
    public var owners: [String]?
    /// The VM's state is one of these (`registered`, `discovered`, …).
    public var states: [String]?
    public init() {}
}

/// One rule.
public struct Rule: Sendable, Hashable, Codable {
    public enum Kind: String, Sendable, Hashable, Codable {
        /// All conditions must hold, else the rule fires with its `otherwise` effect.
        case require
        /// The rule fires (deny/quarantine) when all conditions hold.
        case deny, quarantine
        /// The rule grants the operation when all conditions hold (matters under `defaultEffect: deny`).
        case allow
    }
    public var name: String
    public var description: String?
    public var match: VMMatch
    public var on: [VMOperation]
    public var kind: Kind
    public var conditions: Conditions
    /// For `require`: the effect when a condition fails (deny or quarantine; default deny).
    public var otherwise: Effect
    /// Where the rule was written (`file:line`), for explanations and lint.
    public var source: String

    public init(name: String, description: String? = nil, match: VMMatch = VMMatch(), on: [VMOperation],
                kind: Kind, conditions: Conditions, otherwise: Effect = .deny, source: String = "") {
        self.name = name; self.description = description; self.match = match; self.on = on
        self.kind = kind; self.conditions = conditions; self.otherwise = otherwise; self.source = source
    }

    /// The effect the rule has when it fires.
    public var firingEffect: Effect {
        switch kind {
        case .require: otherwise
        case .deny: .deny
        case .quarantine: .quarantine
        case .allow: .allow
        }
    }
}

/// One policy file after parsing.
public struct PolicyDocument: Sendable, Hashable, Codable {
    public var file: String
    public var name: String?
    public var defaultEffect: Effect?
    public var rules: [Rule]
}
