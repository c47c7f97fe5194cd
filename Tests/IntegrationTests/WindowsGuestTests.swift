import Foundation
import Testing
import WardenCore
import WardenTestSupport

/// A Windows-shaped disk built with real tools: SOFTWARE, SYSTEM and SAM hives written by hivex
/// (`hivexregedit --merge`), placed in an NTFS volume by the ntfs-3g driver (FUSE, on a file the
/// test made), in an MBR partition of a qcow2 disk. `warden inspect` must report what the hives
/// say (hivexget is the oracle), and `discover` must catch two copies sharing MachineGuid and SID.
enum WindowsFixture {
    static let machineGuid = "4c4c4544-0042-3610-8052-b4c04f4e3132"
    static let sid: [UInt32] = [1_111_111_111, 2_222_222_222, 3_333_333_333]
    static let hashMarker = "NEVER-PRINT-THIS-HASH"

    static func f(_ acb: UInt16, lastLogon: UInt64) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 80)
        for i in 0..<8 { b[8 + i] = UInt8(truncatingIfNeeded: lastLogon >> (8 * UInt64(i))) }
        b[0x38] = UInt8(acb & 0xFF); b[0x39] = UInt8(acb >> 8)
        return b
    }

    static var software: String {
        let cv = "Microsoft\\Windows NT\\CurrentVersion"
        let un = "Microsoft\\Windows\\CurrentVersion\\Uninstall"
        let cbs = "Microsoft\\Windows\\CurrentVersion\\Component Based Servicing\\Packages"
        typealias R = RegistryFixtures
        return R.reg([
            (cv, [R.sz("ProductName", "Windows Server 2022 Datacenter"), R.sz("EditionID", "ServerDatacenter"), R.sz("DisplayVersion", "21H2"),
                  R.sz("CurrentVersion", "6.3"), R.sz("CurrentBuild", "20348"), R.sz("CurrentBuildNumber", "20348"), R.dword("UBR", 2031),
                  R.dword("InstallDate", 1_700_000_000), R.sz("SystemRoot", "C:\\Windows"), R.dword("CurrentMajorVersionNumber", 10),
                  R.dword("CurrentMinorVersionNumber", 0), R.sz("InstallationType", "Server")]),
            ("Microsoft\\Cryptography", [R.sz("MachineGuid", machineGuid)]),
            ("\(un)\\7-Zip", [R.sz("DisplayName", "7-Zip 23.01 (x64)"), R.sz("DisplayVersion", "23.01"), R.sz("Publisher", "Igor Pavlov")]),
            ("\(un)\\OpenSSH", [R.sz("DisplayName", "OpenSSH"), R.sz("DisplayVersion", "9.5.0.0"), R.sz("Publisher", "Microsoft Corporation")]),
            ("\(un)\\NoDisplayName", [R.sz("Comment", "no DisplayName: not listed")]),
            ("WOW6432Node\\\(un)\\Notepad++", [R.sz("DisplayName", "Notepad++ (32-bit x86)"), R.sz("DisplayVersion", "8.5.8"), R.sz("Publisher", "Notepad++ Team")]),
            ("\(cbs)\\Package_for_KB5031364~31bf3856ad364e35~amd64~~20348.2031.1.5", []),
            ("\(cbs)\\Package_for_KB5030216~31bf3856ad364e35~amd64~~20348.1960.1.1", []),
            ("\(cbs)\\Package_for_RollupFix~31bf3856ad364e35~amd64~~20348.2031.1.5", []),
        ])
    }

    static var system: String {
        let cs = "ControlSet001"
        typealias R = RegistryFixtures
        let mbr: [UInt8] = [0xCD, 0xAB, 0x34, 0x12, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00]
        return R.reg([
            ("Select", [R.dword("Current", 1)]),
            ("\(cs)\\Control\\ComputerName\\ComputerName", [R.sz("ComputerName", "WIN-SRV01")]),
            ("\(cs)\\Control\\Terminal Server", [R.dword("fDenyTSConnections", 0)]),
            ("\(cs)\\Services\\Tcpip\\Parameters", [R.sz("Domain", "corp.example"), R.sz("Hostname", "win-srv01")]),
            ("\(cs)\\Services\\sshd", [R.dword("Type", 0x10), R.dword("Start", 2), R.sz("ImagePath", "C:\\Windows\\System32\\OpenSSH\\sshd.exe")]),
            ("\(cs)\\Services\\Spooler", [R.dword("Type", 0x110), R.dword("Start", 4), R.sz("ImagePath", "C:\\Windows\\System32\\spoolsv.exe")]),
            ("\(cs)\\Services\\TermService", [R.dword("Type", 0x20), R.dword("Start", 3),
                                              R.sz("ImagePath", "%SystemRoot%\\System32\\svchost.exe -k NetworkService", type: 2)]),
            ("\(cs)\\Services\\disk", [R.dword("Type", 1), R.dword("Start", 0)]),
            ("\(cs)\\Services\\SharedAccess\\Parameters\\FirewallPolicy\\DomainProfile", [R.dword("EnableFirewall", 1)]),
            ("\(cs)\\Services\\SharedAccess\\Parameters\\FirewallPolicy\\StandardProfile", [R.dword("EnableFirewall", 1)]),
            ("\(cs)\\Services\\SharedAccess\\Parameters\\FirewallPolicy\\PublicProfile", [R.dword("EnableFirewall", 0)]),
            ("MountedDevices", [R.binary("\\DosDevices\\C:", mbr)]),
        ])
    }

    static var sam: String {
        typealias R = RegistryFixtures
        var v = [UInt8](repeating: 0x41, count: 40) + [1, 4, 0, 0, 0, 0, 0, 5, 21, 0, 0, 0]
        for s in sid { v += [UInt8(s & 0xFF), UInt8(s >> 8 & 0xFF), UInt8(s >> 16 & 0xFF), UInt8(s >> 24)] }
        let u = "SAM\\Domains\\Account\\Users"
        let logon2024: UInt64 = 133_485_408_000_000_000   // 2024-01-01T00:00:00Z
        return R.reg([
            ("SAM\\Domains\\Account", [R.binary("V", v)]),
            ("\(u)\\Names\\Administrator", [R.binary("", [], type: 0x1F4)]),
            ("\(u)\\Names\\Guest", [R.binary("", [], type: 0x1F5)]),
            ("\(u)\\Names\\alice", [R.binary("", [], type: 0x3E9)]),
            ("\(u)\\000001F4", [R.binary("F", f(0x0210, lastLogon: logon2024)), R.binary("V", Array(hashMarker.utf8))]),
            ("\(u)\\000001F5", [R.binary("F", f(0x0215, lastLogon: 0))]),
            ("\(u)\\000003E9", [R.binary("F", f(0x0210, lastLogon: 0))]),
        ])
    }

    /// A PE32+ header (x86-64 console) standing in for cmd.exe: libguestfs looks for it to
    /// recognise a system root and reads its architecture.
    static let pe = #"""
    import struct, sys
    dos = bytearray(64); dos[0:2] = b"MZ"; struct.pack_into("<I", dos, 0x3C, 0x40)
    coff = b"PE\0\0" + struct.pack("<HHIIIHH", 0x8664, 1, 0, 0, 0, 0xF0, 0x22)
    opt = bytearray(0xF0); struct.pack_into("<H", opt, 0, 0x20B); struct.pack_into("<H", opt, 68, 3); struct.pack_into("<I", opt, 108, 16)
    sect = struct.pack("<8sIIIIIIHHI", b".text", 0x10, 0x1000, 0x200, 0x200, 0, 0, 0, 0, 0x60000020)
    body = bytes(dos) + coff + bytes(opt) + sect
    open(sys.argv[1], "wb").write(body + b"\0" * (0x400 - len(body)))
    """#

    static func dir() throws -> String {
        try Fixtures.cached("windows-disk", recipe: RegistryFixtures.minimalHiveScript + software + system + sam + pe + "v3") { dir in
            try pe.write(toFile: dir + "/pe.py", atomically: true, encoding: .utf8)
            try RegistryFixtures.minimalHiveScript.write(toFile: dir + "/minimal.py", atomically: true, encoding: .utf8)
            for (name, reg) in [("SOFTWARE", software), ("SYSTEM", system), ("SAM", sam)] {
                try reg.write(toFile: "\(dir)/\(name).reg", atomically: true, encoding: .utf8)
            }
            try Tool.run(["bash", "-euo", "pipefail", "-c", #"""
            D="$1"; cd "$D"
            for h in SOFTWARE SYSTEM SAM; do python3 minimal.py $h; hivexregedit --merge $h $h.reg; done
            truncate -s 32M ntfs.img
            mkntfs -q -F -f -L System -p 2048 -H 16 -S 63 ntfs.img >/dev/null 2>&1
            mkdir mnt
            ntfs-3g ntfs.img mnt
            trap 'umount "$D/mnt" 2>/dev/null || true' EXIT
            mkdir -p mnt/Windows/System32/config "mnt/Program Files/7-Zip" mnt/Users/Administrator/Desktop mnt/Users/alice
            cp SOFTWARE SYSTEM SAM mnt/Windows/System32/config/
            python3 pe.py mnt/Windows/System32/cmd.exe
            : > mnt/Windows/System32/config/SYSTEM.LOG1
            printf 'notes\r\n' > mnt/Users/alice/todo.txt
            umount "$D/mnt"; trap - EXIT
            truncate -s 40M disk.raw
            printf 'label: dos\nlabel-id: 0x1234abcd\nstart=2048, size=65536, type=7, bootable\n' | sfdisk -q disk.raw
            dd if=ntfs.img of=disk.raw bs=512 seek=2048 conv=notrunc status=none
            qemu-img convert -f raw -O qcow2 disk.raw disk.qcow2
            rm -rf disk.raw ntfs.img mnt
            """#, "windows", dir], timeout: 600)
        }
    }

    static var available: Bool { NTFSAvailability.available && FileManager.default.isExecutableFile(atPath: "/usr/bin/hivexregedit") }
}

enum NTFSAvailability {
    static var available: Bool {
        getuid() == 0 && FileManager.default.fileExists(atPath: "/dev/fuse")
            && ["/usr/bin/ntfs-3g", "/usr/sbin/mkntfs"].allSatisfy { FileManager.default.isExecutableFile(atPath: $0) }
    }
}

@Suite(.enabled(if: WindowsFixture.available, "needs root, /dev/fuse, ntfs-3g and hivex"))
struct WindowsGuestTests {
    @Test func inspectReportsWhatTheHivesSay() throws {
        let dir = try WindowsFixture.dir()
        let disk = dir + "/disk.qcow2"
        let r = try WardenRun.run(["inspect", "--json", disk])
        #expect(r.status == 0, "\(r.stderr)")
        try JSONSchemaTests().validate(r.stdout, schema: "inspect.v1.json")
        #expect(!r.stdoutText.contains(WindowsFixture.hashMarker), "SAM's V values (hashes) are never read out")
        let doc = try #require((try JSONSerialization.jsonObject(with: r.stdout) as? [[String: Any]])?.first)
        let w = try #require(doc["windows"] as? [String: Any])
        func hivexget(_ hive: String, _ key: String, _ name: String) throws -> String {
            try Tool.run(["hivexget", dir + "/" + hive, key, name]).stdoutText.trimmingCharacters(in: .newlines)
        }
        let cv = "\\Microsoft\\Windows NT\\CurrentVersion"
        #expect(w["product_name"] as? String == (try hivexget("SOFTWARE", cv, "ProductName")))
        #expect(w["edition_id"] as? String == "ServerDatacenter" && w["display_version"] as? String == "21H2")
        #expect(w["build"] as? String == "20348.\(try hivexget("SOFTWARE", cv, "UBR"))")
        #expect(w["install_date"] as? String == "2023-11-14T22:13:20Z")
        #expect(w["system_root"] as? String == "C:\\Windows")
        #expect(w["computer_name"] as? String == (try hivexget("SYSTEM", "\\ControlSet001\\Control\\ComputerName\\ComputerName", "ComputerName")))
        #expect(w["domain"] as? String == "corp.example")
        #expect(w["machine_guid"] as? String == WindowsFixture.machineGuid)
        #expect(w["machine_sid"] as? String == "S-1-5-21-1111111111-2222222222-3333333333")
        #expect(w["rdp_enabled"] as? Bool == true)
        #expect((w["updates"] as? [String]) == ["KB5030216", "KB5031364"])
        let drives = try #require(w["drive_letters"] as? [[String: Any]])
        #expect(drives.count == 1 && drives[0]["letter"] as? String == "C:" && drives[0]["target"] as? String == "mbr signature 0x1234abcd offset 1048576")
        let accounts = try #require(w["accounts"] as? [[String: Any]])
        #expect(accounts.map { $0["name"] as? String } == ["Administrator", "Guest", "alice"])
        #expect(accounts.map { $0["rid"] as? Int } == [500, 501, 1001])
        #expect(accounts.map { $0["disabled"] as? Bool } == [false, true, false])
        #expect(accounts[0]["last_logon"] as? String == "2024-01-01T00:00:00Z" && accounts[2]["last_logon"] == nil)
        let software = try #require(w["software"] as? [[String: Any]])
        #expect(software.map { $0["name"] as? String } == ["7-Zip 23.01 (x64)", "Notepad++ (32-bit x86)", "OpenSSH"])
        #expect(software[1]["view"] as? String == "32-bit" && software[2]["publisher"] as? String == "Microsoft Corporation")
        let services = try #require(w["services"] as? [[String: Any]])
        #expect(services.map { $0["name"] as? String } == ["Spooler", "sshd", "TermService"], "drivers are not services")
        #expect(services.map { $0["start"] as? String } == ["disabled", "automatic", "manual"])
        #expect(services[2]["image_path"] as? String == "%SystemRoot%\\System32\\svchost.exe -k NetworkService")
        let firewall = try #require(w["firewall"] as? [[String: Any]])
        #expect(firewall.map { "\($0["profile"]!)=\($0["enabled"]!)" } == ["domain=1", "private=1", "public=0"])
        let hives = try #require(w["hives"] as? [[String: Any]])
        #expect(hives.first { $0["name"] as? String == "SYSTEM" }?["logs"] as? [String] == ["SYSTEM.LOG1"])
        let os = try #require(doc["os"] as? [String: Any])
        #expect(os["pretty_name"] as? String == "Windows Server 2022 Datacenter 21H2" && os["version_id"] as? String == "20348.2031")

        let human = try WardenRun.run(["inspect", disk])
        #expect(human.status == 0 && human.stdoutText.contains("computer name: WIN-SRV01, domain corp.example"), "\(human.stdoutText)")
        #expect(human.stdoutText.contains("accounts:      Administrator (500), Guest (501, disabled), alice (1001)"), "\(human.stdoutText)")
        // image ls and cat read the NTFS volume, case-insensitively.
        #expect(try WardenRun.run(["image", "cat", disk, "/users/ALICE/TODO.TXT"]).stdoutText == "notes\r\n")
    }

    /// The SBOM lists the OS and every program, and passes the CycloneDX 1.5 and SPDX 2.3 validators.
    @Test func sbomListsThePrograms() throws {
        let dir = try WindowsFixture.dir()
        let sboms = SBOMTests()
        let cdx = try sboms.sbom("cyclonedx", dir + "/disk.qcow2")
        #expect(cdx.status == 0, "\(cdx.stderr)")
        try sboms.validateCycloneDX(cdx.stdout)
        let doc = try sboms.json(cdx.stdout)
        let comps = try #require(doc["components"] as? [[String: Any]])
        #expect(comps.first?["type"] as? String == "operating-system" && comps.first?["version"] as? String == "20348.2031")
        #expect(comps.dropFirst().map { $0["name"] as? String } == ["7-Zip 23.01 (x64)", "Notepad++ (32-bit x86)", "OpenSSH"])
        #expect(try sboms.sbom("cyclonedx", dir + "/disk.qcow2").stdout == cdx.stdout, "same guest, same document")
        let spdx = try sboms.sbom("spdx", dir + "/disk.qcow2")
        #expect(spdx.status == 0, "\(spdx.stderr)")
        try sboms.validateSPDX(spdx.stdout)
        #expect(((try sboms.json(spdx.stdout))["packages"] as? [Any])?.count == 4)
    }

    /// libguestfs's virt-inspector on the same disk agrees on the fields both report.
    @Test(.enabled(if: GuestFixtures.virtInspectorAvailable, "needs virt-inspector (libguestfs-tools)"))
    func virtInspectorAgrees() throws {
        let dir = try WindowsFixture.dir()
        let xml = try Tool.run(["virt-inspector", "--format=qcow2", "-a", dir + "/disk.qcow2"],
                               environment: ["LIBGUESTFS_BACKEND": "direct", "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"], timeout: 900).stdoutText
        func field(_ name: String) -> String? {
            guard let a = xml.range(of: "<\(name)>"), let b = xml.range(of: "</\(name)>", range: a.upperBound..<xml.endIndex) else { return nil }
            return String(xml[a.upperBound..<b.lowerBound])
        }
        let doc = try #require((try JSONSerialization.jsonObject(with: try WardenRun.run(["inspect", "--json", dir + "/disk.qcow2"]).stdout) as? [[String: Any]])?.first)
        let w = try #require(doc["windows"] as? [String: Any])
        #expect(field("name") == "windows" && field("arch") == "x86_64", "\(xml.prefix(2000))")
        #expect(field("product_name") == w["product_name"] as? String)
        // libguestfs takes Tcpip's Hostname, Warden the NetBIOS ComputerName: the same name, case aside.
        #expect(field("hostname")?.lowercased() == (w["computer_name"] as? String)?.lowercased())
        #expect(field("windows_systemroot")?.lowercased() == "/windows")
        #expect(field("windows_current_control_set") == "ControlSet001")
        // MountedDevices' C: names the disk's MBR signature and the partition's offset: both map it to partition 1.
        #expect(xml.contains("<drive_mapping name=\"C\">/dev/sda1</drive_mapping>"), "\(xml.prefix(3000))")
        let theirs = xml.components(separatedBy: "<display_name>").dropFirst().compactMap { $0.components(separatedBy: "</display_name>").first }
        let ours = (w["software"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String }
        #expect(Set(theirs) == Set(ours), "\(theirs) \(ours)")
    }

    /// Two copies of the disk (one booted and changed since): discover names the shared
    /// MachineGuid and machine SID, as it does machine-ids and SSH host keys.
    @Test func discoverCatchesWindowsCloneCollisions() throws {
        let dir = try WindowsFixture.dir()
        try Fixtures.withTemporaryDirectory { tmp in
            try FileManager.default.copyItem(atPath: dir + "/disk.qcow2", toPath: tmp + "/a.qcow2")
            try FileManager.default.copyItem(atPath: dir + "/disk.qcow2", toPath: tmp + "/b.qcow2")
            try Tool.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 38M 4k", tmp + "/b.qcow2"])
            try Tool.run(["qemu-img", "create", "-q", "-f", "qcow2", tmp + "/db.qcow2", "1M"])
            #expect(try WardenRun.run(["ledger", "init", "--db", tmp + "/w.db"]).status == 0)
            let r = try WardenRun.run(["discover", tmp, "--json", "--db", tmp + "/w.db"])
            #expect(r.status == 0, "\(r.stderr)")
            try JSONSchemaTests().validate(r.stdout, schema: "discover.v1.json")
            let doc = try #require(try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any])
            let collisions = try #require(doc["collisions"] as? [[String: Any]])
            let kinds = Dictionary(collisions.map { ($0["kind"] as? String ?? "", $0["value"] as? String ?? "") }, uniquingKeysWith: { a, _ in a })
            #expect(kinds["machine-id"] == WindowsFixture.machineGuid && kinds["machine-sid"] == "S-1-5-21-1111111111-2222222222-3333333333", "\(collisions)")
            let images = try #require(doc["images"] as? [[String: Any]])
            #expect(images.filter { ($0["os"] as? String) == "windows 20348.2031" }.count == 2, "\(images)")
        }
    }
}
