import Foundation
import HTTPTypes
import Hummingbird
import Ledger
import Mustache
import NIOCore
import WardenCore

/// The dashboard: server-rendered HTML (swift-mustache, every value HTML-escaped), SVG drawn
/// on the server, no JavaScript needed (a few lines filter tables when it is on).
struct Dashboard: Sendable {
    let api: FleetAPI
    let sessions: Sessions
    let library: MustacheLibrary

    static let viewers: Set<Role> = [.admin, .operator, .auditor]

    init(api: FleetAPI, sessions: Sessions) throws {
        self.api = api
        self.sessions = sessions
        var lib = MustacheLibrary()
        for (name, text) in DashboardTemplates.all { try lib.register(text, named: name) }
        self.library = lib
    }

    func page(_ template: String, _ context: [String: Any], title: String, status: HTTPResponse.Status = .ok) -> Response {
        var ctx = context
        ctx["title"] = title
        let body = library.render(ctx, withTemplate: template) ?? ""
        let html = library.render(["title": title, "body": body, "nav": DashboardTemplates.nav], withTemplate: "layout") ?? body
        return Response(status: status, headers: [.contentType: "text/html; charset=utf-8",
                                                  .contentSecurityPolicy: "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'",
                                                  .cacheControl: "no-store"],
                        body: .init(byteBuffer: ByteBuffer(string: html)))
    }

    func requireViewer(_ ctx: WardenRequestContext) throws -> Principal {
        guard let p = ctx.principal else { throw DashboardDenied(status: .unauthorized) }
        guard Self.viewers.contains(p.role) else { throw DashboardDenied(status: .forbidden) }
        return p
    }

    struct DashboardDenied: Error, HTTPResponseError {
        var status: HTTPResponse.Status
        func response(from request: Request, context: some RequestContext) throws -> Response {
            let text = status == .unauthorized
                ? "<h1>Sign in</h1><p>Open a one-time link: <code>warden serve login-link --server URL</code> (with <code>$WARDEN_TOKEN</code> set).</p>"
                : "<h1>Not allowed</h1><p>This token's role cannot view the dashboard.</p>"
            return Response(status: status, headers: [.contentType: "text/html; charset=utf-8"],
                            body: .init(byteBuffer: ByteBuffer(string: "<!doctype html><html><body>\(text)</body></html>")))
        }
    }

    static func time(_ d: Date?) -> String { d.map { LedgerTime.rfc3339(LedgerTime.micros($0)) } ?? "never" }

