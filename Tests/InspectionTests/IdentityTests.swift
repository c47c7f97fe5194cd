import Foundation
import Testing
import WardenCore
import WardenTestSupport
import GuestFS
@testable import Inspection

@Suite struct OSInfoTests {
    @Test func fullGuestOS() throws {
        let dir = try IdentityFixture.build("identity-full", IdentityFixture.full)
        let os = Inspection.operatingSystem(try IdentityFixture.open(dir))
        #expect(os.osReleasePath == .known("/etc/os-release"))
        #expect(os.id == .known("ubuntu"))
        #expect(os.versionId == .known("24.04"))
        #expect(os.prettyName == .known("Ubuntu 24.04.1 LTS"))
        #expect(os.idLike == .known(["debian"]))
        #expect(os.family == .known(.debian))
        #expect(os.initSystem == .known(.systemd))
        #expect(os.initEvidence == "/sbin/init -> /lib/systemd/systemd")
        // Oracle: readelf on the same binary the guest holds.
        let arch = try #require(os.architecture.value)
        #expect(arch.binary == "/bin/sh")
        let readelf = try Tool.run(["readelf", "-h", dir + "/root/usr/bin/dash"]).stdoutText
        let machineLine = try #require(readelf.split(separator: "\n").first { $0.contains("Machine:") })
        let expected: [String: String] = ["Advanced Micro Devices X86-64": "x86_64", "AArch64": "aarch64",
                                          "RISC-V": "riscv64", "IBM S/390": "s390x", "Intel 80386": "i386"]
        let name = machineLine.split(separator: ":", maxSplits: 1)[1].trimmingCharacters(in: .whitespaces)
        #expect(arch.name == expected[name])
        #expect(readelf.contains("ELF\(arch.bits)"))
        #expect(readelf.contains(arch.endianness == "little" ? "little endian" : "big endian"))
    }

    @Test func alpineOS() throws {
        let dir = try IdentityFixture.build("identity-alpine", IdentityFixture.alpine)
        let g = try IdentityFixture.open(dir)
        let os = Inspection.operatingSystem(g)
        #expect(os.osReleasePath == .known("/usr/lib/os-release"))
        #expect(os.id == .known("alpine"))
        #expect(os.versionId == .known("3.20.3"))
        #expect(os.family == .known(.alpine))
        #expect(os.idLike.value == nil)
        #expect(os.initSystem == .known(.openrc))
        #expect(os.architecture.value?.binary == "/bin/busybox")
        let id = Inspection.identity(g)
        #expect(id.hostname == .known("alp"))
        #expect(id.hostnameSource == .known("/etc/HOSTNAME"))
        #expect(id.machineId.unknownReason?.contains("uninitialized") == true)
        #expect(id.dbusMachineId.value == nil)
        #expect(id.randomSeed.present == false)
        #expect(id.cloudInitInstanceId.value == nil)
        // No passwd, no sshd_config: unknowns, never a throw.
        let acc = Inspection.accounts(g)
        #expect(acc.accounts.unknownReason != nil)
        let ssh = Inspection.ssh(g)
        #expect(ssh.hostKeys.isEmpty)
        #expect(ssh.sshd.permitRootLogin.unknownReason != nil)
        let report = Inspection.identityReport(g)
        let json = try IdentityFixture.json(report)
        let dec = JSONDecoder()
        dec.keyDecodingStrategy = .convertFromSnakeCase
        #expect(try dec.decode(IdentityReport.self, from: Data(json.utf8)) == report)
    }

