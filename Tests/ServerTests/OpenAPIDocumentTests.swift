import Foundation
import Server
import Testing
import Yams

/// The OpenAPI document in docs/ lists exactly the server's routes, with the same roles.
@Suite struct OpenAPIDocumentTests {
    @Test func documentMatchesTheRoutes() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let text = try String(contentsOf: root.appendingPathComponent("docs/openapi.yaml"), encoding: .utf8)
        let doc = try #require(try Yams.load(yaml: text) as? [String: Any])
        #expect(doc["openapi"] as? String == "3.1.0")
        let paths = try #require(doc["paths"] as? [String: Any])
        var documented: [String: Set<String>] = [:]
        for (path, ops) in paths {
            for (method, op) in try #require(ops as? [String: Any]) {
                let roles = try #require((op as? [String: Any])?["x-warden-roles"] as? [String], "\(method) \(path) has no x-warden-roles")
                documented["\(method.uppercased()) \(path)"] = Set(roles)
            }
        }
        var served: [String: Set<String>] = ["GET /healthz": []]
        for r in FleetAPI.routes { served["\(r.method) \(r.path)"] = Set(r.allowed.map(\.rawValue)) }
        #expect(documented == served)
    }
}
