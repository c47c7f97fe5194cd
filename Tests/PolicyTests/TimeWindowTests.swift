import Foundation
import Testing
@testable import Policy

/// Time windows are wall-clock windows in an IANA zone. The instants below are UTC; the
/// comments give the local time. A fixed-offset implementation fails the marked cases.
@Suite struct TimeWindowTests {
    func inside(_ window: String, _ utc: String) throws -> Bool {
        let set = try policy("""
          - name: w
            on: [start]
            require: { window: \(window) }
        """)
        return PolicyEngine.decide(set, .start, vm: plain, context: ctx(at: t(utc))).effect == .allow
    }

    @Test func berlinSpringForward() throws {
        // 2026-03-29 (Sunday): 02:00 CET → 03:00 CEST at 01:00 UTC.
        let office = "{ days: daily, hours: \"08:00-18:00\", timezone: Europe/Berlin }"
        #expect(try inside(office, "2026-03-28T07:30:00Z"))    // Sat 08:30 CET
        #expect(try !inside(office, "2026-03-28T06:30:00Z"))   // Sat 07:30 CET
        #expect(try inside(office, "2026-03-29T06:30:00Z"))    // Sun 08:30 CEST (fixed +1: 07:30, out)
        #expect(try !inside(office, "2026-03-29T05:30:00Z"))   // Sun 07:30 CEST
        #expect(try !inside(office, "2026-03-29T16:30:00Z"))   // Sun 18:30 CEST (fixed +1: 17:30, in)
        #expect(try inside(office, "2026-03-29T15:59:00Z"))    // Sun 17:59 CEST
        // A window across the skipped hour: 01:30-02:30 holds until 01:59 CET; 02:xx never occurs.
        let skipped = "{ days: Sun, hours: \"01:30-02:30\", timezone: Europe/Berlin }"
        #expect(try inside(skipped, "2026-03-29T00:45:00Z"))   // 01:45 CET
        #expect(try inside(skipped, "2026-03-29T00:59:00Z"))   // 01:59 CET
        #expect(try !inside(skipped, "2026-03-29T01:00:00Z"))  // 03:00 CEST
        #expect(try !inside(skipped, "2026-03-29T01:15:00Z"))  // 03:15 CEST
    }

    @Test func berlinFallBack() throws {
        // 2026-10-25 (Sunday): 03:00 CEST → 02:00 CET at 01:00 UTC; 02:00-02:59 happens twice.
        let office = "{ days: daily, hours: \"08:00-18:00\", timezone: Europe/Berlin }"
        #expect(try inside(office, "2026-10-24T06:30:00Z"))    // Sat 08:30 CEST
        #expect(try inside(office, "2026-10-25T07:30:00Z"))    // Sun 08:30 CET
        #expect(try !inside(office, "2026-10-25T06:30:00Z"))   // Sun 07:30 CET (fixed +2: 08:30, in)
        #expect(try inside(office, "2026-10-25T16:30:00Z"))    // Sun 17:30 CET (fixed +2: 18:30, out)
        let repeated = "{ days: Sun, hours: \"02:00-03:00\", timezone: Europe/Berlin }"
        #expect(try !inside(repeated, "2026-10-24T23:59:00Z")) // 01:59 CEST
        #expect(try inside(repeated, "2026-10-25T00:30:00Z"))  // 02:30 CEST, first time
        #expect(try inside(repeated, "2026-10-25T01:30:00Z"))  // 02:30 CET, second time
        #expect(try !inside(repeated, "2026-10-25T02:00:00Z")) // 03:00 CET
    }