    @Test func osReleaseVariants() {
        let cases: [(String, String?, OSFamily?, String?)] = [
            ("PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n", "debian", .debian, "12"),
            ("NAME=\"Rocky Linux\"\nVERSION=\"9.4 (Blue Onyx)\"\nID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\nVERSION_ID=\"9.4\"\n", "rocky", .rhel, "9.4"),
            ("NAME=\"openSUSE Leap\"\nVERSION=\"15.6\"\nID=\"opensuse-leap\"\nID_LIKE=\"suse opensuse\"\nVERSION_ID=\"15.6\"\n", "opensuse-leap", .suse, "15.6"),
            ("NAME=\"Arch Linux\"\nPRETTY_NAME=\"Arch Linux\"\nID=arch\nBUILD_ID=rolling\n", "arch", .arch, nil),
            ("ID=almalinux\nVERSION_ID='9.3'\n", "almalinux", .rhel, "9.3"),
            ("ID=sles\nVERSION_ID=\"15-SP5\"\n", "sles", .suse, "15-SP5"),
            ("ID=ol\nID_LIKE=\"fedora\"\n", "ol", .rhel, nil),
            ("ID=linuxmint\nID_LIKE=\"ubuntu debian\"\n", "linuxmint", .debian, nil),
            ("ID=nixos\n", "nixos", nil, nil),
        ]
        for (text, id, fam, ver) in cases {
            let f = OSRelease.parse(text)
            #expect(f["ID"] == id)
            #expect(f["VERSION_ID"] == ver)
            let like = f["ID_LIKE"].map { $0.split(separator: " ").map(String.init) } ?? []
            #expect(OSRelease.family(id: f["ID"], idLike: like) == fam)
        }
        // Quoting and escapes per os-release(5).
        let f = OSRelease.parse("A=\"x \\\"q\\\" \\$HOME \\\\ \\n\"\nB='lit \\n $x'\nC=plain\\ word\nD=\"unterminated\n1BAD=x\nE=\"a\"'b'c\n  F = x\n")
        #expect(f["A"] == "x \"q\" $HOME \\ \\n")
        #expect(f["B"] == "lit \\n $x")
        #expect(f["C"] == "plain word")
        #expect(f["D"] == nil)
        #expect(f["1BAD"] == nil)
        #expect(f["E"] == "abc")
    }

    @Test func elfHeaders() throws {
        func header(class c: UInt8, data d: UInt8, machine m: UInt16) -> [UInt8] {
            var h = [UInt8](repeating: 0, count: 64)
            h[0] = 0x7F; h[1] = 0x45; h[2] = 0x4C; h[3] = 0x46; h[4] = c; h[5] = d; h[6] = 1
            if d == 1 { h[18] = UInt8(m & 0xFF); h[19] = UInt8(m >> 8) } else { h[18] = UInt8(m >> 8); h[19] = UInt8(m & 0xFF) }
            return h
        }
        let cases: [(UInt8, UInt8, UInt16, String)] = [
            (2, 1, 62, "x86_64"), (2, 1, 183, "aarch64"), (1, 1, 3, "i386"), (1, 1, 40, "armv7l"),
            (2, 1, 243, "riscv64"), (2, 1, 21, "ppc64le"), (2, 2, 21, "ppc64"), (2, 2, 22, "s390x"),
        ]
        for (c, d, m, name) in cases {
            #expect(try ELF.architecture(header: header(class: c, data: d, machine: m), binary: "x").name == name)
        }
        #expect(throws: WardenError.self) { try ELF.architecture(header: [0x7F, 0x45, 0x4C], binary: "x") }
        #expect(throws: WardenError.self) { try ELF.architecture(header: [UInt8](repeating: 0, count: 64), binary: "x") }
        #expect(throws: WardenError.self) { try ELF.architecture(header: header(class: 3, data: 1, machine: 62), binary: "x") }
        #expect(throws: WardenError.self) { try ELF.architecture(header: header(class: 2, data: 1, machine: 9999), binary: "x") }
    }
}