    func add(to router: Router<WardenRequestContext>) {
        router.post("/v1/login-links") { _, ctx in
            try ctx.require(FleetAPI.allowed("POST", "/v1/login-links"))
            let link = sessions.link(for: ctx.principal!)
            return try FleetAPI.json(["path": "/login?once=\(link)", "expires_in_seconds": "\(Int(Sessions.linkLifetime))"])
        }
        // Over TLS the session cookie is never sent in clear.
        let secure = api.pki == nil ? "" : "; Secure"
        router.get("/login") { request, _ in
            guard let once = request.uri.queryParameters.get("once"), once.utf8.count == 64,
                  let session = sessions.redeem(once) else {
                return page("message", ["message": "This link is unknown, used or expired. Ask for a new one."], title: "Sign in", status: .unauthorized)
            }
            var next: String = request.uri.queryParameters.get("next").map { String($0) } ?? "/"
            // Only paths of this site (no //host, no scheme).
            if !next.hasPrefix("/") || next.hasPrefix("//") || next.contains("\\") { next = "/" }
            return Response(status: .seeOther, headers: [
                .location: next,
                .setCookie: "warden_session=\(session); Path=/; HttpOnly; SameSite=Strict; Max-Age=\(Int(Sessions.sessionLifetime))\(secure)",
            ])
        }
        router.post("/logout") { request, ctx in
            if let s = Self.sessionCookie(request) { sessions.end(s) }
            return Response(status: .seeOther, headers: [.location: "/", .setCookie: "warden_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0\(secure)"])
        }
        router.get("/") { _, ctx in
            _ = try requireViewer(ctx)
            let census = try await api.blocking { try $0.census(now: Date()) }
            let weeks = census.weeks.map { w -> [String: Any] in
                ["week": w.week, "appeared": w.appeared, "disappeared": w.disappeared, "live": w.liveAtEnd]
            }
            return page("census", [
                "total": census.total, "live": census.live,
                "states": census.byState.sorted { $0.key < $1.key }.map { ["name": $0.key, "count": $0.value] },
                "owners": census.byOwner.sorted { $0.value > $1.value }.map { ["name": $0.key, "count": $0.value] },
                "oses": census.byOs.sorted { $0.value > $1.value }.map { ["name": $0.key, "count": $0.value] },
                "weeks": weeks,
                "chart": Charts.growth(census.weeks),
                "net": String(format: "%.1f", census.growth.netPerWeek),
                "dormant": census.dormant.vms.map { ["id": $0.id.description, "name": $0.name, "owner": $0.owner, "last": Self.time($0.last)] },
                "dormantCount": census.dormant.count, "dormantDays": census.dormant.days,
                "stale": census.staleScans.vms.map { ["id": $0.id.description, "name": $0.name, "owner": $0.owner, "last": Self.time($0.last)] },
                "staleCount": census.staleScans.count,
                "malware": census.malware.vms.map { ["id": $0.id.description, "name": $0.name, "owner": $0.owner, "last": Self.time($0.last)] },
                "malwareCount": census.malware.infected, "malwareNever": census.malware.never,
            ], title: "Census")
        }
        router.get("/findings") { _, ctx in
            _ = try requireViewer(ctx)
            let rows = try await api.blocking { s in try FleetFindings.latest(s) }
            let order = ["critical", "high", "medium", "low", "negligible", "unknown", "none"]
            var bySeverity: [String: Int] = [:]
            for r in rows { bySeverity[r.maxSeverity ?? "none", default: 0] += 1 }
            return page("findings", [
                "severities": order.map { ["name": $0, "count": bySeverity[$0] ?? 0] },
                "chart": Charts.severities(order.map { ($0, bySeverity[$0] ?? 0) }),
                "vms": rows.sorted { (order.firstIndex(of: $0.maxSeverity ?? "none") ?? 9, -$0.vulnerable) < (order.firstIndex(of: $1.maxSeverity ?? "none") ?? 9, -$1.vulnerable) }
                    .map { ["id": $0.vm.description, "name": $0.name, "owner": $0.owner, "severity": $0.maxSeverity ?? "none",
                            "vulnerable": $0.vulnerable, "scanned": Self.time($0.scanned)] },
            ], title: "Findings")
        }
        router.get("/vms/:ref") { _, ctx in
            _ = try requireViewer(ctx)
            let ref = try ctx.reference()
            struct Page: Sendable { var vm: VMRecord; var events: [EventRecord]; var residency: [ResidencyRecord]; var lineage: Lineage }
            let p = try await api.blocking { s in
                let vm = try s.resolveVM(ref)
                return Page(vm: vm, events: try s.events(of: vm.id), residency: try s.residency(of: vm.id), lineage: try s.lineage(of: vm.id))
            }
            return page("vm", [
                "id": p.vm.id.description, "name": p.vm.name, "owner": p.vm.owner, "state": p.vm.state.rawValue,
                "generation": p.vm.generation.uuidString.lowercased(),
                "labels": p.vm.labels.sorted { $0.key < $1.key }.map { ["key": $0.key, "value": $0.value] },
                "residency": p.residency.map { ["host": $0.host.value, "kind": $0.kind.rawValue, "from": Self.time($0.from), "to": $0.to.map { Self.time($0) } ?? "now"] },
                "events": p.events.reversed().map { ["seq": $0.seq, "kind": $0.kind.rawValue, "host": $0.host.value, "actor": $0.actor,
                                                     "time": Self.time($0.time)] },
                "lineage": Charts.lineage(p.lineage),
            ], title: "VM \(p.vm.name)")
        }
        router.get("/exposure") { request, ctx in
            _ = try requireViewer(ctx)
            let q = request.uri.queryParameters
            var context: [String: Any] = ["host": q.get("host") ?? "", "from": q.get("from") ?? "", "to": q.get("to") ?? ""]
            if let hostText = q.get("host"), !hostText.isEmpty {
                guard let host = HostName(hostText), let from = q.get("from").flatMap(LedgerTime.parse),
                      let to = q.get("to").flatMap(LedgerTime.parse), from <= to else {
                    context["error"] = "Give a host name and a window (RFC 3339 times or dates, from ≤ to)."
                    return page("exposure", context, title: "Exposure", status: .badRequest)
                }
                let report = try await api.blocking { try $0.exposure(host: host, from: from, to: to, now: Date()) }
                context["report"] = true
                context["count"] = report.vms.count
                context["vms"] = report.vms.map { ["id": $0.vm.description, "name": $0.name, "owner": $0.owner, "how": $0.how,
                                                   "since": Self.time($0.exposedSince), "steps": $0.steps] }
            }
            return page("exposure", context, title: "Exposure")
        }
        router.get("/decisions") { _, ctx in
            _ = try requireViewer(ctx)
            let decisions = try await api.blocking { s in try FleetFindings.decisions(s, limit: 500) }
            return page("decisions", [
                "denied": decisions.filter { $0.effect != "allow" }.count,
                "rows": decisions.map { ["seq": $0.seq, "effect": $0.effect, "denied": $0.effect != "allow", "op": $0.op, "vm": $0.vm, "host": $0.host,
                                         "time": Self.time($0.time), "reasons": $0.reasons] },
            ], title: "Policy decisions")
        }
    }

