import GuestFS

/// Everything `warden inspect` reports about a guest's OS, identity, accounts and SSH.
public struct IdentityReport: Codable, Sendable, Equatable {
    public var os: OSInfo
    public var identity: IdentityInfo
    public var accounts: AccountsInfo
    public var ssh: SSHInfo
}

extension Inspection {
    /// Runs the OS, identity, accounts and SSH readers. Never throws: missing or unreadable
    /// files become unknowns or warnings.
    public static func identityReport(_ g: GuestFiles) -> IdentityReport {
        let acc = accounts(g)
        return IdentityReport(os: operatingSystem(g), identity: identity(g), accounts: acc, ssh: ssh(g, accounts: acc))
    }
}
