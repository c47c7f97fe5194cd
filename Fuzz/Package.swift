// swift-tools-version: 6.0
// libFuzzer targets for Warden's parsers. Built and linked by Fuzz/run with
// -sanitize=fuzzer,address; not part of the main package build.
import PackageDescription

let package = Package(
    name: "WardenFuzz",
    dependencies: [.package(name: "Warden", path: "..")],
    targets: [
        .target(name: "FuzzSupport", dependencies: [
            .product(name: "DiskImage", package: "Warden"),
            .product(name: "GuestFS", package: "Warden"),
            .product(name: "WardenCore", package: "Warden"),
        ]),
        .executableTarget(name: "FuzzQCOW2", dependencies: ["FuzzSupport", .product(name: "DiskImage", package: "Warden")]),
        .executableTarget(name: "FuzzVMDK", dependencies: ["FuzzSupport", .product(name: "DiskImage", package: "Warden")]),
        .executableTarget(name: "FuzzVHD", dependencies: ["FuzzSupport", .product(name: "DiskImage", package: "Warden")]),
        .executableTarget(name: "FuzzVHDX", dependencies: ["FuzzSupport", .product(name: "DiskImage", package: "Warden")]),
        .executableTarget(name: "FuzzVDI", dependencies: ["FuzzSupport", .product(name: "DiskImage", package: "Warden")]),
        .executableTarget(name: "FuzzOVA", dependencies: ["FuzzSupport", .product(name: "DiskImage", package: "Warden")]),
        .executableTarget(name: "FuzzPartitions", dependencies: [
            "FuzzSupport", .product(name: "DiskImage", package: "Warden"),
            .product(name: "Partitions", package: "Warden"), .product(name: "GuestFS", package: "Warden"),
        ]),
        .executableTarget(name: "FuzzEXT4", dependencies: [
            "FuzzSupport", .product(name: "DiskImage", package: "Warden"),
            .product(name: "GuestFS", package: "Warden"), .product(name: "WardenCore", package: "Warden"),
        ]),
        .executableTarget(name: "FuzzEXT4Write", dependencies: [
            "FuzzSupport", .product(name: "DiskImage", package: "Warden"), .product(name: "GuestFS", package: "Warden"),
        ]),
        .executableTarget(name: "FuzzXFS", dependencies: [
            "FuzzSupport", .product(name: "DiskImage", package: "Warden"), .product(name: "GuestFS", package: "Warden"),
        ]),
        .executableTarget(name: "FuzzBtrfs", dependencies: [
            "FuzzSupport", .product(name: "DiskImage", package: "Warden"), .product(name: "GuestFS", package: "Warden"),
            .product(name: "WardenCore", package: "Warden"),
        ]),
        .executableTarget(name: "FuzzFAT", dependencies: [
            "FuzzSupport", .product(name: "DiskImage", package: "Warden"), .product(name: "GuestFS", package: "Warden"),
        ]),
        .executableTarget(name: "FuzzLVM2", dependencies: [
            "FuzzSupport", .product(name: "DiskImage", package: "Warden"), .product(name: "Partitions", package: "Warden"),
        ]),
        .executableTarget(name: "FuzzLVMThin", dependencies: [
            "FuzzSupport", .product(name: "DiskImage", package: "Warden"), .product(name: "Partitions", package: "Warden"),
        ]),
        .executableTarget(name: "FuzzPackages", dependencies: [.product(name: "Inspection", package: "Warden")]),
        .executableTarget(name: "FuzzNTFS", dependencies: [
            "FuzzSupport", .product(name: "DiskImage", package: "Warden"), .product(name: "GuestFS", package: "Warden"),
        ]),
        .executableTarget(name: "FuzzHive", dependencies: [.product(name: "Inspection", package: "Warden")]),
        .executableTarget(name: "FuzzLUKS", dependencies: [
            "FuzzSupport", .product(name: "DiskImage", package: "Warden"), .product(name: "WardenCore", package: "Warden"),
        ]),
        .executableTarget(name: "FuzzLUKSVolume", dependencies: [
            "FuzzSupport", .product(name: "DiskImage", package: "Warden"), .product(name: "WardenCore", package: "Warden"),
        ]),
        .executableTarget(name: "FuzzTPMQuote", dependencies: [
            .product(name: "Attestation", package: "Warden"), .product(name: "WardenCore", package: "Warden"),
        ]),
        .executableTarget(name: "FuzzTPMPCR", dependencies: [
            .product(name: "Attestation", package: "Warden"), .product(name: "WardenCore", package: "Warden"),
        ]),
    ],
    swiftLanguageModes: [.v6]
)
