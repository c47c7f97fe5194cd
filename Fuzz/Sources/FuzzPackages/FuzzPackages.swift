import Inspection

/// The first byte picks a package database parser (dpkg status, apk installed,
/// rpmdb.sqlite, BerkeleyDB Packages); the rest is the database.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPackages(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data, size > 0 else { return 0 }
    let kinds = PackageDatabaseBytes.Kind.allCases
    let kind = kinds[Int(data[0]) % kinds.count]
    let bytes = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    _ = PackageDatabaseBytes.parse(bytes, as: kind)
    return 0
}
