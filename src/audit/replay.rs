//! `sqlgate audit replay`: one session as a transcript a reviewer reads, in text or
//! as one self-contained HTML page (no external resources): who, which grant, when,
//! then every statement with its decision and reason, denials highlighted, with a
//! search box that filters the timeline.

use std::fmt::Write;

use serde_json::Value;

use super::read::Session;

fn field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}

/// `text` safe for a terminal: control characters (escape sequences, newlines,
/// carriage returns an agent put in a statement) and the invisible characters that
/// reorder text (bidirectional overrides and isolates) are shown escaped, never obeyed.
pub fn plain(text: &str) -> String {
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(hidden) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if hidden(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The session header lines: (label, value).
fn header(s: &Session) -> Vec<(&'static str, String)> {
    let or_dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    vec![
        ("session", s.session_id.clone()),
        ("subject", or_dash(&s.sub)),
        ("groups", s.groups.join(", ")),
        ("scopes", s.scopes.join(" ")),
        ("client id", or_dash(&s.client_id)),
        ("token id", or_dash(&s.token_id)),
        ("issuer", or_dash(&s.issuer)),
        ("connection", format!("{} ({})", s.connection, s.protocol)),
        ("upstream", or_dash(&s.upstream)),
        ("client", s.client_addr.clone()),
        ("grant", format!("{} {}", s.decision, or_dash(&s.grant_id))),
        ("grant reason", or_dash(&s.reason)),
        ("started", s.started.clone()),
        ("expires", or_dash(&s.expires_at)),
        (
            "ended",
            format!("{} ({})", or_dash(&s.ended), or_dash(&s.end_reason)),
        ),
        (
            "statements",
            format!(
                "{} ({} denied, {} failed upstream)",
                s.statements, s.denied, s.failed
            ),
        ),
    ]
}

/// The plain-text transcript.
pub fn transcript(s: &Session) -> String {
    let mut out = String::new();
    for (label, value) in header(s) {
        let _ = writeln!(out, "{label:<13} {}", plain(&value));
    }
    let _ = writeln!(out);
    for r in &s.records {
        let time = field(r, "time");
        match field(r, "event") {
            "statement" => {
                let decision = plain(&field(r, "decision").to_uppercase());
                let _ = writeln!(
                    out,
                    "{}  {decision:<5} {:<14} {}",
                    plain(time),
                    plain(field(r, "kind")),
                    plain(field(r, "statement"))
                );
                if let Some(reason) = r["reason"].as_str() {
                    let _ = writeln!(out, "{:31}reason: {}", "", plain(reason));
                }
                if let Some(params) = parameters(r) {
                    let _ = writeln!(out, "{:31}parameters: {}", "", plain(&params));
                }
            }
            "statement.result" => {
                let _ = writeln!(
                    out,
                    "{}  {:<5} #{} {}",
                    plain(time),
                    "",
                    r["statement_seq"],
                    plain(&outcome(r))
                );
            }
            event => {
                let _ = writeln!(
                    out,
                    "{}  {}: {}",
                    plain(time),
                    plain(event),
                    plain(field(r, "reason"))
                );
            }
        }
    }
    out
}

/// A statement's bound parameters as one line, if it has any.
fn parameters(r: &Value) -> Option<String> {
    match (&r["parameters"], r["parameter_count"].as_u64()) {
        (Value::Array(values), _) => Some(
            values
                .iter()
                .map(|v| match v {
                    // Quoted and escaped: a value cannot pass for two.
                    Value::String(s) => format!("{s:?}"),
                    _ => "NULL".into(),
                })
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (_, Some(n)) => Some(format!("{n} (redacted)")),
        _ => None,
    }
}

/// A result record as a phrase: "ok: 3 rows, 1.2 ms, 180 bytes".
fn outcome(r: &Value) -> String {
    let mut out = format!("{}:", field(r, "status"));
    if let Some(code) = r["error_code"].as_str() {
        let _ = write!(out, " {code} {}", field(r, "error_message"));
        out.push(',');
    }
    if let Some(rows) = r["rows"].as_u64() {
        let _ = write!(out, " {rows} row{},", if rows == 1 { "" } else { "s" });
    }
    if let Some(ms) = r["duration_ms"].as_f64() {
        let _ = write!(out, " {ms:.3} ms,");
    }
    if let Some(bytes) = r["bytes"].as_u64() {
        let _ = write!(out, " {bytes} bytes");
    }
    out.trim_end_matches(',').to_owned()
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The self-contained HTML page.
pub fn html(s: &Session) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>sqlgate session {id}</title>\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\
         <style>body{{font:14px system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}\
         td,th{{padding:4px 8px;border-bottom:1px solid #ddd;vertical-align:top;text-align:left}}\
         .deny{{background:#fde2e1}}.deny .d{{color:#a00;font-weight:bold}}.event{{color:#555;font-style:italic}}\
         .result{{color:#555}}.failed{{background:#fff3cd}}\
         code{{white-space:pre-wrap;word-break:break-all}}#q{{width:30em;padding:4px;margin:1em 0}}</style></head><body>\
         <h1>Session {id}</h1><table class=\"head\">",
        id = escape(&s.session_id)
    );
    for (label, value) in header(s) {
        let _ = write!(
            out,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(label),
            escape(&value)
        );
    }
    out.push_str(
        "</table><input id=\"q\" placeholder=\"search statements, kinds, reasons\" autofocus>\
         <table id=\"timeline\"><tr><th>time</th><th>decision</th><th>kind</th><th>statement / event</th><th>reason</th></tr>",
    );
    for r in &s.records {
        let time = escape(field(r, "time"));
        match field(r, "event") {
            "statement" => {
                let decision = field(r, "decision");
                let params = parameters(r)
                    .map(|p| format!("<br>parameters: <code>{}</code>", escape(&p)))
                    .unwrap_or_default();
                let _ = write!(
                    out,
                    "<tr class=\"{cls}\"><td>{time}</td><td class=\"d\">{d}</td><td>{k}</td><td>#{n} <code>{st}</code>{params}</td><td>{re}</td></tr>",
                    cls = if decision == "deny" { "deny" } else { "allow" },
                    d = escape(decision),
                    k = escape(field(r, "kind")),
                    n = r["statement_seq"],
                    st = escape(field(r, "statement")),
                    re = escape(field(r, "reason")),
                );
            }
            "statement.result" => {
                let failed = r["status"] != "ok";
                let _ = write!(
                    out,
                    "<tr class=\"result{f}\"><td>{time}</td><td>{s}</td><td>result</td><td>#{n} {o}</td><td></td></tr>",
                    f = if failed { " failed" } else { "" },
                    s = escape(field(r, "status")),
                    n = r["statement_seq"],
                    o = escape(&outcome(r)),
                );
            }
            event => {
                let _ = write!(
                    out,
                    "<tr class=\"event\"><td>{time}</td><td></td><td>{e}</td><td></td><td>{re}</td></tr>",
                    e = escape(event),
                    re = escape(field(r, "reason")),
                );
            }
        }
    }
    out.push_str(
        "</table><script>document.getElementById('q').addEventListener('input',function(){\
         var q=this.value.toLowerCase();var rows=document.querySelectorAll('#timeline tr');\
         for(var i=1;i<rows.length;i++){rows[i].style.display=rows[i].textContent.toLowerCase().indexOf(q)<0?'none':''}});\
         </script></body></html>\n",
    );
    out
}