@Suite struct IdentityReaderTests {
    @Test func identityFacts() throws {
        let dir = try IdentityFixture.build("identity-full", IdentityFixture.full)
        let id = Inspection.identity(try IdentityFixture.open(dir))
        #expect(id.hostname == .known("web-01.example.com"))
        #expect(id.hostnameSource == .known("/etc/hostname"))
        #expect(id.machineId == .known("0123456789abcdef0123456789abcdef"))
        #expect(id.dbusMachineId == .known("0123456789abcdef0123456789abcdef"))
        #expect(id.dbusMachineIdLinksToEtc)
        #expect(id.randomSeed == RandomSeedInfo(path: "/var/lib/systemd/random-seed", present: true, size: 512))
        #expect(id.cloudInitInstanceId == .known("i-0abc123def456"))
        #expect(id.persistentNetRules.map(\.macAddress) == ["52:54:00:12:34:56", "52:54:00:ab:cd:ef"])
        #expect(id.persistentNetRules.map(\.name) == ["eth0", "eth1"])
        #expect(id.persistentNetRules.map(\.line) == [2, 3])
        let nm = id.networkManagerConnections
        #expect(nm.map(\.path) == ["/etc/NetworkManager/system-connections/Home WiFi.nmconnection",
                                   "/etc/NetworkManager/system-connections/wired.nmconnection"])
        #expect(nm.map(\.id) == ["Home WiFi", "Wired"])
        #expect(nm.flatMap(\.macAddresses) == [NMMACAddress(section: "wifi", key: "mac-address", value: "AA:BB:CC:DD:EE:FF"),
                                               NMMACAddress(section: "ethernet", key: "mac-address", value: "52:54:00:12:34:56")])
        #expect(id.dhcpLeases == ["/var/lib/dhcp/dhclient.eth0.leases", "/var/lib/NetworkManager/internal-abc-eth0.lease"])
        let json = try IdentityFixture.json(id)
        #expect(!json.contains(IdentityFixture.psk))
        #expect(!json.contains("also-secret"))
        #expect(json.contains("\"machine_id\":\"0123456789abcdef0123456789abcdef\""))
    }

    @Test func machineIDValidation() throws {
        let json = try IdentityFixture.json(Fact<String>.unknown(reason: "r"))
        #expect(json == "{\"unknown\":\"r\"}")
        let back = try JSONDecoder().decode(Fact<String>.self, from: Data("\"abc\"".utf8))
        #expect(back == .known("abc"))
        let back2 = try JSONDecoder().decode(Fact<Int>.self, from: Data("{\"unknown\":\"why\"}".utf8))
        #expect(back2 == .unknown(reason: "why"))
    }
}

