import Inspection

/// Parses the input as a registry hive and walks it: every key (depth and count bounded),
/// every value with its typed readings, and a few case-insensitive lookups.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHive(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    guard let hive = try? RegistryHive(bytes) else { return 0 }
    var budget = 5000
    func walk(_ k: RegistryHive.Key, depth: Int) {
        guard depth < 64, budget > 0 else { return }
        budget -= 1
        for v in (try? hive.values(k)) ?? [] { _ = (v.string, v.strings, v.dword, v.qword) }
        for s in (try? hive.subkeys(k)) ?? [] { walk(s, depth: depth + 1) }
    }
    walk(hive.root, depth: 0)
    _ = try? hive.value("Microsoft\\Windows NT\\CurrentVersion", "ProductName")
    _ = try? hive.key("ControlSet001\\Services")
    return 0
}
