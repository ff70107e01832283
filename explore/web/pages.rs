//! The HTML pages: maud templates over [`super::data`]. maud escapes
//! every interpolated value, so nothing from the data (a title holding
//! `<script>`) reaches the page as markup; links are built with
//! [`super::fmt::enc`] so that keys and type names survive the trip.

use super::api::{browse_query, diff_query, select};
use super::data::{self, TimelineEntry};
use super::fmt::{bytes, enc, history_href, record_href, utc};
use super::request::{self, Failure, PageFailure, PathArg, QueryArg};
use super::Shared;
use crate::announcer::AnnounceKind;
use crate::explore::{Change, DiffMethod, FieldChange, RecordChange};
use axum::extract::State;
use axum::response::Html;
use maud::{html, Markup, DOCTYPE};
use serde_json::Value;
use std::sync::Arc;

type Page = Result<Html<String>, PageFailure>;

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:0;color:#1d232b;background:#f7f8fa}
header{background:#27323f;color:#fff;padding:.6em 1.2em;display:flex;gap:1.5em;align-items:baseline}
header a{color:#cfe3ff;text-decoration:none}header strong{font-size:1.15em}
main{padding:1em 1.5em}
table{border-collapse:collapse;background:#fff;margin:.5em 0 1.2em}
th,td{border:1px solid #d8dde3;padding:.25em .6em;text-align:left;vertical-align:top;font-size:.92em}
th{background:#eef1f5}td.n{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#fff;border:1px solid #d8dde3;padding:.8em;overflow:auto;max-width:100%}
code{font-size:.92em}.muted{color:#6b7480}.error{color:#a11}
form{margin:.4em 0 1em;display:flex;gap:.5em;align-items:center;flex-wrap:wrap}
input{padding:.2em .4em}#timeline td{white-space:nowrap}.added{color:#176b2c}.removed{color:#a11}.changed{color:#8a5a00}
";

fn layout(title: &str, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    title { (title) " · burrow explorer" }
                    style { (maud::PreEscaped(STYLE)) }
                }
                body {
                    header {
                        strong { "burrow explorer" }
                        a href="/" { "Timeline" }
                        a href="/health" { "Health" }
                        a href="/api/versions" { "API" }
                    }
                    main {
                        h1 { (title) }
                        (body)
                    }
                }
            }
        }
        .into_string(),
    )
}

/// A failed request's page: its status and what was wrong.
pub(crate) fn failure_page(f: &Failure) -> Html<String> {
    let title = format!(
        "{} {}",
        f.status.as_u16(),
        f.status.canonical_reason().unwrap_or("Error")
    );
    layout(
        &title,
        html! {
            p.error #problem { (f.message) }
            p { a href="/" { "Back to the timeline" } }
        },
    )
}

fn json_compact(v: &Value, max: usize) -> String {
    let text = v.to_string();
    if text.chars().count() <= max {
        return text;
    }
    let cut: String = text.chars().take(max).collect();
    format!("{cut}…")
}

fn json_pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

fn diff_forms(newest: u64) -> Markup {
    html! {
        form action="/diff" method="get" #diff-form {
            strong { "Diff" }
            input type="number" name="from" min="1" placeholder="from" required;
            input type="number" name="to" min="1" placeholder="to" value=(newest) required;
            button type="submit" { "Compare" }
        }
        form action="/history" method="get" #history-form {
            strong { "History" }
            input type="text" name="type" placeholder="type (optional)";
            input type="text" name="key" placeholder="key: 42 or field=value,…" required;
            button type="submit" { "Show" }
        }
    }
}

/// `/`: the announcement log, newest first.
pub(crate) async fn timeline(State(shared): State<Arc<Shared>>, q: QueryArg) -> Page {
    let p = request::params(q)?;
    let limit = request::number(&p, "limit")?.map_or(data::TIMELINE_DEFAULT, |n| n as usize);
    let t = data::timeline(&shared, limit).await?;
    let body = html! {
        p {
            "Dataset " code { (t.dataset) } ", newest version "
            a.version href={ "/versions/" (t.newest) } { (t.newest) }
            ". " (t.entries.len()) " of " (t.total) " entries shown"
            @if t.entries.len() < t.total {
                " (" a href={ "/?limit=" (t.total) } { "show all" } ")"
            }
            "."
        }
        (diff_forms(t.newest))
        table #timeline {
            thead { tr {
                th { "Seq" } th { "Kind" } th { "Version" } th { "From" } th { "Snapshot" }
                th { "Pinned" } th { "Snapshot size" } th { "Delta size" } th { "Reverse size" }
                th { "Records" } th { "Time" } th { "Producer" } th { "Diff" }
            } }
            tbody {
                @for e in &t.entries { (timeline_row(e)) }
            }
        }
    };
    Ok(layout("Timeline", body))
}

