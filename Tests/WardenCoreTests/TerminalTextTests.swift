import Testing
import WardenCore

@Suite struct TerminalTextTests {
    @Test func plainTextIsUnchanged() {
        #expect(TerminalText.line("web-1 ✓ Ünïcode") == "web-1 ✓ Ünïcode")
    }

    @Test func controlsAreEscaped() {
        #expect(TerminalText.line("a\u{1B}[2Jb\u{07}\n") == "a\\x1b[2Jb\\x07\\x0a")
        #expect(TerminalText.line("\u{7F}") == "\\x7f")
        #expect(TerminalText.line("x\u{9B}31m") == "x\\u{009b}31m")
        #expect(TerminalText.line("invoice\u{202E}fdp.exe") == "invoice\\u{202e}fdp.exe")
        for u: UInt32 in [0x061C, 0x200E, 0x200F, 0x202A, 0x202B, 0x202C, 0x202D, 0x2066, 0x2067, 0x2068, 0x2069, 0x2028, 0x2029] {
            let s = String(Unicode.Scalar(u)!)
            #expect(TerminalText.line(s).hasPrefix("\\u{"), "U+\(String(u, radix: 16))")
        }
        for u: UInt32 in 0x80...0x9F {
            #expect(TerminalText.isUnsafe(Unicode.Scalar(u)!))
        }
        #expect(!TerminalText.isUnsafe("a") && !TerminalText.isUnsafe("\u{A0}"))
    }
}
