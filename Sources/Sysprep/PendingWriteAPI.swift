// TEMPORARY: the write-path contract (GuestFS.MutableFileSystem) until branch `writepath`
// lands on main; this file is deleted at that merge.
import Foundation
import GuestFS

public protocol MutableFileSystem: FileSystem {
    func replaceContents(of path: String, with data: [UInt8]) throws
    func createFile(_ path: String, contents: [UInt8], mode: UInt16, uid: UInt32, gid: UInt32) throws
    func truncate(_ path: String, to size: UInt64) throws
    func unlink(_ path: String) throws
    func setFilesystemUUID(_ uuid: UUID) throws
    func commit() throws
}

import DiskImage
import WardenCore
extension Sysprep {
    public static func applyImage(_ path: String, format: ImageFormat? = nil, operations: [any SysprepOperation],
                                  options: SysprepOptions) throws -> SysprepReport {
        throw WardenError.unsupported("writing needs the write path (branch writepath)")
    }
}