    static func sessionCookie(_ request: Request) -> String? {
        guard let header = request.headers[.cookie] else { return nil }
        for part in header.split(separator: ";") {
            let kv = part.trimmingCharacters(in: .whitespaces).split(separator: "=", maxSplits: 1)
            if kv.count == 2, kv[0] == "warden_session", kv[1].utf8.count == 64 { return String(kv[1]) }
        }
        return nil
    }
}

/// Fleet-wide facts the dashboard reads from the log, the same on every backend.
enum FleetFindings {
    struct Row: Sendable { var vm: VMID; var name: String; var owner: String; var vulnerable: Int; var maxSeverity: String?; var scanned: Date }
    struct Decision: Sendable { var seq: Int64; var effect: String; var op: String; var vm: String; var host: String; var time: Date; var reasons: String }

    /// Each live VM's last `scanned` event: how many vulnerable findings and the worst severity.
    static func latest(_ s: any LedgerQueries) throws -> [Row] {
        var out: [Row] = []
        for vm in try s.listVMs() where vm.state != .retired {
            guard let e = try s.events(of: vm.id).last(where: { $0.kind == .scanned }) else { continue }
            var n = 0
            if case .number(let x)? = e.payload["vulnerable"], x.isFinite, x >= 0, x < 1e9 { n = Int(x) }
            out.append(Row(vm: vm.id, name: vm.name, owner: vm.owner, vulnerable: n, maxSeverity: e.payload["max_severity"]?.stringValue, scanned: e.time))
        }
        return out
    }

    /// The last `limit` policy decisions, denials first.
    static func decisions(_ s: any LedgerQueries, limit: Int) throws -> [Decision] {
        let size = try s.eventCount()
        var out: [Decision] = []
        var after = max(0, size - 20_000)
        while true {
            let page = try s.events(after: after, limit: 5_000)
            guard let last = page.last else { break }
            after = last.seq
            for e in page where e.kind == .policyDecision {
                let reasons: String
                if case .array(let a)? = e.payload["reasons"] { reasons = a.compactMap(\.stringValue).joined(separator: "; ") } else { reasons = "" }
                out.append(Decision(seq: e.seq, effect: e.payload["effect"]?.stringValue ?? "?", op: e.payload["op"]?.stringValue ?? "?",
                                    vm: e.vm?.description ?? "-", host: e.host.value, time: e.time, reasons: reasons))
            }
        }
        out = Array(out.suffix(limit))
        return out.filter { $0.effect != "allow" }.reversed() + out.filter { $0.effect == "allow" }.reversed()
    }
}

/// SVG drawn on the server; every text is XML-escaped.
enum Charts {
    static func esc(_ s: String) -> String {
        var o = ""
        for c in s.unicodeScalars {
            switch c {
            case "&": o += "&amp;"
            case "<": o += "&lt;"
            case ">": o += "&gt;"
            case "\"": o += "&quot;"
            case "'": o += "&#39;"
            default: o.unicodeScalars.append(c.value < 0x20 ? "?" : c)
            }
        }
        return o
    }

