import Foundation
import GuestFS
import WardenCore

/// What Warden reads from a Windows guest offline: its registry hives (SOFTWARE, SYSTEM, SAM
/// under `\Windows\System32\config`) on its NTFS volume. Password hashes are never read out.
public struct WindowsInfo: Codable, Sendable, Equatable {
    public var volume: String
    public var productName: Fact<String>
    public var editionId: Fact<String>
    /// `DisplayVersion` (21H2…), else `ReleaseId`.
    public var displayVersion: Fact<String>
    public var currentVersion: Fact<String>
    /// `CurrentBuild.UBR`, e.g. `20348.2031`.
    public var build: Fact<String>
    /// RFC 3339, from `InstallDate`.
    public var installDate: Fact<String>
    public var systemRoot: Fact<String>
    public var computerName: Fact<String>
    public var domain: Fact<String>
    public var machineGuid: Fact<String>
    /// The machine (account domain) SID, S-1-5-21-…, from SAM.
    public var machineSid: Fact<String>
    public var driveLetters: Fact<[DriveLetter]>
    public var accounts: Fact<[Account]>
    public var software: Fact<[Software]>
    /// KB numbers of installed packages (Component Based Servicing).
    public var updates: Fact<[String]>
    public var services: Fact<[Service]>
    public var firewall: Fact<[FirewallProfile]>
    public var rdpEnabled: Fact<Bool>
    public var hives: [Hive]

    public struct DriveLetter: Codable, Sendable, Equatable {
        public var letter: String
        /// `mbr signature 0x… offset …`, `gpt partition {guid}`, or the raw length.
        public var target: String
    }
    public struct Account: Codable, Sendable, Equatable {
        public var name: String
        public var rid: UInt32
        public var disabled: Fact<Bool>
        /// RFC 3339; nil when the account never logged on.
        public var lastLogon: String?
    }
    public struct Software: Codable, Sendable, Equatable {
        public var name: String
        public var version: String?
        public var publisher: String?
        /// `64-bit` or `32-bit` (WOW6432Node).
        public var view: String
    }
    public struct Service: Codable, Sendable, Equatable {
        public var name: String
        /// boot, system, automatic, manual, disabled.
        public var start: String
        public var imagePath: String?
    }
    public struct FirewallProfile: Codable, Sendable, Equatable {
        public var profile: String
        public var enabled: Bool
    }
    public struct Hive: Codable, Sendable, Equatable {
        public var name: String
        public var path: String
        public var dirty: Bool
        /// Transaction logs beside it (`.LOG1`, `.LOG2`); never replayed.
        public var logs: [String]
        public var problem: String?
    }
}

extension Inspection {
    static let maxHiveFile = 512 << 20

