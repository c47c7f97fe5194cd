/// The one error type that crosses module boundaries in Warden.
///
/// A `WardenError` carries an opaque ``Code`` (which decides the exit code), a
/// one-line human message, and optionally the file and byte offset involved.
/// Descriptions never include guest file contents or secrets: only structure
/// names, offsets and sizes.
public struct WardenError: Error, Sendable, CustomStringConvertible, Equatable {
    /// What kind of failure this is. Codes map to exit codes in one place.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let raw: String
        private init(_ raw: String) { self.raw = raw }
        /// The input (an image, a file inside it) is malformed or hostile.
        public static let corrupt = Code("corrupt")
        /// The input is well formed but uses a feature Warden does not support.
        public static let unsupported = Code("unsupported")
        /// A path, partition, snapshot or other named thing does not exist.
        public static let notFound = Code("not-found")
        /// The caller asked for something invalid (bad argument, wrong type).
        public static let invalidArgument = Code("invalid-argument")
        /// The operating system refused an I/O operation.
        public static let io = Code("io")
        /// A limit (size, depth, count) that protects Warden was exceeded.
        public static let limitExceeded = Code("limit-exceeded")
        /// A policy decision refused the operation (exit 3).
        public static let denied = Code("denied")
        /// Something Warden needs is not reachable: the network, a database, a daemon.
        public static let unavailable = Code("unavailable")
        /// The operation conflicts with current state (a VM already running, a name taken).
        public static let conflict = Code("conflict")
        /// A bug in Warden.
        public static let `internal` = Code("internal")
        public var description: String { raw }
    }

    public var code: Code
    public var message: String
    /// The file (usually an image path) the problem is in, if any.
    public var file: String?
    /// The byte offset inside `file` the problem is at, if known.
    public var offset: UInt64?
    /// The underlying error (an SQLite, Foundation or system error), kept as it is rather than
    /// flattened into `message`, for logs and for callers that inspect it. Not part of
    /// ``description`` and not compared by `==`.
    public var cause: (any Error & Sendable)?

    public init(_ code: Code, _ message: String, file: String? = nil, offset: UInt64? = nil,
                cause: (any Error & Sendable)? = nil) {
        self.code = code
        // Neutralised when built, not only when printed: a message quotes guest names,
        // domain names and feed text, and reaches logs, JSON and libvirt's error line.
        self.message = TerminalText.line(message)
        self.file = file
        self.offset = offset
        self.cause = cause
    }

    public static func == (a: WardenError, b: WardenError) -> Bool {
        a.code == b.code && a.message == b.message && a.file == b.file && a.offset == b.offset
    }

    /// One line: `file: message`.
    public var description: String {
        if let file { return "\(file): \(message)" }
        return message
    }

    /// The process exit code for this error (see ARCHITECTURE.md: 2 bad input, 4 internal).
    public var exitCode: Int32 {
        switch code {
        case .internal, .unavailable: return 4
        case .denied: return 3
        default: return 2
        }
    }

    /// Returns a copy that names `file` if no file is named yet.
    public func inFile(_ file: String) -> WardenError {
        var copy = self
        if copy.file == nil { copy.file = file }
        return copy
    }

    public static func corrupt(_ message: String, file: String? = nil, offset: UInt64? = nil) -> WardenError {
        WardenError(.corrupt, message, file: file, offset: offset)
    }
    public static func unsupported(_ message: String, file: String? = nil) -> WardenError {
        WardenError(.unsupported, message, file: file)
    }
    public static func notFound(_ message: String, file: String? = nil) -> WardenError {
        WardenError(.notFound, message, file: file)
    }
    public static func limit(_ message: String, file: String? = nil) -> WardenError {
        WardenError(.limitExceeded, message, file: file)
    }
}

/// Formats an offset the way error messages show it: `0x1f000`.
public func hex<T: BinaryInteger>(_ value: T) -> String {
    "0x" + String(value, radix: 16)
}