@Suite struct AccountsReaderTests {
    @Test func accountsAndSudo() throws {
        let dir = try IdentityFixture.build("identity-full", IdentityFixture.full)
        let acc = Inspection.accounts(try IdentityFixture.open(dir))
        let list = try #require(acc.accounts.value)
        let by = Dictionary(uniqueKeysWithValues: list.map { ($0.name, $0) })
        #expect(list.map(\.name) == ["root", "daemon", "alice", "bob", "carol", "dave", "eve", "frank", "gina"])
        #expect(acc.warnings.contains { $0.contains("/etc/passwd:10") })
        #expect(by["root"]?.passwordState == "hash:sha512")
        #expect(by["daemon"]?.passwordState == "locked")
        #expect(by["alice"]?.passwordState == "hash:yescrypt")
        #expect(by["bob"]?.passwordState == "locked")
        #expect(by["carol"]?.passwordState == "empty")
        #expect(by["dave"]?.passwordState == "none")
        #expect(by["eve"]?.passwordState == "hash:bcrypt")
        #expect(by["frank"]?.passwordState == "hash:md5")
        #expect(by["gina"]?.passwordState == "hash:unknown")
        #expect(by["alice"]?.gecos == "Alice Admin,,,")
        #expect(by["alice"]?.home == "/home/alice")
        #expect(by["daemon"]?.shell == "/usr/sbin/nologin")
        #expect(by["root"]?.canLogIn == true)
        #expect(by["daemon"]?.canLogIn == false)
        #expect(by["bob"]?.canLogIn == false)
        #expect(by["carol"]?.canLogIn == true)
        #expect(by["eve"]?.canLogIn == false)
        #expect(by["alice"]?.groups == ["alice", "sudo"])
        #expect(by["gina"]?.groups == ["ops"])
        // Admin power.
        #expect(by["root"]?.adminVia == ["uid 0", "sudoers:/etc/sudoers:5"])
        #expect(by["alice"]?.adminVia == ["group:sudo", "sudoers:/etc/sudoers:6"])
        #expect(by["dave"]?.adminVia == ["sudoers:/etc/sudoers.d/10-dave:1"])
        #expect(by["dave"]?.sudoNoPassword == true)
        #expect(by["frank"]?.isAdmin == false)       // OPS gets only systemctl/journalctl
        #expect(by["frank"]?.sudoNoPassword == true)
        #expect(by["eve"]?.sudoNoPassword == true)
        #expect(by["gina"]?.isAdmin == false)
        #expect(by["carol"]?.isAdmin == false)       // sudoers.d/file.bak is skipped (has a dot)
        #expect(by["bob"]?.isAdmin == false)
        #expect(acc.sudoersFiles == ["/etc/sudoers", "/etc/sudoers.d/10-dave", "/etc/sudoers.d/20-loop",
                                     "/etc/sudoers.d/30-ops", "/etc/sudoers.d/30-ops"])
        #expect(acc.warnings.contains { $0.contains("include loop on /etc/sudoers") })
        let ops = try #require(acc.sudoRules.first { $0.users == ["OPS"] })
        #expect(ops.expandedUsers == ["frank", "eve"])
        #expect(ops.commands == ["/usr/bin/systemctl", "/usr/bin/journalctl"])
        #expect(ops.runAs == "root")
        #expect(ops.noPassword && !ops.allCommands)
        #expect(ops.source == "/etc/sudoers:7")
        let gops = try #require(acc.sudoRules.first { $0.users == ["%ops"] })
        #expect(gops.commands == ["/usr/bin/apt"])
        #expect(by["gina"]?.sudoNoPassword == false)
        let json = try IdentityFixture.json(acc)
        #expect(!json.contains(IdentityFixture.hashMarker))
        #expect(!json.contains("$6$"))
    }

    @Test func passwordStates() {
        #expect(PasswordState.classify("") == "empty")
        #expect(PasswordState.classify("!") == "locked")
        #expect(PasswordState.classify("*") == "locked")
        #expect(PasswordState.classify("!!") == "locked")
        #expect(PasswordState.classify("$5$x$y") == "hash:sha256")
        #expect(PasswordState.classify("$2a$x") == "hash:bcrypt")
        #expect(PasswordState.classify("$2y$x") == "hash:bcrypt")
        #expect(PasswordState.classify("$gy$x") == "hash:gost-yescrypt")
        #expect(PasswordState.classify("$7$x") == "hash:scrypt")
        #expect(PasswordState.classify("abcdefghijklm") == "hash:unknown")
    }

    @Test func sudoersLineParsing() {
        var s = SudoersScan()
        s.parseEntry("alice , bob  ALL = (ALL : ALL) NOPASSWD: SETENV: ALL", source: "t:1")
        s.parseEntry("#1000 ALL=(ALL) PASSWD: /bin/ls, NOPASSWD: /bin/cat", source: "t:2")
        #expect(s.rules[0].users == ["alice", "bob"])
        #expect(s.rules[0].hosts == ["ALL"])
        #expect(s.rules[0].allCommands && s.rules[0].noPassword)
        #expect(s.rules[1].users == ["#1000"])
        #expect(SudoersScan.matches(s.rules[1], user: "x", uid: 1000, groups: [], gids: []))
        #expect(SudoersScan.stripComment("#1000 ALL=ALL # note") == "#1000 ALL=ALL ")
        #expect(SudoersScan.stripComment("# just a comment").isEmpty)
    }
}

@Suite struct SSHReaderTests {
    func oracle(_ path: String) throws -> String {
        try Tool.run(["ssh-keygen", "-l", "-f", path]).stdoutText.trimmingCharacters(in: .newlines)
    }