fn timeline_row(e: &TimelineEntry) -> Markup {
    let a = &e.entry;
    let announce = a.kind == AnnounceKind::Announce;
    let size = |shown: bool, n: u64| {
        if shown && n > 0 {
            bytes(n)
        } else {
            "-".into()
        }
    };
    html! {
        tr data-version=(a.version) {
            td.n { (a.seq) }
            td { (a.kind.as_str()) }
            td.n {
                @if announce { a.version href={ "/versions/" (a.version) } { (a.version) } }
                @else { (a.version) }
            }
            td.n { @if a.from_version == 0 { "-" } @else { (a.from_version) } }
            td { @if a.has_snapshot { "yes" } @else { "at " (a.snapshot_version) } }
            td.n { @if let Some(p) = a.pinned_version { (p) } @else { "-" } }
            td.n { (size(announce && a.has_snapshot, a.snapshot_bytes)) }
            td.n { (size(announce, a.delta_bytes)) }
            td.n { (size(announce, a.reverse_bytes)) }
            td {
                @match &e.types {
                    Some(Ok(types)) => {
                        @for (i, t) in types.iter().enumerate() {
                            @if i > 0 { ", " }
                            (short(&t.name)) " " (t.records)
                        }
                    }
                    Some(Err(why)) => { span.muted title=(why) { "unavailable" } }
                    None => { "-" }
                }
            }
            td { (utc(a.timestamp_micros)) }
            td { (a.producer_id) }
            td {
                @if announce && a.from_version != 0 {
                    a.diff href={ "/diff?from=" (a.from_version) "&to=" (a.version) } {
                        (a.from_version) " → " (a.version)
                    }
                }
            }
        }
    }
}

fn short(name: &str) -> &str {
    name.rsplit([':', '.']).next().unwrap_or(name)
}

