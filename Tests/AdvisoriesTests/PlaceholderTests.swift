import Testing
@testable import Advisories

@Suite struct AdvisoriesModuleTests {
    @Test func moduleLinks() { _ = Advisories.self }
}
