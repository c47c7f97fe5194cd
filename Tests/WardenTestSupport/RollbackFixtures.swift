import Foundation

/// A guest disk built with real tools: a qcow2 whose internal snapshot `old` holds an older,
/// vulnerable openssl, an enabled account, a password hash since changed, a weaker sshd and
/// an SSH host key since replaced; the current disk has all of them fixed.
public enum RollbackFixtures {
    public static let oldSSL = "3.0.11-1~deb12u2", newSSL = "3.0.15-1~deb12u1", fixedIn = "3.0.13-1~deb12u1"

    static func tree(_ dir: String, old: Bool) throws {
        let alice = old ? "$6$salt$aaaaaaaa" : "!$6$salt$aaaaaaaa"
        let bob = old ? "$6$one$oldhasholdhash" : "$6$two$newhashnewhash"
        try Tool.sh("""
        mkdir -p '\(dir)/etc/ssh' '\(dir)/var/lib/dpkg' '\(dir)/root/.ssh' '\(dir)/home/alice'
        cd '\(dir)'
        printf 'ID=debian\\nVERSION_ID="12"\\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\\n' > etc/os-release
        printf 'root:x:0:0:root:/root:/bin/bash\\nalice:x:1000:1000:Alice:/home/alice:/bin/bash\\nbob:x:1001:1001:Bob:/home/bob:/bin/bash\\n' > etc/passwd
        printf 'root:x:0:\\nalice:x:1000:\\nbob:x:1001:\\n' > etc/group
        printf 'root:*:19000:0:99999:7:::\\nalice:%s:19000:0:99999:7:::\\nbob:%s:19000:0:99999:7:::\\n' '\(alice)' '\(bob)' > etc/shadow
        chmod 0640 etc/shadow
        printf 'PermitRootLogin %s\\n' '\(old ? "yes" : "no")' > etc/ssh/sshd_config
        ssh-keygen -q -t ed25519 -N '' -C host -f etc/ssh/ssh_host_ed25519_key
        cat > var/lib/dpkg/status <<'EOF'
        Package: openssl
        Status: install ok installed
        Priority: optional
        Architecture: amd64
        Version: \(old ? oldSSL : newSSL)
        Description: Secure Sockets Layer toolkit

        Package: base-files
        Status: install ok installed
        Architecture: amd64
        Version: 12.4+deb12u5
        Description: Debian base system miscellaneous files

        EOF
        sed -i 's/^        //' var/lib/dpkg/status
        """)
    }

    /// The disk (qcow2 with snapshot `old`) and the fingerprint of the old host key.
    public static func impactDisk() throws -> (disk: String, oldHostKey: String) {
        let dir = try Fixtures.cached("rollback-impact", recipe: "v1 \(oldSSL) \(newSSL)") { dir in
            try tree(dir + "/old", old: true)
            try tree(dir + "/new", old: false)
            try Tool.run(["truncate", "-s", "24M", dir + "/old.raw", dir + "/new.raw"])
            try Tool.run(["mkfs.ext4", "-q", "-F", "-d", dir + "/old", dir + "/old.raw"])
            try Tool.run(["mkfs.ext4", "-q", "-F", "-d", dir + "/new", dir + "/new.raw"])
            try Tool.run(["qemu-img", "convert", "-O", "qcow2", dir + "/old.raw", dir + "/disk.qcow2"])
            try Tool.run(["qemu-img", "snapshot", "-c", "old", dir + "/disk.qcow2"])
            // Write the new filesystem into the image's active layer (-n: the image and its snapshot stay).
            try Tool.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "qcow2", dir + "/new.raw", dir + "/disk.qcow2"])
            let fp = try Tool.run(["ssh-keygen", "-lf", dir + "/old/etc/ssh/ssh_host_ed25519_key.pub"]).stdoutText
            try fp.write(toFile: dir + "/old-host-key.txt", atomically: true, encoding: .utf8)
            for f in ["old.raw", "new.raw"] { try FileManager.default.removeItem(atPath: dir + "/" + f) }
        }
        let fp = try String(contentsOfFile: dir + "/old-host-key.txt", encoding: .utf8).split(separator: " ")[1]
        return (dir + "/disk.qcow2", String(fp))
    }
}