    /// Live VMs at the end of each week, as bars.
    static func growth(_ weeks: [CensusWeek]) -> String {
        let w = 640, h = 180, pad = 24
        let maxLive = max(1, weeks.map(\.liveAtEnd).max() ?? 1)
        let bw = weeks.isEmpty ? 0 : (w - 2 * pad) / weeks.count
        var svg = ##"<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="Live VMs per week" width="\##(w)" height="\##(h + 30)" class="chart growth">"##
        for (i, wk) in weeks.enumerated() {
            let bh = Int(Double(h - pad) * Double(wk.liveAtEnd) / Double(maxLive))
            let x = pad + i * bw
            svg += ##"<rect x="\##(x)" y="\##(h - bh)" width="\##(max(1, bw - 4))" height="\##(bh)" fill="#4a7bd0"><title>\##(esc(wk.week)): \##(wk.liveAtEnd) live, +\##(wk.appeared) −\##(wk.disappeared)</title></rect>"##
            svg += ##"<text x="\##(x)" y="\##(h + 14)" font-size="9">\##(esc(String(wk.week.suffix(3))))</text>"##
        }
        svg += ##"<text x="\##(pad)" y="12" font-size="11">max \##(maxLive) live</text></svg>"##
        return svg
    }

    static func severities(_ counts: [(String, Int)]) -> String {
        let colors = ["critical": "#8b0000", "high": "#d9534f", "medium": "#f0ad4e", "low": "#5bc0de", "negligible": "#9e9e9e", "unknown": "#777", "none": "#5cb85c"]
        let maxN = max(1, counts.map(\.1).max() ?? 1)
        var svg = ##"<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="VMs by worst severity" width="520" height="\##(counts.count * 24 + 10)" class="chart severities">"##
        for (i, (name, n)) in counts.enumerated() {
            let bw = Int(360.0 * Double(n) / Double(maxN))
            svg += ##"<text x="0" y="\##(i * 24 + 16)" font-size="12">\##(esc(name))</text>"##
            svg += ##"<rect x="100" y="\##(i * 24 + 4)" width="\##(bw)" height="16" fill="\##(colors[name] ?? "#999")"/>"##
            svg += ##"<text x="\##(106 + bw)" y="\##(i * 24 + 16)" font-size="12">\##(n)</text>"##
        }
        return svg + "</svg>"
    }

    /// The lineage tree: one row per VM in depth-first order, indented by depth, with an edge
    /// from each VM to its parent; the VM of the page is highlighted.
    static func lineage(_ l: Lineage) -> String {
        let nodes = Array(l.nodes.prefix(500))
        let rowH = 34, colW = 150
        let width = 60 + colW * ((nodes.map(\.depth).max() ?? 0) + 1) + 200
        var svg = ##"<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="Lineage" width="\##(width)" height="\##(nodes.count * rowH + 20)" class="lineage">"##
        var pos: [VMID: (Int, Int)] = [:]
        for (i, n) in nodes.enumerated() { pos[n.id] = (20 + n.depth * colW, 20 + i * rowH) }
        for n in nodes {
            guard let p = n.parent, let a = pos[p], let b = pos[n.id] else { continue }
            svg += ##"<path d="M\##(a.0 + 6) \##(a.1 + 6) V\##(b.1) H\##(b.0)" fill="none" stroke="#888" class="edge"/>"##
        }
        for n in nodes {
            let (x, y) = pos[n.id]!
            let me = n.role == .`self`
            svg += ##"<g class="node\##(me ? " self" : "")" data-vm="\##(n.id.description)">"##
            svg += ##"<circle cx="\##(x + 6)" cy="\##(y + 6)" r="6" fill="\##(n.state == .retired ? "#bbb" : (me ? "#d9534f" : "#4a7bd0"))"/>"##
            svg += ##"<a href="/vms/\##(n.id.description)"><text x="\##(x + 16)" y="\##(y + 10)" font-size="13"\##(me ? " font-weight=\"bold\"" : "")>\##(esc(n.name))</text></a>"##
            svg += ##"<text x="\##(x + 16)" y="\##(y + 24)" font-size="10" fill="#666">\##(esc(n.relation)) · \##(esc(n.owner)) · \##(n.state.rawValue)</text></g>"##
        }
        return svg + "</svg>"
    }
}
