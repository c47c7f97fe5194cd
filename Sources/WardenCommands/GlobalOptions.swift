import ArgumentParser
import Foundation
import WardenConfig
import WardenCore

/// Options every command takes, wherever they appear before `--`: `--log-level LEVEL` and
/// `--progress auto|always|never` (a bare `--progress` means always). They are taken out of the
/// arguments before parsing and put into `$WARDEN_LOG` / `$WARDEN_PROGRESS`, which is where the
/// rest of Warden reads them: a flag beats the environment, which beats the configuration file.
enum GlobalOptions {
    /// The configuration keys given as flags in this process (`config show` reports them so).
    nonisolated(unsafe) static var fromFlags: Set<String> = []

    static let logLevels = ConfigKey.named("log_level")!.choices!

    /// `arguments` without the global options; sets their environment variables.
    static func extract(_ arguments: [String], setenv set: (String, String) -> Void = { setenv($0, $1, 1) }) throws -> [String] {
        var out: [String] = []
        var i = 0
        var flags: Set<String> = []
        while i < arguments.count {
            let a = arguments[i]
            if a == "--" { out.append(contentsOf: arguments[i...]); break }
            if a == "--log-level" || a.hasPrefix("--log-level=") {
                let value: String
                if a == "--log-level" {
                    guard i + 1 < arguments.count else { throw ValidationError("--log-level needs a level (\(logLevels.joined(separator: ", ")))") }
                    value = arguments[i + 1]; i += 2
                } else { value = String(a.dropFirst("--log-level=".count)); i += 1 }
                guard logLevels.contains(value) else {
                    throw ValidationError("--log-level is one of \(logLevels.joined(separator: ", ")), not '\(oneLine(value))'")
                }
                set("WARDEN_LOG", value); flags.insert("log_level")
                continue
            }
            if a == "--progress" || a.hasPrefix("--progress=") {
                var value = "always"
                if a.hasPrefix("--progress=") {
                    value = String(a.dropFirst("--progress=".count))
                    guard ProgressMode(rawValue: value) != nil else { throw ValidationError("--progress is auto, always or never, not '\(oneLine(value))'") }
                    i += 1
                } else if i + 1 < arguments.count, ProgressMode(rawValue: arguments[i + 1]) != nil {
                    value = arguments[i + 1]; i += 2
                } else { i += 1 }
                set("WARDEN_PROGRESS", value); flags.insert("progress")
                continue
            }
            out.append(a)
            i += 1
        }
        fromFlags = flags
        return out
    }
}
