import WardenCore

/// The few fields of an RPM header that identify an installed package.
///
/// An RPM header (as stored in every rpm database) is: an optional 8-byte lead
/// (magic `8e ad e8 01` and 4 reserved bytes; database blobs omit it), then two
/// big-endian 32-bit counts, the index entry count `il` and the data store length `dl`,
/// then `il` index entries of 16 bytes (tag, type, offset, count, all big-endian), then
/// the `dl`-byte data store that the entries' offsets point into.
///
/// Parsing is hostile-input safe: counts are capped (``maxIndexCount``, ``maxDataSize``),
/// every entry's offset and extent is checked against the store, and strings must be
/// NUL-terminated inside it. Entries whose content is not needed are only checked
/// for plausibility (constant time each), so a header costs O(il + used strings).
public struct RPMHeader: Sendable, Hashable {
    public var name: String
    /// `EPOCH` (tag 1003); nil when the header has none (rpm prints `(none)`).
    public var epoch: Int?
    public var version: String
    public var release: String
    /// `ARCH` (tag 1022); nil when absent (gpg-pubkey pseudo-packages have none).
    public var arch: String?
    /// `SOURCERPM` (tag 1044), e.g. `bash-5.2.26-3.fc40.src.rpm`; nil when absent.
    public var sourceRPM: String?

    public init(name: String, epoch: Int? = nil, version: String, release: String, arch: String? = nil, sourceRPM: String? = nil) {
        self.name = name
        self.epoch = epoch
        self.version = version
        self.release = release
        self.arch = arch
        self.sourceRPM = sourceRPM
    }

    /// Most index entries accepted (real headers have a few hundred).
    public static let maxIndexCount = 100_000
    /// Largest data store accepted.
    public static let maxDataSize = 64 << 20
    /// Longest string field kept; longer ones make the header invalid.
    public static let maxStringBytes = 64 << 10

    /// The header lead magic (`8e ad e8`, header version 1).
    static let magic: [UInt8] = [0x8E, 0xAD, 0xE8, 0x01]

    enum Tag {
        static let name: UInt32 = 1000, version: UInt32 = 1001, release: UInt32 = 1002
        static let epoch: UInt32 = 1003, arch: UInt32 = 1022, sourceRPM: UInt32 = 1044
    }

    enum DataType {
        static let null: UInt32 = 0, char: UInt32 = 1, int8: UInt32 = 2, int16: UInt32 = 3
        static let int32: UInt32 = 4, int64: UInt32 = 5, string: UInt32 = 6, bin: UInt32 = 7
        static let stringArray: UInt32 = 8, i18nString: UInt32 = 9
    }

    /// `[epoch:]version-release`, like `rpm -q --qf '%{EPOCH}:%{VERSION}-%{RELEASE}'`
    /// without a `(none)` epoch.
    public var evr: String {
        (epoch.map { "\($0):" } ?? "") + version + "-" + release
    }