    @Test func newYork() throws {
        let office = "{ days: Mon-Fri, hours: \"09:00-17:00\", timezone: America/New_York }"
        // 2026-03-08 (Sunday): 02:00 EST → 03:00 EDT at 07:00 UTC.
        #expect(try !inside(office, "2026-03-06T13:30:00Z"))   // Fri 08:30 EST
        #expect(try inside(office, "2026-03-06T14:30:00Z"))    // Fri 09:30 EST
        #expect(try inside(office, "2026-03-09T13:30:00Z"))    // Mon 09:30 EDT (fixed -5: 08:30, out)
        #expect(try !inside(office, "2026-03-09T21:30:00Z"))   // Mon 17:30 EDT (fixed -5: 16:30, in)
        #expect(try !inside(office, "2026-03-08T15:00:00Z"))   // Sunday
        // 2026-11-01 (Sunday): 02:00 EDT → 01:00 EST at 06:00 UTC.
        #expect(try !inside(office, "2026-11-02T13:30:00Z"))   // Mon 08:30 EST (fixed -4: 09:30, in)
        #expect(try inside(office, "2026-11-02T14:30:00Z"))    // Mon 09:30 EST
        let night = "{ days: Sun, hours: \"01:00-02:00\", timezone: America/New_York }"
        #expect(try inside(night, "2026-11-01T05:30:00Z"))     // 01:30 EDT
        #expect(try inside(night, "2026-11-01T06:30:00Z"))     // 01:30 EST (again)
        #expect(try !inside(night, "2026-11-01T07:00:00Z"))    // 02:00 EST
        let skipped = "{ days: Sun, hours: \"02:00-03:00\", timezone: America/New_York }"
        #expect(try !inside(skipped, "2026-03-08T06:59:00Z"))  // 01:59 EST
        #expect(try !inside(skipped, "2026-03-08T07:00:00Z"))  // 03:00 EDT: 02:xx never happens
    }

    @Test func acrossMidnight() throws {
        let fridayNight = "{ days: Fri, hours: \"22:00-06:00\", timezone: UTC }"
        #expect(try !inside(fridayNight, "2026-01-09T21:59:00Z"))  // Fri 21:59
        #expect(try inside(fridayNight, "2026-01-09T22:00:00Z"))   // Fri 22:00
        #expect(try inside(fridayNight, "2026-01-09T23:59:00Z"))
        #expect(try inside(fridayNight, "2026-01-10T05:59:00Z"))   // Sat 05:59, still Friday's window
        #expect(try !inside(fridayNight, "2026-01-10T06:00:00Z"))
        #expect(try !inside(fridayNight, "2026-01-10T23:00:00Z"))  // Sat night: not listed
        #expect(try !inside(fridayNight, "2026-01-09T03:00:00Z"))  // Fri early: belongs to Thursday
        // Sunday night into Monday wraps the week.
        let sundayNight = "{ days: Sun, hours: \"23:00-01:00\", timezone: UTC }"
        #expect(try inside(sundayNight, "2026-01-12T00:30:00Z"))   // Mon 00:30
        #expect(try !inside(sundayNight, "2026-01-13T00:30:00Z"))  // Tue 00:30
        // Across midnight and the Berlin spring-forward together: Sat 22:00 → Sun 06:00 local.
        let berlin = "{ days: Sat, hours: \"22:00-06:00\", timezone: Europe/Berlin }"
        #expect(try inside(berlin, "2026-03-28T21:00:00Z"))    // Sat 22:00 CET
        #expect(try inside(berlin, "2026-03-29T03:30:00Z"))    // Sun 05:30 CEST (fixed +1: 04:30, also in)
        #expect(try !inside(berlin, "2026-03-29T04:30:00Z"))   // Sun 06:30 CEST (fixed +1: 05:30, in)
        // 24:00 as an end.
        let evening = "{ days: Mon, hours: \"20:00-24:00\", timezone: UTC }"
        #expect(try inside(evening, "2026-01-05T23:59:00Z"))
        #expect(try !inside(evening, "2026-01-06T00:00:00Z"))
    }

    @Test func severalWindowsAreAlternatives() throws {
        let two = "[ { days: Mon-Fri, hours: \"08:00-18:00\", timezone: Europe/Berlin }, { days: Sat, hours: \"10:00-12:00\", timezone: Europe/Berlin } ]"
        #expect(try inside(two, "2026-01-10T09:30:00Z"))       // Sat 10:30 CET
        #expect(try !inside(two, "2026-01-10T12:30:00Z"))      // Sat 13:30 CET
        #expect(try inside(two, "2026-01-05T07:30:00Z"))       // Mon 08:30 CET
    }

    @Test func reasonShowsLocalTime() throws {
        let set = try policy("""
          - name: office
            on: [start]
            require: { window: { days: Mon-Fri, hours: "08:00-18:00", timezone: Europe/Berlin } }
        """)
        let d = PolicyEngine.decide(set, .start, vm: plain, context: ctx(at: t("2026-03-29T06:30:00Z")))
        #expect(d.reasons == ["rule office: Sun 2026-03-29 08:30 Europe/Berlin is outside the window Mon,Tue,Wed,Thu,Fri 08:00-18:00 Europe/Berlin"])
    }
}
