import Foundation
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// nftables in process, through Debian's libnftables (the library `nft` itself is built on): a
/// script as one transaction, the table's counters as JSON, the table as text. Every name in a
/// script was checked before it got there.
///
/// The library is opened at run time (`dlopen`), not linked: Warden inspects, scans and signs
/// on hosts without nftables, and there a network command fails with one line saying what is
/// missing, and fails closed (docs/decisions.md). In process, one VM's change costs a few
/// milliseconds; running the `nft` binary costs 20-40 ms (its start and a fresh cache each time).
public struct NFTables: Sendable {
    /// Where to look for the library (nil: the loader's search path).
    public let library: String?

    public init(library: String? = nil) { self.library = library }

    public var available: Bool { (try? LibNFT.load(library)) != nil }

    /// Applies `script` atomically: libnftables sends the whole script as one netlink batch.
    public func apply(_ script: String) throws {
        _ = try LibNFT.load(library).run(script, json: false)
    }

    /// Packets dropped per counter name in Warden's table (empty when the table does not exist).
    public func counters() throws -> [String: Int64] {
        let out: String
        do { out = try LibNFT.load(library).run("list counters table netdev \(NFTRules.table)", json: true) } catch let e as WardenError where e.message.contains("No such file") {
            return [:]
        }
        guard let doc = try? JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any], let items = doc["nftables"] as? [[String: Any]] else {
            throw WardenError(.unavailable, "nftables printed counters Warden cannot read")
        }
        var result: [String: Int64] = [:]
        for item in items {
            guard let c = item["counter"] as? [String: Any], let name = c["name"] as? String, let n = c["packets"] as? NSNumber else { continue }
            result[name] = n.int64Value
        }
        return result
    }

    /// The table as the kernel holds it (`nft list table`), for status; nil when there is none.
    public func listTable() throws -> String? {
        do { return try LibNFT.load(library).run("list table netdev \(NFTRules.table)", json: false) } catch let e as WardenError where e.message.contains("No such file") {
            return nil
        }
    }
}

/// The few libnftables entry points Warden uses, resolved once per process.
final class LibNFT: @unchecked Sendable {
    typealias CtxNew = @convention(c) (UInt32) -> OpaquePointer?
    typealias CtxFree = @convention(c) (OpaquePointer?) -> Void
    typealias CtxInt = @convention(c) (OpaquePointer?) -> Int32
    typealias CtxString = @convention(c) (OpaquePointer?) -> UnsafePointer<CChar>?
    typealias SetFlags = @convention(c) (OpaquePointer?, UInt32) -> Void
    typealias Run = @convention(c) (OpaquePointer?, UnsafePointer<CChar>?) -> Int32

    let ctxNew: CtxNew, ctxFree: CtxFree, bufferOutput: CtxInt, bufferError: CtxInt
    let outputBuffer: CtxString, errorBuffer: CtxString, setOutputFlags: SetFlags, runBuffer: Run
    /// One context for the process, one caller at a time: a context caches the table it read
    /// from the kernel, and freeing that cache costs more than a change (10-20 ms at 1,000 VMs).
    let lock = NSLock()
    private var context: OpaquePointer?

    static let soname = "libnftables.so.1"
    static let jsonFlag: UInt32 = 1 << 4   // NFT_CTX_OUTPUT_JSON
    nonisolated(unsafe) private static var loaded: [String: LibNFT] = [:]
    private static let loadLock = NSLock()

    static func load(_ path: String?) throws -> LibNFT {
        let name = path ?? soname
        loadLock.lock(); defer { loadLock.unlock() }
        if let l = loaded[name] { return l }
        let missing = WardenError(.unavailable, "nftables is not installed (\(name) cannot be loaded; Debian: apt-get install nftables); network states cannot be enforced")
        guard let handle = dlopen(name, RTLD_NOW | RTLD_LOCAL) else { throw missing }
        func sym<T>(_ s: String, _: T.Type) throws -> T {
            guard let p = dlsym(handle, s) else { throw missing }
            return unsafeBitCast(p, to: T.self)
        }
        let l = LibNFT(ctxNew: try sym("nft_ctx_new", CtxNew.self), ctxFree: try sym("nft_ctx_free", CtxFree.self),
                       bufferOutput: try sym("nft_ctx_buffer_output", CtxInt.self), bufferError: try sym("nft_ctx_buffer_error", CtxInt.self),
                       outputBuffer: try sym("nft_ctx_get_output_buffer", CtxString.self), errorBuffer: try sym("nft_ctx_get_error_buffer", CtxString.self),
                       setOutputFlags: try sym("nft_ctx_output_set_flags", SetFlags.self), runBuffer: try sym("nft_run_cmd_from_buffer", Run.self))
        loaded[name] = l
        return l
    }

    private init(ctxNew: CtxNew, ctxFree: CtxFree, bufferOutput: CtxInt, bufferError: CtxInt, outputBuffer: CtxString, errorBuffer: CtxString,
                 setOutputFlags: SetFlags, runBuffer: Run) {
        self.ctxNew = ctxNew; self.ctxFree = ctxFree; self.bufferOutput = bufferOutput; self.bufferError = bufferError
        self.outputBuffer = outputBuffer; self.errorBuffer = errorBuffer; self.setOutputFlags = setOutputFlags; self.runBuffer = runBuffer
    }

    /// Runs `commands` (one transaction) and returns what they printed.
    func run(_ commands: String, json: Bool) throws -> String {
        lock.lock(); defer { lock.unlock() }
        if context == nil {
            guard let ctx = ctxNew(0) else { throw WardenError(.unavailable, "libnftables could not start (out of memory?)") }
            guard bufferOutput(ctx) == 0, bufferError(ctx) == 0 else {
                ctxFree(ctx)
                throw WardenError(.unavailable, "libnftables could not buffer its output")
            }
            context = ctx
        }
        let ctx = context
        setOutputFlags(ctx, json ? Self.jsonFlag : 0)
        // (reading a buffer empties it: what an earlier command left is dropped here)
        _ = outputBuffer(ctx); _ = errorBuffer(ctx)
        let rc = commands.withCString { runBuffer(ctx, $0) }
        guard rc == 0 else {
            let err = errorBuffer(ctx).map { String(cString: $0) } ?? ""
            let first = err.split(separator: "\n").first.map(String.init) ?? "error \(rc)"
            throw WardenError(.unavailable, "nftables refused the rules: \(TerminalText.line(String(first.prefix(300))))")
        }
        return outputBuffer(ctx).map { String(cString: $0) } ?? ""
    }
}
