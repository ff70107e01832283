//! The JSON under `/api/`: the same data as the pages
//! ([`super::data`]), each failure a JSON object with its status.

use super::data::{self, BrowseQuery, Select};
use super::request::{self, ApiFailure, Failure, PathArg, QueryArg};
use super::Shared;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

type Api = Result<Response, ApiFailure>;

/// `body` as a JSON response with `status`.
pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok(body: &Value) -> Api {
    Ok(json_response(StatusCode::OK, body))
}

/// `/api/versions[?limit=N]`: one object per announcement entry, newest
/// first (every entry unless `limit` is given).
pub(crate) async fn versions(State(shared): State<Arc<Shared>>, q: QueryArg) -> Api {
    let p = request::params(q)?;
    let limit = request::number(&p, "limit")?.map_or(usize::MAX, |n| n as usize);
    let t = data::timeline(&shared, limit).await?;
    ok(&Value::Array(
        t.entries.iter().map(data::entry_json).collect(),
    ))
}

/// `/api/versions/{v}`: the entry, types with counts, and the schema.
pub(crate) async fn version(State(shared): State<Arc<Shared>>, v: PathArg<String>) -> Api {
    let v = request::version("version", &request::path(v)?)?;
    let info = data::version(&shared, v).await?;
    let entry = data::TimelineEntry {
        entry: info.entry,
        types: Some(Ok(info.types)),
    };
    let mut body = data::entry_json(&entry);
    match info.schema {
        Ok(text) => body["schema"] = json!(text),
        Err(why) => body["schema_error"] = json!(why),
    }
    ok(&body)
}

/// The browser's query: `from`, `per`, `field`, `match`.
pub(crate) fn browse_query(p: &HashMap<String, String>) -> Result<BrowseQuery, Failure> {
    Ok(BrowseQuery {
        from: request::number(p, "from")?.unwrap_or(0),
        per: request::number(p, "per")?.unwrap_or(data::PER_PAGE_DEFAULT),
        field: request::optional(p, "field").map(str::to_string),
        needle: request::optional(p, "match").map(str::to_string),
    })
}

/// `/api/versions/{v}/types/{t}?from&per&field&match`: a page of records.
pub(crate) async fn browse(
    State(shared): State<Arc<Shared>>,
    path: PathArg<(String, String)>,
    q: QueryArg,
) -> Api {
    let (v, t) = request::path(path)?;
    let v = request::version("version", &v)?;
    let query = browse_query(&request::params(q)?)?;
    let page = data::browse(&shared, v, &t, query).await?;
    ok(&json!({
        "version": page.version,
        "type": page.type_name,
        "records": page.records,
        "ordinal_limit": page.ordinal_limit,
        "from": page.query.from,
        "per": page.query.per,
        "field": page.query.field,
        "match": page.query.needle,
        "next": page.next,
        "rows": page.rows.iter().map(|r| {
            let mut row = json!({"ordinal": r.ordinal, "key": r.key, "record": r.record});
            if let Some(v) = &r.value {
                row["value"] = v.clone();
            }
            row
        }).collect::<Vec<_>>(),
    }))
}

/// Which record the query names: `key=K` or `ordinal=O`.
pub(crate) fn select(p: &HashMap<String, String>) -> Result<Select, Failure> {
    match (request::optional(p, "key"), request::number(p, "ordinal")?) {
        (Some(_), Some(_)) => Err(Failure::bad_request(
            "give either key or ordinal, not both",
        )),
        (Some(k), None) => Ok(Select::Key(k.to_string())),
        (None, Some(o)) => Ok(Select::Ordinal(o)),
        (None, None) => Err(Failure::bad_request(
            "missing key or ordinal: give key=42 (or field=value,... for a key of several fields) or ordinal=7",
        )),
    }
}

/// `/api/versions/{v}/types/{t}/record?key=K|ordinal=O`.
pub(crate) async fn record(
    State(shared): State<Arc<Shared>>,
    path: PathArg<(String, String)>,
    q: QueryArg,
) -> Api {
    let (v, t) = request::path(path)?;
    let v = request::version("version", &v)?;
    let sel = select(&request::params(q)?)?;
    ok(&data::record(&shared, v, &t, sel).await?.to_json())
}

/// The two versions of a diff and its optional type.
pub(crate) fn diff_query(
    p: &HashMap<String, String>,
) -> Result<(u64, u64, Option<String>), Failure> {
    let from = request::version("from", request::required(p, "from", "from=1&to=2")?)?;
    let to = request::version("to", request::required(p, "to", "from=1&to=2")?)?;
    Ok((from, to, request::optional(p, "type").map(str::to_string)))
}

/// `/api/diff?from=A&to=B[&type=T]`.
pub(crate) async fn diff(State(shared): State<Arc<Shared>>, q: QueryArg) -> Api {
    let (from, to, t) = diff_query(&request::params(q)?)?;
    ok(&data::diff(&shared, from, to, t.as_deref()).await?.to_json())
}

/// `/api/history?key=K[&type=T]`.
pub(crate) async fn history(State(shared): State<Arc<Shared>>, q: QueryArg) -> Api {
    let p = request::params(q)?;
    let key = request::required(&p, "key", "key=42")?;
    let t = request::optional(&p, "type");
    ok(&data::history(&shared, t, key).await?.to_json())
}

/// `/api/health`.
pub(crate) async fn health(State(shared): State<Arc<Shared>>) -> Api {
    ok(&data::health(&shared).await)
}