    /// Parses a header blob, with or without the 8-byte lead. Throws
    /// ``WardenError`` (`.corrupt` / `.limitExceeded`) on anything malformed.
    public static func parse(_ bytes: [UInt8]) throws -> RPMHeader {
        var base = 0
        if bytes.count >= 8, Array(bytes[0..<4]) == magic { base = 8 }
        let il32: UInt32 = try ByteReader.be(bytes, at: base, context: "rpm header")
        let dl32: UInt32 = try ByteReader.be(bytes, at: base + 4, context: "rpm header")
        guard il32 >= 1, il32 <= UInt32(maxIndexCount) else {
            throw WardenError.corrupt("rpm header has \(il32) index entries (1...\(maxIndexCount) allowed)")
        }
        guard dl32 <= UInt32(maxDataSize) else {
            throw WardenError.limit("rpm header data store is \(dl32) bytes (at most \(maxDataSize) allowed)")
        }
        let il = Int(il32), dl = Int(dl32)
        let indexStart = base + 8
        let storeStart = indexStart + il * 16          // il <= 100k: no overflow
        guard storeStart <= bytes.count, dl <= bytes.count - storeStart else {
            throw WardenError.corrupt("rpm header is truncated: \(il) entries and \(dl) data bytes need \(storeStart + dl) bytes, have \(bytes.count)")
        }
        let store = bytes[storeStart..<(storeStart + dl)]

        // Last valid entry per wanted tag wins (entries appended after the immutable
        // region, "dribbles", replace region entries in rpm too).
        var found: [UInt32: (type: UInt32, offset: Int, count: Int)] = [:]
        let wanted: Set<UInt32> = [Tag.name, Tag.version, Tag.release, Tag.epoch, Tag.arch, Tag.sourceRPM]
        for i in 0..<il {
            let e = indexStart + i * 16
            let tag: UInt32 = try ByteReader.be(bytes, at: e)
            let type: UInt32 = try ByteReader.be(bytes, at: e + 4)
            let off32: UInt32 = try ByteReader.be(bytes, at: e + 8)
            let cnt32: UInt32 = try ByteReader.be(bytes, at: e + 12)
            // Offsets are signed in rpm; a negative (huge unsigned) one is out of bounds anyway.
            guard off32 <= dl32 else {
                throw WardenError.corrupt("rpm header entry \(i) (tag \(tag)) has offset \(off32) past the \(dl)-byte data store")
            }
            let offset = Int(off32), count = Int(cnt32), room = dl - offset
            switch type {
            case DataType.null:
                break
            case DataType.char, DataType.int8, DataType.bin, DataType.int16, DataType.int32, DataType.int64:
                let size = type == DataType.int16 ? 2 : type == DataType.int32 ? 4 : type == DataType.int64 ? 8 : 1
                guard count <= room / size else {
                    throw WardenError.corrupt("rpm header entry \(i) (tag \(tag)) runs past the data store (\(count) x \(size) bytes at \(offset) of \(dl))")
                }
            case DataType.string, DataType.stringArray, DataType.i18nString:
                // Every string takes at least its NUL byte.
                guard count >= 1, count <= room else {
                    throw WardenError.corrupt("rpm header entry \(i) (tag \(tag)) has \(count) strings at \(offset) of a \(dl)-byte data store")
                }
                if type == DataType.string && count != 1 {
                    throw WardenError.corrupt("rpm header entry \(i) (tag \(tag)) is a STRING with count \(count)")
                }
            default:
                throw WardenError.corrupt("rpm header entry \(i) (tag \(tag)) has unknown type \(type)")
            }
            if wanted.contains(tag) { found[tag] = (type, offset, count) }
        }

        /// The first string of a string-typed entry (I18N strings: the first, default locale).
        func string(_ tag: UInt32) throws -> String? {
            guard let e = found[tag] else { return nil }
            guard e.type == DataType.string || e.type == DataType.stringArray || e.type == DataType.i18nString else {
                throw WardenError.corrupt("rpm header tag \(tag) has type \(e.type), expected a string")
            }
            let start = store.startIndex + e.offset
            let limit = min(store.endIndex, start + maxStringBytes + 1)
            guard let nul = store[start..<limit].firstIndex(of: 0) else {
                throw WardenError.corrupt("rpm header tag \(tag): string at \(e.offset) is not NUL-terminated within \(maxStringBytes) bytes of the data store")
            }
            return String(decoding: store[start..<nul], as: UTF8.self)
        }

        guard let name = try string(Tag.name), !name.isEmpty else { throw WardenError.corrupt("rpm header has no NAME") }
        guard let version = try string(Tag.version) else { throw WardenError.corrupt("rpm header of \(name) has no VERSION") }
        guard let release = try string(Tag.release) else { throw WardenError.corrupt("rpm header of \(name) has no RELEASE") }
        var epoch: Int?
        if let e = found[Tag.epoch] {
            guard e.type == DataType.int32, e.count >= 1 else {
                throw WardenError.corrupt("rpm header of \(name): EPOCH has type \(e.type) count \(e.count), expected INT32")
            }
            let v: UInt32 = try ByteReader.be(store, at: e.offset, context: "rpm header EPOCH")
            epoch = Int(v)
        }
        return RPMHeader(name: name, epoch: epoch, version: version, release: release,
                         arch: try string(Tag.arch), sourceRPM: try string(Tag.sourceRPM))
    }

    /// Splits a source rpm file name `NAME-VERSION-RELEASE.src.rpm` (or `.nosrc.rpm`)
    /// into name, version and release; nil if it does not have that shape.
    public static func splitSourceRPM(_ s: String) -> (name: String, version: String, release: String)? {
        var base = Substring(s)
        if base.hasSuffix(".nosrc.rpm") { base = base.dropLast(10) }
        else if base.hasSuffix(".src.rpm") { base = base.dropLast(8) }
        else { return nil }
        guard let d2 = base.lastIndex(of: "-"), d2 > base.startIndex else { return nil }
        let release = base[base.index(after: d2)...]
        let rest = base[..<d2]
        guard let d1 = rest.lastIndex(of: "-"), d1 > rest.startIndex else { return nil }
        let version = rest[rest.index(after: d1)...]
        let name = rest[..<d1]
        guard !release.isEmpty, !version.isEmpty, !name.isEmpty else { return nil }
        return (String(name), String(version), String(release))
    }

    /// The header as an installed package. The source package is taken from
    /// `SOURCERPM`, with the binary's epoch (source rpm file names carry none, and
    /// advisories compare `epoch:version-release`); without a parseable `SOURCERPM`
    /// the package is its own source.
    public var installedPackage: InstalledPackage {
        var sourceName = name, sourceVersion = evr
        if let srpm = sourceRPM, let s = RPMHeader.splitSourceRPM(srpm) {
            sourceName = s.name
            sourceVersion = (epoch.map { "\($0):" } ?? "") + s.version + "-" + s.release
        }
        return InstalledPackage(name: name, version: evr, epoch: epoch, upstreamVersion: version, revision: release,
                                architecture: arch ?? "", sourceName: sourceName, sourceVersion: sourceVersion,
                                manager: .rpm, status: "installed")
    }
}