    @Test func hostKeysMatchSSHKeygen() throws {
        let dir = try IdentityFixture.build("identity-full", IdentityFixture.full)
        let ssh = Inspection.ssh(try IdentityFixture.open(dir))
        let pubs = ssh.hostKeys.filter { $0.path.hasSuffix(".pub") }
        #expect(pubs.count == 6)
        for k in pubs {
            let key = try #require(k.publicKey.value, "\(k.path): \(k.publicKey.unknownReason ?? "")")
            #expect(key.fingerprintLine == (try oracle(dir + "/root" + k.path)), "\(k.path)")
            #expect(k.privateKey.present)
            #expect(k.privateKey.mode == "0600")
            #expect(k.privateKey.path + ".pub" == k.path)
        }
        let bits = Dictionary(uniqueKeysWithValues: pubs.map { ($0.path, $0.publicKey.value?.bits ?? 0) })
        #expect(bits["/etc/ssh/ssh_host_ed25519_key.pub"] == 256)
        #expect(bits["/etc/ssh/ssh_host_ecdsa384_key.pub"] == 384)
        #expect(bits["/etc/ssh/ssh_host_ecdsa521_key.pub"] == 521)
        #expect(bits["/etc/ssh/ssh_host_rsa_key.pub"] == 2048)
        #expect(bits["/etc/ssh/ssh_host_rsa3072_key.pub"] == 3072)
        let orphan = try #require(ssh.hostKeys.first { $0.path == "/etc/ssh/ssh_host_orphan_key" })
        #expect(orphan.publicKey.value == nil)
        #expect(orphan.privateKey.present)
        // Private key bytes never appear.
        let json = try IdentityFixture.json(ssh)
        let priv = try String(contentsOfFile: dir + "/root/etc/ssh/ssh_host_ed25519_key", encoding: .utf8)
        for line in priv.split(separator: "\n") where !line.hasPrefix("-----") {
            #expect(!json.contains(line))
        }
    }

    @Test func authorizedKeysMatchSSHKeygen() throws {
        let dir = try IdentityFixture.build("identity-full", IdentityFixture.full)
        let ssh = Inspection.ssh(try IdentityFixture.open(dir))
        #expect(ssh.authorizedKeys.map(\.path) == ["/root/.ssh/authorized_keys2", "/home/alice/.ssh/authorized_keys"])
        let alice = try #require(ssh.authorizedKeys.first { $0.user == "alice" })
        #expect(alice.keys.map(\.line) == [2, 3, 4])
        #expect(alice.invalidLines.count == 1)
        let lines = try String(contentsOfFile: dir + "/root/home/alice/.ssh/authorized_keys", encoding: .utf8)
            .split(separator: "\n", omittingEmptySubsequences: false)
        try Fixtures.withTemporaryDirectory { tmp in
            for k in alice.keys {
                let f = tmp + "/line\(k.line)"
                try String(lines[k.line - 1] + "\n").write(toFile: f, atomically: true, encoding: .utf8)
                #expect(k.key.fingerprintLine == (try oracle(f)))
            }
        }
        #expect(alice.keys[0].key.comment == "alice@laptop")
        #expect(alice.keys[0].options.isEmpty)
        #expect(alice.keys[1].key.type == "RSA" && alice.keys[1].key.bits == 3072)
        #expect(alice.keys[1].hasCommand && alice.keys[1].hasFrom)
        #expect(alice.keys[1].options == [SSHKeyOption(name: "command", value: "/usr/bin/backup --tag \"x y\""),
                                          SSHKeyOption(name: "from", value: "10.0.0.0/8,192.168.1.1"),
                                          SSHKeyOption(name: "no-pty", value: nil)])
        #expect(alice.keys[2].options == [SSHKeyOption(name: "restrict", value: nil)])
        #expect(alice.keys[2].key.comment == "")
        #expect(alice.keys[2].key.fingerprintLine.hasSuffix(" restrict (ECDSA)"))   // as ssh-keygen shows it
        let root = try #require(ssh.authorizedKeys.first { $0.user == "root" })
        #expect(root.keys.first?.key.fingerprint == alice.keys[0].key.fingerprint)
    }

    @Test func sshdEffectiveSettings() throws {
        let dir = try IdentityFixture.build("identity-full", IdentityFixture.full)
        let s = Inspection.sshdSettings(try IdentityFixture.open(dir))
        #expect(s.permitRootLogin == .known(SSHDSetting(value: "no", isDefault: false, source: "/etc/ssh/sshd_config.d/10-root.conf:1")))
        #expect(s.passwordAuthentication == .known(SSHDSetting(value: "no", isDefault: false, source: "/etc/ssh/sshd_config:4")))
        #expect(s.permitEmptyPasswords == .known(SSHDSetting(value: "no", isDefault: true, source: nil)))
        #expect(s.hasMatchBlocks)
        #expect(s.filesRead == ["/etc/ssh/sshd_config", "/etc/ssh/sshd_config.d/10-root.conf", "/etc/ssh/sshd_config.d/20-loop.conf"])
        #expect(s.warnings.contains { $0.contains("loop") })
        // Ports: the ListenAddress ports, and Port values for the address without one.
        #expect(s.ports == [22, 2200, 2201, 2222])
        #expect(SSHDConfigScan.listenPort("::1") == nil && SSHDConfigScan.listenPort("[::1]:70000") == nil && SSHDConfigScan.listenPort("h:22") == 22)
    }

    @Test func keyParsingRejectsGarbage() {
        #expect(throws: WardenError.self) { try SSHKeyParser.parse(keyType: "ssh-ed25519", base64: "AAAA", comment: "") }
        #expect(throws: WardenError.self) { try SSHKeyParser.parse(keyType: "ssh-ed25519", base64: "!!!", comment: "") }
        // Blob type differing from the declared type.
        let blob: [UInt8] = [0, 0, 0, 7] + Array("ssh-rsa".utf8) + [0, 0, 0, 1, 3, 0, 0, 0, 1, 5]
        #expect(throws: WardenError.self) {
            try SSHKeyParser.parse(keyType: "ssh-ed25519", base64: Substring(SSHKeyParser.encodeBase64(blob)), comment: "")
        }
        #expect(SSHKeyParser.decodeBase64("aGVsbG8=") == Array("hello".utf8))
        #expect(SSHKeyParser.encodeBase64(Array("hello".utf8)) == "aGVsbG8=")
        #expect(globMatch("*.conf", "10-a.conf") && !globMatch("*.conf", "a.conf.disabled"))
        #expect(globMatch("[0-9]?-*", "10-x") && !globMatch("[!0-9]*", "1x"))
    }
}

