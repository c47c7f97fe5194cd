import Foundation
import Testing
import WardenCore
import WardenTestSupport
@testable import Maintenance
#if canImport(Glibc)
import Glibc
#endif

/// A fresh folder under the system temp folder (removed by the OS; tests here are small).
func makeTempDirectory() throws -> String {
    let d = NSTemporaryDirectory() + "warden-maint-" + UUID().uuidString
    try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    return d
}

@Suite struct CPIOArchiveTests {
    static func tempDirectory() throws -> String { try makeTempDirectory() }

    /// GNU cpio (the tool that defines the format here) lists and extracts what we write.
    @Test func gnuCpioExtractsTheArchive() throws {
        let dir = try Self.tempDirectory()
        var a = CPIOArchive()
        try a.directory("bin")
        try a.file("bin/hello", contents: Data("#!/bin/sh\necho hi\n".utf8), mode: 0o755)
        try a.file("odd", contents: Data([1, 2, 3]))
        try a.symlink("bin/sh", target: "busybox")
        try a.finished().write(to: URL(fileURLWithPath: dir + "/a.cpio"))
        let list = try Tool.sh("cd '\(dir)' && cpio -t --quiet < a.cpio").stdoutText.split(separator: "\n").map(String.init)
        #expect(list == ["bin", "bin/hello", "odd", "bin/sh"])
        try Tool.sh("mkdir '\(dir)/x' && cd '\(dir)/x' && cpio -id --quiet < ../a.cpio")
        #expect(try String(contentsOfFile: dir + "/x/bin/hello", encoding: .utf8) == "#!/bin/sh\necho hi\n")
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir + "/x/odd")) == Data([1, 2, 3]))
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: dir + "/x/bin/sh") == "busybox")
        let mode = try FileManager.default.attributesOfItem(atPath: dir + "/x/bin/hello")[.posixPermissions] as? Int
        #expect(mode == 0o755)
    }

    @Test func refusesNamesThatEscape() {
        var a = CPIOArchive()
        for bad in ["/etc/passwd", "../x", "a/../../b", "", "a/./b"] {
            #expect(throws: WardenError.self) { try a.file(bad, contents: Data()) }
        }
        #expect(throws: WardenError.self) { try a.file("twice", contents: Data()); try a.file("twice", contents: Data()) }
    }
}

@Suite struct MaintenancePlanTests {
    static func tempDirectory() throws -> String { try makeTempDirectory() }
    @Test func packageSpecsAreDebianNames() {
        for good in ["openssl", "libssl3", "g++", "warden-demo=1.1-1", "libc6=2.36-9+deb12u4", "x2=1:2.0~rc1"] {
            #expect(MaintenancePlan.validPackageSpec(good), "\(good)")
        }
        for bad in ["", "a", "Foo", "pkg;rm", "pkg $(id)", "pkg=", "pkg=abc", "pkg:amd64", "pkg/bookworm", "-o", "pkg=1 2", String(repeating: "a", count: 200)] {
            #expect(!MaintenancePlan.validPackageSpec(bad), "\(bad)")
        }
    }

    @Test func planTextCarriesOnlyCheckedValues() throws {
        let mirror = Mirror(source: .directory("/srv/m"), suite: "./", components: [], keyring: nil)
        let plan = MaintenancePlan(token: "0123456789abcdef", mode: .upgrade, packages: ["warden-demo"],
                                   mounts: [.init(device: "/dev/vda2", type: "ext4", path: "/", options: nil, essential: true)],
                                   mirror: mirror)
        let text = try plan.text()
        #expect(text.contains("mount /dev/vda2 ext4 / - essential\n"))
        #expect(text.contains("source deb [trusted=yes] http://10.0.2.100/ ./\n"))
        #expect(text.contains("package warden-demo\n"))
        var bad = plan
        bad.packages = ["x; reboot"]
        #expect(throws: WardenError.self) { try bad.text() }
        bad = plan
        bad.mounts[0].path = "/var/$(x)"
        #expect(throws: WardenError.self) { try bad.text() }
        bad = plan
        bad.probes = ["http://10.0.2.2/ x"]
        #expect(throws: WardenError.self) { try bad.text() }
    }

