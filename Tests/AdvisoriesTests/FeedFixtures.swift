import Foundation

/// Advisory fixtures written to the published schemas (OSV 1.6, the Debian Security Tracker's
/// JSON export, Alpine secdb), shaped like real records: a DSA with two Debian releases, a
/// DEBIAN-CVE record with urgency, a withdrawn record, last_affected and explicit versions,
/// Rocky and Alpine records, tracker statuses resolved/open/undetermined and fixed_version 0,
/// secdb "0" entries.
enum FeedFixtures {
    static let dsaOpenSSL = """
    {
      "schema_version": "1.6.0",
      "id": "DSA-5532-1",
      "modified": "2024-01-10T08:00:00Z",
      "published": "2023-10-25T00:00:00Z",
      "aliases": ["CVE-2023-5363"],
      "summary": "openssl - security update",
      "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N"}],
      "affected": [
        {"package": {"ecosystem": "Debian:12", "name": "openssl", "purl": "pkg:deb/debian/openssl?arch=source"},
         "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "3.0.11-1~deb12u2"}]}],
         "database_specific": {"source": "https://security-tracker.debian.org/tracker/DSA-5532-1"}},
        {"package": {"ecosystem": "Debian:11", "name": "openssl"},
         "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1.1.1w-0+deb11u1"}]}]}
      ],
      "references": [{"type": "ADVISORY", "url": "https://www.debian.org/security/2023/dsa-5532"}]
    }
    """

    static let debianCVEOpen = """
    {
      "id": "DEBIAN-CVE-2024-0001",
      "modified": "2024-03-01T00:00:00.123456Z",
      "aliases": ["CVE-2024-0001"],
      "details": "A flaw in tar",
      "affected": [
        {"package": {"ecosystem": "Debian:12", "name": "tar"},
         "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}],
         "ecosystem_specific": {"urgency": "low"}}
      ]
    }
    """

    static let withdrawn = """
    {
      "id": "DEBIAN-CVE-2023-9999",
      "modified": "2024-02-01T00:00:00Z",
      "withdrawn": "2024-02-01T00:00:00Z",
      "affected": [{"package": {"ecosystem": "Debian:12", "name": "openssl"},
                    "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "9.9-1"}]}]}]
    }
    """

    /// Several ranges, last_affected, explicit versions, a GIT range to skip.
    static let ranges = """
    {
      "id": "OSV-RANGES-1",
      "modified": "2024-01-01T00:00:00+01:00",
      "aliases": ["CVE-2022-1111", "GHSA-aaaa-bbbb-cccc"],
      "affected": [
        {"package": {"ecosystem": "Debian:12", "name": "zlib"},
         "ranges": [
           {"type": "GIT", "repo": "https://github.com/madler/zlib", "events": [{"introduced": "0"}, {"fixed": "abc"}]},
           {"type": "ECOSYSTEM", "events": [{"introduced": "1:1.2.0-1"}, {"fixed": "1:1.2.5-1"}, {"introduced": "1:1.2.8-1"}, {"last_affected": "1:1.2.13-1"}]}
         ],
         "versions": ["1:1.1.4-1"]}
      ]
    }
    """

    static let rocky = """
    {
      "id": "RLSA-2024:0001",
      "modified": "2024-01-05T00:00:00Z",
      "affected": [
        {"package": {"ecosystem": "Rocky Linux:9", "name": "openssl-libs"},
         "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1:3.0.7-25.el9_3"}]}]}
      ],
      "database_specific": {"severity": "Important"}
    }
    """

    static let alpineOSV = """
    {
      "id": "ALPINE-CVE-2023-5678",
      "modified": "2024-01-05T00:00:00Z",
      "affected": [
        {"package": {"ecosystem": "Alpine:v3.18", "name": "openssl"},
         "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "3.1.4-r1"}]}]}
      ]
    }
    """

    static let tracker = """
    {
      "openssl": {
        "CVE-2023-5363": {
          "description": "Incorrect cipher key and IV length processing",
          "scope": "remote",
          "releases": {
            "bookworm": {"status": "resolved", "repositories": {"bookworm": "3.0.11-1~deb12u2"}, "fixed_version": "3.0.11-1~deb12u2", "urgency": "not yet assigned"},
            "bullseye": {"status": "resolved", "repositories": {"bullseye": "1.1.1w-0+deb11u1"}, "fixed_version": "0", "urgency": "not yet assigned"},
            "sid": {"status": "resolved", "repositories": {"sid": "3.1.4-2"}, "fixed_version": "3.0.12-1", "urgency": "not yet assigned"}
          }
        }
      },
      "tar": {
        "CVE-2023-39804": {
          "description": "tar xattr stack exhaustion",
          "releases": {
            "bookworm": {"status": "resolved", "repositories": {"bookworm": "1.34+dfsg-1.2+deb12u1"}, "fixed_version": "1.34+dfsg-1.2+deb12u1", "urgency": "medium"},
            "bullseye": {"status": "open", "repositories": {"bullseye": "1.34+dfsg-1"}, "urgency": "low**"}
          }
        },
        "TEMP-0290435-0B57B5": {
          "description": "tar: --extract with crafted archive",
          "releases": {
            "bookworm": {"status": "undetermined", "repositories": {"bookworm": "1.34+dfsg-1.2+deb12u1"}, "urgency": "unimportant"},
            "forky": {"status": "open", "repositories": {}, "urgency": "unimportant"},
            "experimental-ish": {"status": "open", "urgency": "low"}
          }
        }
      }
    }
    """

    static let secdb = """
    {
      "apkurl": "{{urlprefix}}/{{distroversion}}/{{reponame}}/{{arch}}/{{pkg.name}}-{{pkg.ver}}.apk",
      "archs": ["aarch64", "x86_64"],
      "reponame": "main",
      "urlprefix": "https://dl-cdn.alpinelinux.org/alpine",
      "distroversion": "v3.18",
      "packages": [
        {"pkg": {"name": "openssl", "secfixes": {
          "3.1.4-r1": ["CVE-2023-5678"],
          "3.1.2-r0": ["CVE-2023-3817"],
          "0": ["CVE-2022-1234"]}}},
        {"pkg": {"name": "busybox", "secfixes": {"1.36.1-r2": ["CVE-2022-48174 CVE-2023-42363"]}}}
      ]
    }
    """
}