@Suite struct HostileInputTests {
    @Test func brokenGuestYieldsUnknownsNotErrors() throws {
        let dir = try IdentityFixture.build("identity-hostile", IdentityFixture.hostile)
        let g = try IdentityFixture.open(dir)
        let r = Inspection.identityReport(g)
        #expect(r.os.id.value == nil)                       // unterminated quote: skipped
        #expect(r.os.versionId == .known("1"))
        #expect(r.os.family.value == nil)
        #expect(r.os.architecture.value == nil)             // /bin/sh loops, /usr/bin/sh is not ELF
        #expect(r.os.architecture.unknownReason?.contains("symbolic links") == true)
        #expect(r.os.initSystem.value == nil)
        #expect(r.identity.hostname.value == nil)           // /etc/hostname is a directory
        #expect(r.identity.machineId.unknownReason?.contains("32 lowercase") == true)
        #expect(r.identity.dbusMachineId.value == nil)
        // 32-deep include chain: stopped at the depth cap with a warning, default applies.
        #expect(r.ssh.sshd.permitRootLogin.value?.isDefault == true)
        #expect(r.ssh.sshd.warnings.contains { $0.contains("depth") })
        #expect(r.ssh.hostKeys.first?.publicKey.value == nil)
        let acc = try #require(r.accounts.accounts.value)
        #expect(acc.map(\.name) == ["u", "w"])
        #expect(acc[0].passwordState == "locked" && !acc[0].canLogIn)
        #expect(acc[0].sudoNoPassword && !acc[0].isAdmin)
        let rule = try #require(r.accounts.sudoRules.first)
        #expect(rule.commands.count <= 1000)
        #expect(r.accounts.warnings.contains { $0.contains("include loop") })
        let ak = try #require(r.ssh.authorizedKeys.first)
        #expect(ak.keys.isEmpty && ak.invalidLines.count == 2)
        _ = try IdentityFixture.json(r)
    }
}