/// `/versions/{v}`: the version's types, counts and schema.
pub(crate) async fn version(State(shared): State<Arc<Shared>>, v: PathArg<String>) -> Page {
    let v = request::version("version", &request::path(v)?)?;
    let info = data::version(&shared, v).await?;
    let e = &info.entry;
    let body = html! {
        p {
            "Published by " code { (e.producer_id) } " at " (utc(e.timestamp_micros))
            @if e.from_version != 0 {
                " from version " a href={ "/versions/" (e.from_version) } { (e.from_version) }
                " (" a.diff href={ "/diff?from=" (e.from_version) "&to=" (v) } { "diff" } ")"
            }
            "; snapshot "
            @if e.has_snapshot { "of its own" } @else { "at version " (e.snapshot_version) }
            "."
        }
        h2 { "Types" }
        table #types {
            thead { tr { th { "Type" } th { "Key" } th { "Records" } th { "Look up" } } }
            tbody {
                @for t in &info.types {
                    @let url = data::url_name(&info.types, &t.name);
                    @let base = format!("/versions/{v}/types/{}", enc(&url));
                    tr {
                        td { a.type href=(base) { (t.name) } }
                        td { (t.key_fields.join(", ")) }
                        td.n { (t.records) }
                        td {
                            form action={ (base) "/record" } method="get" {
                                @if t.key_fields.is_empty() {
                                    input type="number" name="ordinal" min="0" placeholder="ordinal" required;
                                } @else {
                                    input type="text" name="key" placeholder={ "key: " (t.key_fields.join(",")) } required;
                                }
                                button type="submit" { "Open" }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Schema" }
        @match &info.schema {
            Ok(text) => { pre #schema { code { (text) } } }
            Err(why) => { p.error { (why) } }
        }
    };
    Ok(layout(&format!("Version {v}"), body))
}

/// `/versions/{v}/types/{t}`: records from an ordinal on, filtered.
pub(crate) async fn browse(
    State(shared): State<Arc<Shared>>,
    path: PathArg<(String, String)>,
    q: QueryArg,
) -> Page {
    let (v, t) = request::path(path)?;
    let v = request::version("version", &v)?;
    let query = browse_query(&request::params(q)?)?;
    let page = data::browse(&shared, v, &t, query).await?;
    let base = format!("/versions/{v}/types/{}", enc(&page.url_name));
    let q = &page.query;
    let keep = |from: u32| {
        let mut href = format!("{base}?from={from}&per={}", q.per);
        if let Some(f) = &q.field {
            href.push_str(&format!("&field={}", enc(f)));
        }
        if let Some(m) = &q.needle {
            href.push_str(&format!("&match={}", enc(m)));
        }
        href
    };
    let body = html! {
        p {
            a href={ "/versions/" (v) } { "Version " (v) } ": " (page.records) " records, ordinals 0 to "
            (page.ordinal_limit.saturating_sub(1)) ". Showing from ordinal " (q.from) "."
        }
        form action=(base) method="get" #filter {
            label { "Field " input type="text" name="field" placeholder="title, tags.0" value=[q.field.as_deref()]; }
            label { "contains " input type="text" name="match" value=[q.needle.as_deref()]; }
            label { "from ordinal " input type="number" name="from" min="0" value=(q.from); }
            label { "per page " input type="number" name="per" min="1" max=(data::PER_PAGE_MAX) value=(q.per); }
            button type="submit" { "Filter" }
        }
        table #records {
            thead { tr {
                th { "Ordinal" } th { "Key" }
                @if let Some(f) = &q.field { th { (f) } }
                th { "Record" }
            } }
            tbody {
                @for r in &page.rows {
                    tr {
                        td.n { a.ordinal href=(record_href(v, &page.url_name, None, r.ordinal)) { (r.ordinal) } }
                        td {
                            @if let Some(k) = &r.key {
                                a.record href=(record_href(v, &page.url_name, Some(k), r.ordinal)) { (k) }
                            } @else { "-" }
                        }
                        @if let Some(val) = &r.value { td { code { (json_compact(val, 120)) } } }
                        td { code { (json_compact(&r.record, 200)) } }
                    }
                }
            }
        }
        @if page.rows.is_empty() { p.muted #no-records { "No records here." } }
        p {
            @if q.from > 0 { a href=(keep(0)) { "First page" } " " }
            @if let Some(next) = page.next { a #next href=(keep(next)) { "Next page" } }
        }
    };
    Ok(layout(
        &format!("{} at version {v}", short(&page.type_name)),
        body,
    ))
}

/// `/versions/{v}/types/{t}/record?key=K|ordinal=O`: one record.
pub(crate) async fn record(
    State(shared): State<Arc<Shared>>,
    path: PathArg<(String, String)>,
    q: QueryArg,
) -> Page {
    let (v, t) = request::path(path)?;
    let v = request::version("version", &v)?;
    let sel = select(&request::params(q)?)?;
    let r = data::record(&shared, v, &t, sel).await?;
    let base = format!("/versions/{v}/types/{}", enc(&r.url_name));
    let body = html! {
        table #facts {
            tr { th { "Version" } td { a href={ "/versions/" (v) } { (v) } } }
            tr { th { "Type" } td { a href=(base) { (r.type_name) } } }
            tr { th { "Ordinal" } td { (r.ordinal) } }
            tr { th { "Key" } td {
                @if let Some(k) = &r.key {
                    code #key { (k) } " (" a.history href=(history_href(&r.url_name, k)) { "history" } ")"
                } @else { "-" }
            } }
        }
        pre #record { code { (json_pretty(&r.record)) } }
        p { a href={ "/api" (record_href(v, &r.url_name, r.key.as_deref(), r.ordinal)) } { "as JSON" } }
    };
    let title = match &r.key {
        Some(k) => format!("{} {k} at version {v}", short(&r.type_name)),
        None => format!("{} #{} at version {v}", short(&r.type_name), r.ordinal),
    };
    Ok(layout(&title, body))
}

/// `/diff?from=A&to=B[&type=T]`: what changed.
pub(crate) async fn diff(State(shared): State<Arc<Shared>>, q: QueryArg) -> Page {
    let (from, to, t) = diff_query(&request::params(q)?)?;
    let d = data::diff(&shared, from, to, t.as_deref()).await?;
    let body = html! {
        p #method {
            a href={ "/versions/" (from) } { "Version " (from) } " → "
            a href={ "/versions/" (to) } { "version " (to) } ": "
            @match d.method {
                DiffMethod::Deltas { deltas } => { "read from " (deltas) " delta(s)." }
                DiffMethod::Full => { "every record compared (the versions are not on one delta chain)." }
            }
        }
        table #diff-summary {
            thead { tr { th { "Type" } th { "Added" } th { "Removed" } th { "Changed" } } }
            tbody {
                @for t in &d.types {
                    tr { td { (t.name) } td.n { (t.added.len()) } td.n { (t.removed.len()) } td.n { (t.changed.len()) } }
                }
            }
        }
        @for t in &d.types {
            @let url = short(&t.name);
            @if !(t.added.is_empty() && t.removed.is_empty() && t.changed.is_empty()) {
                h2 { (t.name) }
                table.changes {
                    thead { tr { th { "" } th { "Key" } th { "Field" } th { "Before" } th { "After" } } }
                    tbody {
                        @for c in &t.added { (change_row("added", "+", to, url, c, None)) }
                        @for c in &t.removed { (change_row("removed", "-", from, url, c, None)) }
                        @for c in &t.changed {
                            @for f in &c.fields { (change_row("changed", "~", to, url, c, Some(f))) }
                        }
                    }
                }
            }
        }
    };
    Ok(layout(&format!("Diff {from} → {to}"), body))
}

fn change_row(
    class: &str,
    mark: &str,
    version: u64,
    url_type: &str,
    c: &RecordChange,
    field: Option<&FieldChange>,
) -> Markup {
    let ordinal = c.ordinal_after.or(c.ordinal_before).unwrap_or(0);
    let show = |v: Option<&Value>| v.map_or_else(|| "-".to_string(), |v| json_compact(v, 160));
    let (path, before, after) = match field {
        Some(f) => (
            f.path.as_str(),
            show(f.before.as_ref()),
            show(f.after.as_ref()),
        ),
        None => ("$", show(c.before.as_ref()), show(c.after.as_ref())),
    };
    html! {
        tr class=(class) {
            td { (mark) }
            td {
                a.record href=(record_href(version, url_type, c.key.as_deref(), ordinal)) {
                    (c.key.as_deref().unwrap_or("(no key)"))
                }
            }
            td { code { (path) } }
            td { code { (before) } }
            td { code { (after) } }
        }
    }
}

/// `/history?key=K[&type=T]`: a key at every version where it changed.
pub(crate) async fn history(State(shared): State<Arc<Shared>>, q: QueryArg) -> Page {
    let p = request::params(q)?;
    let key = request::required(&p, "key", "key=42")?.to_string();
    let t = request::optional(&p, "type");
    let h = data::history(&shared, t, &key).await?;
    let url = short(&h.type_name).to_string();
    let body = html! {
        p {
            (h.entries.len()) " change(s) in " (h.versions_read) " retained version(s)"
            @if !h.versions_skipped.is_empty() { ", " (h.versions_skipped.len()) " no longer retained" }
            "."
        }
        table #history {
            thead { tr { th { "Version" } th { "Change" } th { "Record" } } }
            tbody {
                @for e in &h.entries {
                    tr class=(e.change.as_str()) {
                        td.n { a href={ "/versions/" (e.version) } { (e.version) } }
                        td { (e.change.as_str()) }
                        td {
                            @match e.change {
                                Change::Changed => {
                                    @for f in &e.fields {
                                        code { (f.path) ": "
                                            (f.before.as_ref().map_or_else(|| "-".into(), |v| json_compact(v, 80)))
                                            " → "
                                            (f.after.as_ref().map_or_else(|| "-".into(), |v| json_compact(v, 80))) }
                                        br;
                                    }
                                }
                                Change::Removed => { "-" }
                                Change::Oldest | Change::Added => {
                                    @if let (Some(r), Some(o)) = (&e.record, e.ordinal) {
                                        a.record href=(record_href(e.version, &url, Some(&key), o)) { code { (json_compact(r, 160)) } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout(&format!("{} key {key}", short(&h.type_name)), body))
}

/// `/health`: the server's own consumer and explorer.
pub(crate) async fn health(State(shared): State<Arc<Shared>>) -> Page {
    let h = data::health(&shared).await;
    let body = html! {
        p #current {
            @if h["current"] == Value::Bool(true) { "The consumer serves the newest version." }
            @else { span.error { "The consumer is not current." } }
        }
        @for part in ["consumer", "explorer"] {
            h2 { (part) }
            table id=(part) {
                @if let Some(fields) = h[part].as_object() {
                    @for (name, value) in fields {
                        tr { th { (name) } td { (match value { Value::String(s) => s.clone(), v => v.to_string() }) } }
                    }
                }
            }
        }
        p { "Up for " (h["uptime_seconds"]) " s." }
    };
    Ok(layout("Health", body))
}
