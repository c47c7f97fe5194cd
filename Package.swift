// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "Warden",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "warden", targets: ["warden"]),
        // The libvirt qemu hook alone: no libvirt, FoundationXML or ArgumentParser (docs/libvirt.md).
        .executable(name: "warden-hook", targets: ["warden-hook"]),
        .library(name: "WardenCore", targets: ["WardenCore"]),
        .library(name: "DiskImage", targets: ["DiskImage"]),
        .library(name: "Partitions", targets: ["Partitions"]),
        .library(name: "GuestFS", targets: ["GuestFS"]),
        .library(name: "Inspection", targets: ["Inspection"]),
        .library(name: "Advisories", targets: ["Advisories"]),
        .library(name: "Sysprep", targets: ["Sysprep"]),
        .library(name: "Storage", targets: ["Storage"]),
        .library(name: "AdvisoryStorage", targets: ["AdvisoryStorage"]),
        .library(name: "Ledger", targets: ["Ledger"]),
        .library(name: "LedgerPostgres", targets: ["LedgerPostgres"]),
        .library(name: "Server", targets: ["Server"]),
        .library(name: "Agent", targets: ["Agent"]),
        .library(name: "WardenNetwork", targets: ["WardenNetwork"]),
        .library(name: "Vault", targets: ["Vault"]),
        .library(name: "Policy", targets: ["Policy"]),
        .library(name: "Attestation", targets: ["Attestation"]),
        .library(name: "Hypervisor", targets: ["Hypervisor"]),
        .library(name: "Maintenance", targets: ["Maintenance"]),
        .library(name: "ImageStore", targets: ["ImageStore"]),
        .library(name: "WardenServices", targets: ["WardenServices"]),
        .library(name: "WardenCommands", targets: ["WardenCommands"]),
        .library(name: "Simulation", targets: ["Simulation"]),
        .library(name: "WardenConfig", targets: ["WardenConfig"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/hummingbird-project/swift-mustache", from: "2.1.1"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1", from: "1.7.4"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.8.0"),
    ],
    targets: [
        .systemLibrary(name: "CZlib", path: "Sources/CZlib"),
        .systemLibrary(name: "CZstd", path: "Sources/CZstd", pkgConfig: "libzstd",
                       providers: [.apt(["libzstd-dev"])]),
        // liblzo2 for the LZO-compressed extents of btrfs.
        .systemLibrary(name: "CLZO", path: "Sources/CLZO", providers: [.apt(["liblzo2-dev"])]),
        .systemLibrary(name: "CSQLite", path: "Sources/CSQLite", providers: [.apt(["libsqlite3-dev"])]),
        // OpenSSL's libcrypto for the bulk cipher of LUKS volumes (AES-XTS), which swift-crypto lacks.
        .systemLibrary(name: "COpenSSL", path: "Sources/COpenSSL", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CWardenSys", path: "Sources/CWardenSys"),
        .systemLibrary(name: "CArgon2", path: "Sources/CArgon2", pkgConfig: "libargon2", providers: [.apt(["libargon2-dev"])]),
        // The malware engines: ClamAV's libclamav and libyara (docs/malware.md).
        .systemLibrary(name: "CClamAV", path: "Sources/CClamAV", pkgConfig: "libclamav", providers: [.apt(["libclamav-dev"])]),
        .systemLibrary(name: "CYara", path: "Sources/CYara", pkgConfig: "yara", providers: [.apt(["libyara-dev"])]),
        .target(name: "WardenCore", dependencies: ["CWardenSys"]),
        .target(name: "DiskImage", dependencies: [
            "WardenCore", "CZlib", "CZstd", "COpenSSL", "CArgon2",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "_CryptoExtras", package: "swift-crypto"),
        ]),
        .target(name: "Partitions", dependencies: ["WardenCore", "DiskImage"]),
        .target(name: "GuestFS", dependencies: [
            "WardenCore", "DiskImage", "Partitions", "CZlib", "CZstd", "CLZO",
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        .target(name: "Inspection", dependencies: [
            "WardenCore", "WardenBuildInfo", "DiskImage", "GuestFS", "CSQLite",
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        .target(name: "Advisories", dependencies: ["WardenCore", "Inspection", "CZlib"]),
        // Identity refresh (virt-sysprep parity): plans against a read-only guest view, applies
        // through GuestFS's checked writes; generates SSH host keys (RSA needs _CryptoExtras).
        .target(name: "Sysprep", dependencies: [
            "WardenCore", "DiskImage", "GuestFS", "Inspection",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "_CryptoExtras", package: "swift-crypto"),
        ]),
        // libvirt's declarations only: the library is loaded on first use by CLibvirtLazy
        // (docs/decisions.md), so commands that never call it do not pay for loading it.
        .systemLibrary(name: "CLibvirt", path: "Sources/CLibvirt", providers: [.apt(["libvirt-dev"])]),
        .target(name: "CLibvirtLazy", path: "Sources/CLibvirtLazy"),
        // The database file, its plumbing and its one schema (every component's migrations,
        // in one order), and the guest counters a rollback cannot rewind (docs/decisions.md).
        .target(name: "Storage", dependencies: [
            "WardenCore", "CSQLite",
            .product(name: "GRDB", package: "GRDB.swift"),
        ]),
        // Advisories, inventories and assessments, stored beside the ledger in the same database.
        .target(name: "AdvisoryStorage", dependencies: [
            "WardenCore", "Inspection", "Advisories", "Storage",
            .product(name: "GRDB", package: "GRDB.swift"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // Malware verdicts per content, imported signature sets and the record of scans, in the
        // Warden database; lean (no engines), so policy and the server can read them.
        .target(name: "MalwareStorage", dependencies: [
            "WardenCore", "Storage",
            .product(name: "GRDB", package: "GRDB.swift"),
        ]),
        // libclamav and libyara over the guest view, paid once per distinct content (docs/malware.md).
        .target(name: "Malware", dependencies: [
            "WardenCore", "DiskImage", "GuestFS", "MalwareStorage", "CClamAV", "CYara",
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        .target(name: "Ledger", dependencies: [
            "WardenCore", "Inspection", "Advisories", "CSQLite", "Storage", "AdvisoryStorage",
            .product(name: "GRDB", package: "GRDB.swift"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // The fleet's ledger on PostgreSQL (postgres-nio): the same LedgerStore protocol and
        // store suite as the SQLite ledger. Never linked into warden-hook.
        .target(name: "LedgerPostgres", dependencies: [
            "WardenCore", "Ledger", "AdvisoryStorage", "Storage",
            .product(name: "PostgresNIO", package: "postgres-nio"),
            .product(name: "GRDB", package: "GRDB.swift"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOFoundationCompat", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // `warden serve`: the fleet API (Hummingbird 2) over a LedgerStore, bearer-token roles,
        // Prometheus metrics (docs/fleet.md). Never linked into warden-hook.
        .target(name: "Server", dependencies: [
            "WardenCore", "Ledger", "LedgerPostgres",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "HummingbirdTLS", package: "hummingbird"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            "AdvisoryStorage", "Advisories", "Policy", "Attestation",
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "X509", package: "swift-certificates"),
            .product(name: "SwiftASN1", package: "swift-asn1"),
            .product(name: "HTTPTypes", package: "swift-http-types"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "Mustache", package: "swift-mustache"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOFoundationCompat", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // `warden agent`: the local ledger's outbox to the server (at least once, idempotent, in
        // order) and the pull of the fleet's VMs (docs/fleet.md). Never linked into warden-hook.
        .target(name: "Agent", dependencies: [
            "WardenCore", "Ledger", "AdvisoryStorage", "Advisories", "Policy", "Attestation",
            .product(name: "AsyncHTTPClient", package: "async-http-client"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "X509", package: "swift-certificates"),
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOFoundationCompat", package: "swift-nio"),
        ]),
        // `warden net`: network states (open, quarantined, shielded) in the ledger, enforced with
        // nftables on the VM's host interfaces (docs/network.md).
        .target(name: "WardenNetwork", dependencies: [
            "WardenCore", "Ledger", "AdvisoryStorage", "Advisories", "Policy",
            .product(name: "Yams", package: "Yams"),
        ]),
        // Data keys wrapped by a key-encryption key, secrets for QEMU (docs/vault.md).
        .target(name: "Vault", dependencies: [
            "WardenCore", "Ledger",
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        .target(name: "Policy", dependencies: [
            "WardenCore", "Ledger", "Advisories", "AdvisoryStorage",
            .product(name: "Yams", package: "Yams"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // Host trust: TPM 2.0 quotes parsed as hostile input and verified with swift-crypto,
        // the host trust policy, and the host's TPM through tpm2-tools (docs/attestation.md).
        .target(name: "Attestation", dependencies: [
            "WardenCore", "Policy", "Ledger",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "_CryptoExtras", package: "swift-crypto"),
            .product(name: "Yams", package: "Yams"),
        ]),
        // The libvirt hook protocol and the domain XML reader, shared by `warden libvirt-hook`
        // and the lean `warden-hook` executable; deliberately without CLibvirt and FoundationXML.
        .target(name: "HypervisorHook", dependencies: ["WardenCore", "Storage", "Ledger", "Policy", "WardenNetwork"]),
        .target(name: "Hypervisor", dependencies: [
            "WardenCore", "DiskImage", "Storage", "Ledger", "Policy", "HypervisorHook", "CLibvirt", "CLibvirtLazy", "GuestFS", "Inspection", "Advisories",
            "WardenNetwork", "Vault", "Attestation",
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // The patch appliance, mirrors and maintenance boots through Hypervisor (docs/patching.md).
        .target(name: "Maintenance", dependencies: [
            "WardenCore", "GuestFS", "Hypervisor",
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // VMs in OCI registries: the distribution-spec client, chunked disks, signatures (docs/oci.md).
        .target(name: "ImageStore", dependencies: [
            "WardenCore", "DiskImage", "CZstd", "CZlib",
            .product(name: "AsyncHTTPClient", package: "async-http-client"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "NIOFoundationCompat", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // The workflows the CLI, the hook and the coming server share (docs/decisions.md).
        .target(name: "WardenServices", dependencies: [
            "WardenCore", "DiskImage", "GuestFS", "Inspection", "Advisories", "Storage", "AdvisoryStorage", "Ledger", "Policy", "Sysprep", "Vault", "Attestation",
            "Malware", "MalwareStorage", "Maintenance", "ImageStore",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "Yams", package: "Yams"),
        ]),
        // The worm simulation of docs/simulation.md (no I/O of its own).
        .target(name: "Simulation", dependencies: ["WardenCore"]),
        // The commit the binary is built from, written before each build by the BuildInfo plugin.
        .target(name: "WardenBuildInfo", plugins: ["BuildInfo"]),
        .plugin(name: "BuildInfo", capability: .buildTool()),
        // Process-wide settings: the configuration file, logging, progress (docs/configuration.md).
        .target(name: "WardenConfig", dependencies: [
            "WardenCore", "Policy",
            .product(name: "Yams", package: "Yams"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "WardenCommands", dependencies: [
            "WardenConfig", "WardenBuildInfo", "WardenCore", "DiskImage", "Partitions", "GuestFS", "Inspection", "Advisories",
            "Storage", "AdvisoryStorage", "Ledger", "LedgerPostgres", "Policy", "Hypervisor", "Sysprep", "WardenServices", "ImageStore", "Server", "Agent", "WardenNetwork", "Vault", "Attestation",
            "Malware", "MalwareStorage", "Maintenance", "Simulation",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // The Swift runtime and Foundation are linked statically, as for warden-hook below, so the
        // binary runs on a Debian host without a Swift toolchain (the .deb, docs/packaging.md).
        // Not `swift build --static-swift-stdlib`: that recompiles every module against the
        // static Foundation, and a later plain build links objects of both kinds.
        .executableTarget(name: "warden", dependencies: ["WardenCommands"],
                          linkerSettings: [.unsafeFlags([
                              "-static-stdlib", "-lCoreFoundation", "-l_FoundationICU", "-l_FoundationCShims",
                              "-l_FoundationCollections", "-lFoundationEssentials", "-lFoundationInternationalization",
                              "-lswiftSynchronization",
                          ])]),
        // libvirtd runs the hook before every start and waits for it: the Swift runtime and
        // Foundation are linked statically so start-up does not resolve a dozen shared libraries
        // (unsafeFlags are allowed in the root package; docs/decisions.md).
        // The modules were compiled against the shared Foundation, whose autolink entries name
        // only libFoundation; the static archives it needs are listed here.
        .executableTarget(name: "warden-hook", dependencies: ["HypervisorHook"],
                          linkerSettings: [.unsafeFlags([
                              "-static-stdlib", "-lCoreFoundation", "-l_FoundationICU", "-l_FoundationCShims",
                              "-l_FoundationCollections", "-lFoundationEssentials", "-lFoundationInternationalization",
                              "-lswiftSynchronization",
                          ])]),
        .target(name: "WardenTestSupport", dependencies: ["WardenCore"], path: "Tests/WardenTestSupport"),
        // The ledger backends every store test runs over (SQLite, and PostgreSQL on a private server).
        .target(name: "StoreTestSupport", dependencies: ["WardenTestSupport", "Ledger", "LedgerPostgres", "Storage", "WardenCore"],
                path: "Tests/StoreTestSupport"),
        .testTarget(name: "ServerTests", dependencies: [
            "Server", "WardenCore", "WardenTestSupport",
            .product(name: "X509", package: "swift-certificates"),
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "Yams", package: "Yams"),
        ]),
        .testTarget(name: "WardenCoreTests", dependencies: ["WardenCore"]),
        .testTarget(name: "WardenConfigTests", dependencies: ["WardenConfig", "WardenCore", "WardenTestSupport",
                                                            .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "DiskImageTests", dependencies: ["DiskImage", "WardenTestSupport"]),
        .testTarget(name: "PartitionsTests", dependencies: ["Partitions", "DiskImage", "WardenTestSupport"]),
        .testTarget(name: "GuestFSTests", dependencies: ["GuestFS", "Partitions", "DiskImage", "WardenTestSupport",
                                                      .product(name: "Crypto", package: "swift-crypto")]),
        .testTarget(name: "InspectionTests", dependencies: ["Inspection", "GuestFS", "DiskImage", "WardenTestSupport"]),
        .testTarget(name: "SysprepTests", dependencies: ["Sysprep", "WardenCore", "GuestFS", "Inspection", "DiskImage", "WardenTestSupport"]),
        .testTarget(name: "AdvisoriesTests", dependencies: ["Advisories", "WardenTestSupport"]),
        .testTarget(name: "LedgerTests", dependencies: ["Ledger", "LedgerPostgres", "StoreTestSupport", "Storage", "AdvisoryStorage", "WardenCore", "Advisories", "WardenTestSupport",
                                                     .product(name: "PostgresNIO", package: "postgres-nio")]),
        .testTarget(name: "PolicyTests", dependencies: ["Policy", "Storage", "AdvisoryStorage", "Ledger", "Advisories", "WardenTestSupport", "StoreTestSupport"]),
        .testTarget(name: "HypervisorTests", dependencies: ["Hypervisor", "HypervisorHook", "Storage", "AdvisoryStorage", "Ledger", "Inspection", "WardenTestSupport"]),
        .testTarget(name: "WardenServicesTests", dependencies: ["WardenServices", "Hypervisor", "Inspection", "Advisories", "Storage", "AdvisoryStorage", "WardenCore", "WardenTestSupport"]),
        .testTarget(name: "MalwareTests", dependencies: ["Malware", "MalwareStorage", "Storage", "GuestFS", "DiskImage", "Partitions", "WardenCore", "WardenTestSupport",
                                                      "WardenServices", "Ledger", "Inspection"]),
        .testTarget(name: "VaultTests", dependencies: ["Vault", "WardenCore", "WardenTestSupport"]),
        .testTarget(name: "ImageStoreTests", dependencies: ["ImageStore", "WardenCore", "WardenTestSupport",
                                                          .product(name: "Crypto", package: "swift-crypto")]),
        .testTarget(name: "MaintenanceTests", dependencies: ["Maintenance", "WardenCore", "GuestFS", "Inspection", "DiskImage", "WardenTestSupport"]),
        .testTarget(name: "SimulationTests", dependencies: ["Simulation", "WardenCore", "WardenTestSupport"]),
        .testTarget(name: "AttestationTests", dependencies: ["Attestation", "Policy", "WardenCore", "WardenTestSupport"]),
        .testTarget(name: "IntegrationTests", dependencies: ["WardenCommands", "WardenBuildInfo", "WardenTestSupport", "Storage", "Ledger", "WardenCore", "Server",
                                                          "AdvisoryStorage", "Advisories", "WardenNetwork", "Vault", "Attestation"]),
    ],
    swiftLanguageModes: [.v6]
)
