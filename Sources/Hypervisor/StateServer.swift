import Foundation
import WardenCore
import Ledger
#if canImport(Glibc)
import Glibc
import Storage
#endif

/// The host end of the state port: a small background process (`warden vm state-server`)
/// that `vm start` spawns beside each QEMU. It connects to QEMU's `state.sock`, answers
/// one line per request (``StateProtocol``), and sends `GENERATION-CHANGED <id>` when the
/// ledger's generation of the VM changes (checked every second, and at once after a rollback
/// restart). It exits when QEMU closes the socket.
///
/// A separate process rather than a thread of a supervisor: QEMU runs daemonized on its own
/// (`-daemonize`), so a crash of the state server never takes the VM down, and `vm stop` or
/// `kill -9` of QEMU ends the server by closing its socket.
public struct StateServer: Sendable {
    public var vm: VMID
    public var socketPath: String
    public var generation: @Sendable () throws -> UUID
    public var counters: CounterStore
    /// Send `GENERATION-CHANGED` with the current generation as soon as connected (after a rollback).
    public var announceAtStart: Bool
    public var log: @Sendable (String) -> Void

    public init(vm: VMID, socketPath: String, generation: @escaping @Sendable () throws -> UUID, counters: CounterStore,
                announceAtStart: Bool, log: @escaping @Sendable (String) -> Void) {
        self.vm = vm; self.socketPath = socketPath; self.generation = generation
        self.counters = counters; self.announceAtStart = announceAtStart; self.log = log
    }

    /// Serves until QEMU closes the socket. Returns the number of requests answered.
    @discardableResult
    public func run(connectTimeout: TimeInterval = 30) throws -> Int {
        let sock = try UnixLineSocket(connect: socketPath, timeout: connectTimeout, maxLine: StateProtocol.maxLine)
        sock.setReadTimeout(1)
        var known = try? generation()
        if announceAtStart, let g = known {
            try sock.write(line: "GENERATION-CHANGED " + g.uuidString.lowercased())
            log("announced generation \(g.uuidString.lowercased())")
        }
        var served = 0
        while true {
            let line: String?
            do {
                line = try sock.readLine()
            } catch is UnixLineSocket.SocketTimeout {
                if let g = try? generation(), g != known {
                    known = g
                    try sock.write(line: "GENERATION-CHANGED " + g.uuidString.lowercased())
                    log("announced generation \(g.uuidString.lowercased())")
                }
                continue
            } catch let e as WardenError where e.code == .corrupt {
                sock.discardBuffer()
                try sock.write(line: "ERR line-too-long")
                continue
            }
            guard let line else { break }
            let answer = StateProtocol.answer(line, vm: vm, generation: generation, counters: counters)
            try sock.write(line: answer)
            served += 1
        }
        log("QEMU closed the state port after \(served) requests")
        return served
    }
}