    /// Reads a Windows guest from its NTFS filesystem. Never throws: what cannot be read is an
    /// unknown with a reason.
    public static func inspectWindows(fs: any FileSystem, volume: String) -> (os: OSInfo, windows: WindowsInfo) {
        let resolver = GuestPathResolver(fs)
        var hives: [WindowsInfo.Hive] = []
        func hive(_ name: String) -> Fact<RegistryHive> {
            let path = "/Windows/System32/config/" + name
            var h = WindowsInfo.Hive(name: name, path: path, dirty: false, logs: [], problem: nil)
            defer { hives.append(h) }
            for log in ["LOG1", "LOG2", "LOG"] where (try? resolver.resolve(Array("\(path).\(log)".utf8))) != nil { h.logs.append("\(name).\(log)") }
            do {
                let r = try resolver.resolve(Array(path.utf8))
                guard r.stat.type == .regular else { throw WardenError.corrupt("\(path) is not a file") }
                guard r.stat.size <= UInt64(maxHiveFile) else { throw WardenError.limit("\(path) is larger than \(maxHiveFile) bytes") }
                let bytes = try fs.read(r.inode, at: 0, count: Int(r.stat.size))
                let parsed = try RegistryHive(bytes)
                h.dirty = parsed.isDirty
                return .known(parsed)
            } catch let e as WardenError {
                h.problem = e.message
                return .unknown(reason: e.message.contains(path) ? e.message : "\(path): \(e.message)")
            } catch {
                h.problem = "\(error)"
                return .unknown(reason: "\(path): \(error)")
            }
        }
        let software = hive("SOFTWARE"), system = hive("SYSTEM"), sam = hive("SAM")

        func fact<T>(_ hive: Fact<RegistryHive>, _ what: String, _ body: (RegistryHive) throws -> T?) -> Fact<T> {
            guard let h = hive.value else { return .unknown(reason: hive.unknownReason ?? "hive unreadable") }
            do {
                if let v = try body(h) { return .known(v) }
                return .unknown(reason: "\(what) is not in the hive")
            } catch let e as WardenError { return .unknown(reason: "\(what): \(e.message)") } catch { return .unknown(reason: "\(what): \(error)") }
        }
        let cv = "Microsoft\\Windows NT\\CurrentVersion"
        func string(_ h: Fact<RegistryHive>, _ key: String, _ name: String) -> Fact<String> {
            fact(h, "\(key)\\\(name)") { try $0.value(key, name)?.string.map { oneLineText($0) } }
        }
        // The control set in use (Select\Current), else ControlSet001.
        let controlSet: String = {
            if let n = (try? system.value?.value("Select", "Current"))??.dword, n > 0, n < 1000 {
                return String(format: "ControlSet%03d", n)
            }
            return "ControlSet001"
        }()
        let build: Fact<String> = fact(software, "CurrentBuild") { h in
            guard let b = try h.value(cv, "CurrentBuild")?.string ?? h.value(cv, "CurrentBuildNumber")?.string else { return nil }
            if let ubr = try h.value(cv, "UBR")?.dword { return "\(oneLineText(b)).\(ubr)" }
            return oneLineText(b)
        }
        let info = WindowsInfo(
            volume: volume,
            productName: string(software, cv, "ProductName"),
            editionId: string(software, cv, "EditionID"),
            displayVersion: fact(software, "DisplayVersion") { h in
                (try h.value(cv, "DisplayVersion")?.string ?? h.value(cv, "ReleaseId")?.string).map { oneLineText($0) }
            },
            currentVersion: string(software, cv, "CurrentVersion"),
            build: build,
            installDate: fact(software, "InstallDate") { h in
                try h.value(cv, "InstallDate")?.dword.map { rfc3339(Int64($0)) }
            },
            systemRoot: string(software, cv, "SystemRoot"),
            computerName: string(system, "\(controlSet)\\Control\\ComputerName\\ComputerName", "ComputerName"),
            domain: fact(system, "Tcpip Domain") { h in
                let p = "\(controlSet)\\Services\\Tcpip\\Parameters"
                let primary = try h.value(p, "Domain")?.string, fallback = try h.value(p, "NV Domain")?.string
                return [primary, fallback].compactMap { $0 }.first { !$0.isEmpty }.map { oneLineText($0) }
            },
            machineGuid: string(software, "Microsoft\\Cryptography", "MachineGuid"),
            machineSid: fact(sam, "SAM\\Domains\\Account V") { h in try h.value("SAM\\Domains\\Account", "V").flatMap { machineSID($0.data) } },
            driveLetters: fact(system, "MountedDevices") { h in
                guard let k = try h.key("MountedDevices") else { return nil }
                return try h.values(k).compactMap { v -> WindowsInfo.DriveLetter? in
                    guard v.name.hasPrefix("\\DosDevices\\"), v.name.count == 14 else { return nil }
                    return WindowsInfo.DriveLetter(letter: String(v.name.suffix(2)), target: mountedDevice(v.data))
                }.sorted { $0.letter < $1.letter }
            },
            accounts: fact(sam, "SAM accounts") { h in try accounts(h) },
            software: fact(software, "Uninstall") { h in try installedSoftware(h) },
            updates: fact(software, "Component Based Servicing") { h in
                guard let k = try h.key("Microsoft\\Windows\\CurrentVersion\\Component Based Servicing\\Packages") else { return nil }
                var kbs = Set<String>()
                for s in try h.subkeys(k) {
                    if let r = s.name.range(of: #"KB[0-9]{5,8}"#, options: .regularExpression) { kbs.insert(String(s.name[r])) }
                }
                return kbs.sorted()
            },
            services: fact(system, "Services") { h in
                guard let k = try h.key("\(controlSet)\\Services") else { return nil }
                let names = ["boot", "system", "automatic", "manual", "disabled"]
                return try h.subkeys(k).compactMap { s -> WindowsInfo.Service? in
                    // Win32 services only (own or shared process), not drivers.
                    guard let type = try h.value(s, "Type")?.dword, type & 0x30 != 0, let start = try h.value(s, "Start")?.dword else { return nil }
                    return WindowsInfo.Service(name: oneLineText(s.name), start: Int(start) < names.count ? names[Int(start)] : "\(start)",
                                               imagePath: try h.value(s, "ImagePath")?.string.map { oneLineText($0) })
                }.sorted { $0.name.lowercased() < $1.name.lowercased() }
            },
            firewall: fact(system, "FirewallPolicy") { h in
                let base = "\(controlSet)\\Services\\SharedAccess\\Parameters\\FirewallPolicy"
                let profiles = [("domain", "DomainProfile"), ("private", "StandardProfile"), ("public", "PublicProfile")]
                let found = try profiles.compactMap { (label, key) -> WindowsInfo.FirewallProfile? in
                    try h.value("\(base)\\\(key)", "EnableFirewall")?.dword.map { WindowsInfo.FirewallProfile(profile: label, enabled: $0 != 0) }
                }
                return found.isEmpty ? nil : found
            },
            rdpEnabled: fact(system, "fDenyTSConnections") { h in
                try h.value("\(controlSet)\\Control\\Terminal Server", "fDenyTSConnections")?.dword.map { $0 == 0 }
            },
            hives: hives)
        var os = windowsOS(volume: volume)
        let why = "not in the SOFTWARE hive"
        if let name = info.productName.value {
            os.prettyName = .known(name + (info.displayVersion.value.map { " \($0)" } ?? ""))
        } else { os.prettyName = .unknown(reason: info.productName.unknownReason ?? why) }
        os.versionId = info.build.value.map { .known($0) } ?? .unknown(reason: info.build.unknownReason ?? why)
        os.osReleasePath = .unknown(reason: "a Windows guest has no os-release; facts come from its registry")
        return (os, info)
    }

    /// The account domain SID at the end of SAM\Domains\Account's V value (S-1-5-21-a-b-c).
    static func machineSID(_ v: [UInt8]) -> String? {
        guard v.count >= 24 else { return nil }
        let s = Array(v.suffix(24))
        guard s[0] == 1, s[1] == 4, s[2..<8] == [0, 0, 0, 0, 0, 5][...], let first = s.peekLE(8, as: UInt32.self), first == 21 else { return nil }
        let subs = (0..<3).compactMap { s.peekLE(12 + 4 * $0, as: UInt32.self) }
        return "S-1-5-21-" + subs.map(String.init).joined(separator: "-")
    }

    static func mountedDevice(_ d: [UInt8]) -> String {
        if d.count == 12, let sig = d.peekLE(0, as: UInt32.self), let off = d.peekLE(4, as: UInt64.self) {
            return "mbr signature 0x" + String(sig, radix: 16) + " offset \(off)"
        }
        if d.count == 24, Array(d.prefix(8)) == Array("DMIO:ID:".utf8) {
            // A mixed-endian GUID: the first three groups little-endian, as Windows stores them.
            let g = Array(d.suffix(16))
            let ordered = Array(g[0..<4].reversed()) + Array(g[4..<6].reversed()) + Array(g[6..<8].reversed()) + Array(g[8..<16])
            return "gpt partition {" + formatUUID(ordered) + "}"
        }
        return "\(d.count) bytes"
    }

    static func accounts(_ h: RegistryHive) throws -> [WindowsInfo.Account]? {
        guard let names = try h.key("SAM\\Domains\\Account\\Users\\Names") else { return nil }
        return try h.subkeys(names).map { n -> WindowsInfo.Account in
            // The RID is the type of the name key's default value.
            let rid = try h.values(n).first { $0.name.isEmpty }?.rawType ?? 0
            var disabled: Fact<Bool> = .unknown(reason: "no F value for RID \(rid)")
            var lastLogon: String?
            if let f = try h.value("SAM\\Domains\\Account\\Users\\" + String(format: "%08X", rid), "F")?.data, f.count >= 0x3A {
                if let acb = f.peekLE(0x38, as: UInt16.self) { disabled = .known(acb & 0x0001 != 0) }
                if let ft = f.peekLE(8, as: UInt64.self), ft != 0 { lastLogon = rfc3339(RegistryHive.unixTime(ft)) }
            }
            return WindowsInfo.Account(name: oneLineText(n.name), rid: rid, disabled: disabled, lastLogon: lastLogon)
        }.sorted { $0.rid < $1.rid }
    }

    static func installedSoftware(_ h: RegistryHive) throws -> [WindowsInfo.Software] {
        var out: [WindowsInfo.Software] = []
        for (path, view) in [("Microsoft\\Windows\\CurrentVersion\\Uninstall", "64-bit"),
                             ("WOW6432Node\\Microsoft\\Windows\\CurrentVersion\\Uninstall", "32-bit")] {
            guard let k = try h.key(path) else { continue }
            for s in try h.subkeys(k) {
                guard let name = try h.value(s, "DisplayName")?.string, !name.isEmpty else { continue }
                out.append(WindowsInfo.Software(name: oneLineText(name), version: try h.value(s, "DisplayVersion")?.string.map { oneLineText($0) },
                                                publisher: try h.value(s, "Publisher")?.string.map { oneLineText($0) }, view: view))
            }
        }
        return out.sorted { ($0.name.lowercased(), $0.view) < ($1.name.lowercased(), $1.view) }
    }

    static func rfc3339(_ t: Int64) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime]
        return f.string(from: Date(timeIntervalSince1970: TimeInterval(t)))
    }

    /// Registry strings are guest-controlled: one printable line.
    static func oneLineText(_ s: String) -> String { TerminalText.line(s) }
}
