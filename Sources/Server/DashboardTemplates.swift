/// The dashboard's Mustache templates. `{{x}}` escapes HTML; `{{{x}}}` is used only for SVG the
/// server drew itself (Charts escapes every text in it) and for the page body and navigation.
enum DashboardTemplates {
    static let nav = """
    <nav><a href="/">Census</a> <a href="/findings">Findings</a> <a href="/exposure">Exposure</a> <a href="/decisions">Decisions</a>
    <form method="post" action="/logout" class="logout"><button>Sign out</button></form></nav>
    """

    static let all: [(String, String)] = [
        ("layout", """
        <!doctype html>
        <html lang="en"><head><meta charset="utf-8"><title>{{title}} · Warden</title>
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <style>
        body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
        nav{background:#223;padding:10px 16px}nav a{color:#fff;margin-right:16px;text-decoration:none}
        nav .logout{display:inline;float:right}nav button{background:none;border:1px solid #889;color:#ccd;border-radius:3px}
        main{padding:16px 24px;max-width:1100px}h1{font-size:22px}h2{font-size:17px;margin-top:28px}
        table{border-collapse:collapse;width:100%;background:#fff}th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;font-size:13px}
        th{background:#eef}.num{text-align:right}.deny{color:#b00;font-weight:bold}.cards{display:flex;gap:12px}
        .card{background:#fff;border:1px solid #ddd;padding:10px 16px;border-radius:4px}.card b{font-size:22px;display:block}
        input{padding:3px}.filter{margin:6px 0}code{background:#eee;padding:1px 4px}
        </style></head>
        <body>{{{nav}}}<main>{{{body}}}</main>
        <script>
        document.querySelectorAll('input.filter').forEach(function(f){f.addEventListener('input',function(){
          var t=document.getElementById(f.dataset.table),q=f.value.toLowerCase();
          t.querySelectorAll('tbody tr').forEach(function(r){r.style.display=r.textContent.toLowerCase().indexOf(q)<0?'none':''})})});
        </script></body></html>
        """),
        ("message", "<h1>{{title}}</h1><p>{{message}}</p>"),
        ("census", """
        <h1>Census</h1>
        <div class="cards"><div class="card" id="live"><b>{{live}}</b>live VMs</div><div class="card"><b>{{total}}</b>in the ledger</div>
        <div class="card"><b>{{net}}</b>net per week</div><div class="card" id="dormant-count"><b>{{dormantCount}}</b>dormant ≥ {{dormantDays}} days</div>
        <div class="card"><b>{{staleCount}}</b>scans stale</div>
        <div class="card" id="malware-count"><b>{{malwareCount}}</b>with malware ({{malwareNever}} never scanned for it)</div></div>
        <h2>Growth</h2>{{{chart}}}
        <table id="weeks"><thead><tr><th>Week</th><th class="num">Appeared</th><th class="num">Retired</th><th class="num">Live at end</th></tr></thead><tbody>
        {{#weeks}}<tr><td>{{week}}</td><td class="num">{{appeared}}</td><td class="num">{{disappeared}}</td><td class="num">{{live}}</td></tr>{{/weeks}}
        </tbody></table>
        <h2>By state</h2><table id="states"><tbody>{{#states}}<tr><td>{{name}}</td><td class="num">{{count}}</td></tr>{{/states}}</tbody></table>
        <h2>By owner</h2><table id="owners"><tbody>{{#owners}}<tr><td>{{name}}</td><td class="num">{{count}}</td></tr>{{/owners}}</tbody></table>
        <h2>By operating system</h2><table id="oses"><tbody>{{#oses}}<tr><td>{{name}}</td><td class="num">{{count}}</td></tr>{{/oses}}</tbody></table>
        <h2>Dormant</h2><input class="filter" data-table="dormant" placeholder="filter">
        <table id="dormant"><thead><tr><th>VM</th><th>Owner</th><th>Last started</th></tr></thead><tbody>
        {{#dormant}}<tr><td><a href="/vms/{{id}}">{{name}}</a></td><td>{{owner}}</td><td>{{last}}</td></tr>{{/dormant}}
        </tbody></table>
        <h2>Stale scans</h2><table id="stale"><thead><tr><th>VM</th><th>Owner</th><th>Last scanned</th></tr></thead><tbody>
        {{#stale}}<tr><td><a href="/vms/{{id}}">{{name}}</a></td><td>{{owner}}</td><td>{{last}}</td></tr>{{/stale}}
        </tbody></table>
        <h2>Malware</h2><table id="malware"><thead><tr><th>VM</th><th>Owner</th><th>Scanned</th></tr></thead><tbody>
        {{#malware}}<tr><td><a href="/vms/{{id}}">{{name}}</a></td><td>{{owner}}</td><td>{{last}}</td></tr>{{/malware}}
        </tbody></table>
        """),
        ("findings", """
        <h1>Findings across the fleet</h1>
        <p>Each live VM by the worst severity of its last scan.</p>
        {{{chart}}}
        <table id="severities"><tbody>{{#severities}}<tr><td>{{name}}</td><td class="num">{{count}}</td></tr>{{/severities}}</tbody></table>
        <h2>VMs</h2><input class="filter" data-table="vms" placeholder="filter">
        <table id="vms"><thead><tr><th>VM</th><th>Owner</th><th>Worst</th><th class="num">Vulnerable</th><th>Scanned</th></tr></thead><tbody>
        {{#vms}}<tr><td><a href="/vms/{{id}}">{{name}}</a></td><td>{{owner}}</td><td>{{severity}}</td><td class="num">{{vulnerable}}</td><td>{{scanned}}</td></tr>{{/vms}}
        </tbody></table>
        """),
        ("vm", """
        <h1>{{name}}</h1>
        <table id="facts"><tbody><tr><th>Id</th><td>{{id}}</td></tr><tr><th>Owner</th><td id="owner">{{owner}}</td></tr>
        <tr><th>State</th><td>{{state}}</td></tr><tr><th>Generation</th><td>{{generation}}</td></tr>
        {{#labels}}<tr><th>{{key}}</th><td>{{value}}</td></tr>{{/labels}}</tbody></table>
        <h2>Lineage</h2>{{{lineage}}}
        <h2>Residency</h2><table id="residency"><thead><tr><th>Host</th><th>Kind</th><th>From</th><th>To</th></tr></thead><tbody>
        {{#residency}}<tr><td>{{host}}</td><td>{{kind}}</td><td>{{from}}</td><td>{{to}}</td></tr>{{/residency}}
        </tbody></table>
        <h2>History</h2><input class="filter" data-table="history" placeholder="filter">
        <table id="history"><thead><tr><th class="num">#</th><th>Event</th><th>Host</th><th>Actor</th><th>Time</th></tr></thead><tbody>
        {{#events}}<tr><td class="num">{{seq}}</td><td>{{kind}}</td><td>{{host}}</td><td>{{actor}}</td><td>{{time}}</td></tr>{{/events}}
        </tbody></table>
        """),
        ("exposure", """
        <h1>Host exposure</h1>
        <form method="get" action="/exposure"><label>Host <input name="host" value="{{host}}"></label>
        <label>From <input name="from" value="{{from}}" placeholder="2026-11-01"></label>
        <label>To <input name="to" value="{{to}}" placeholder="2026-12-01"></label> <button>Show</button></form>
        {{#error}}<p class="deny">{{error}}</p>{{/error}}
        {{#report}}<p id="exposed-count">{{count}} VMs exposed to a compromise of {{host}} in the window.</p>
        <table id="exposed"><thead><tr><th>VM</th><th>Owner</th><th>How</th><th>Since</th><th class="num">Steps</th></tr></thead><tbody>
        {{#vms}}<tr><td><a href="/vms/{{id}}">{{name}}</a></td><td>{{owner}}</td><td>{{how}}</td><td>{{since}}</td><td class="num">{{steps}}</td></tr>{{/vms}}
        </tbody></table>{{/report}}
        """),
        ("decisions", """
        <h1>Policy decisions</h1><p id="denied-count">{{denied}} denied (listed first).</p>
        <input class="filter" data-table="decisions" placeholder="filter">
        <table id="decisions"><thead><tr><th class="num">#</th><th>Effect</th><th>Operation</th><th>VM</th><th>Host</th><th>Time</th><th>Reasons</th></tr></thead><tbody>
        {{#rows}}<tr><td class="num">{{seq}}</td><td{{#denied}} class="deny"{{/denied}}>{{effect}}</td><td>{{op}}</td><td><a href="/vms/{{vm}}">{{vm}}</a></td><td>{{host}}</td><td>{{time}}</td><td>{{reasons}}</td></tr>{{/rows}}
        </tbody></table>
        """),
    ]
}