    @Test func mirrorParsing() throws {
        let dir = try Self.tempDirectory()
        try Data().write(to: URL(fileURLWithPath: dir + "/Packages"))
        let flat = try Mirror.parse(dir, suite: nil, components: [], keyring: nil, defaultSuite: nil, allowUnsigned: false)
        #expect(flat.suite == "./" && flat.components.isEmpty && flat.name.hasPrefix("dir:/"))
        #expect(flat.sourcesLine == "deb [trusted=yes] http://10.0.2.100/ ./")
        let url = try Mirror.parse("http://192.0.2.7:8080/debian", suite: "bookworm", components: [], keyring: nil, defaultSuite: nil, allowUnsigned: true)
        #expect(url.name == "http://192.0.2.7:8080/debian/")
        #expect(url.sourcesLine == "deb [trusted=yes] http://10.0.2.100/debian/ bookworm main")
        #expect(url.pipeCommand(executable: "/w").suffix(2) == ["--connect", "192.0.2.7:8080"])
        // Unsigned HTTP mirrors need --trust-mirror; odd URLs and schemes are refused.
        for (text, unsigned) in [("http://192.0.2.7/debian", false), ("https://x/debian", true), ("http://u:p@x/", true),
                                 ("http://x/a?b=c", true), ("http://x/../etc", true), ("/no/such/dir", true), ("ftp://x/", true)] {
            #expect(throws: WardenError.self, "\(text)") {
                try Mirror.parse(text, suite: "bookworm", components: [], keyring: nil, defaultSuite: nil, allowUnsigned: unsigned)
            }
        }
        #expect(throws: WardenError.self) {
            try Mirror.parse(dir, suite: "book worm", components: [], keyring: nil, defaultSuite: nil, allowUnsigned: true)
        }
    }
}

@Suite struct MirrorPipeTests {
    static func tempDirectory() throws -> String { try makeTempDirectory() }
    /// Runs ``MirrorPipe/serve(directory:input:output:)`` on one end of a socket pair and
    /// sends `request` from the other; returns everything the server wrote.
    static func exchange(_ dir: String, _ request: String) throws -> String {
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0 else { throw WardenError(.io, "socketpair") }
        let server = fds[1], client = fds[0]
        let t = Thread { MirrorPipe.serve(directory: dir, input: server, output: server); shutdown(server, Int32(SHUT_RDWR)) }
        t.start()
        let bytes = Array(request.utf8)
        _ = bytes.withUnsafeBytes { write(client, $0.baseAddress, $0.count) }
        shutdown(client, Int32(SHUT_WR))
        var out = Data()
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(client, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            out.append(contentsOf: buf[..<n])
        }
        close(client); close(server)
        return String(decoding: out, as: UTF8.self)
    }

    @Test func servesFilesWithKeepAliveAndNothingOutside() throws {
        let dir = try Self.tempDirectory()
        try FileManager.default.createDirectory(atPath: dir + "/repo/dists", withIntermediateDirectories: true)
        try "index\n".write(toFile: dir + "/repo/Packages", atomically: true, encoding: .utf8)
        try "secret\n".write(toFile: dir + "/outside", atomically: true, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: dir + "/repo/escape", withDestinationPath: "../outside")
        try FileManager.default.createSymbolicLink(atPath: dir + "/repo/inside", withDestinationPath: "Packages")
        let two = try Self.exchange(dir + "/repo", "GET /Packages HTTP/1.1\r\nHost: 10.0.2.100\r\n\r\nHEAD /inside HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(two.components(separatedBy: "HTTP/1.1 200 OK").count == 3)
        #expect(two.contains("Content-Length: 6\r\n"))
        #expect(two.hasSuffix("\r\n\r\n") && two.contains("\r\n\r\nindex\n"))
        for path in ["/escape", "/../outside", "/%2e%2e/outside", "/dists", "/nope"] {
            let r = try Self.exchange(dir + "/repo", "GET \(path) HTTP/1.1\r\n\r\n")
            #expect(r.hasPrefix("HTTP/1.1 404"), "\(path): \(r.prefix(40))")
            #expect(!r.contains("secret"))
        }
        #expect(try Self.exchange(dir + "/repo", "POST /Packages HTTP/1.1\r\n\r\n").hasPrefix("HTTP/1.1 405"))
        #expect(try Self.exchange(dir + "/repo", "GET /Packages HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello").hasPrefix("HTTP/1.1 400"))
        #expect(try Self.exchange(dir + "/repo", "garbage\r\n\r\n").hasPrefix("HTTP/1.1 400"))
        // A head longer than the limit is dropped without an answer.
        #expect(try Self.exchange(dir + "/repo", "GET /" + String(repeating: "a", count: 40_000) + " HTTP/1.1\r\n\r\n").isEmpty)
    }
}
