//! What a request asks for, checked: version numbers, ordinals, page
//! sizes and keys from the path and the query string, and the failure a
//! request ends in (a status and a message naming what was wrong), shown
//! as a page or, under `/api/`, as JSON.

use crate::error::{Error, KeyError};
use crate::explore::ExploreError;
use crate::schema::dynamic::DynamicError;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;

/// A request that cannot be answered: the status and what was wrong.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub status: StatusCode,
    pub message: String,
}

impl Failure {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Failure {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Failure {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }
}

impl From<Error> for Failure {
    /// What the request named that the dataset lacks is 404 (410 when it
    /// was there but retention removed it); a request that does not make
    /// sense is 400; a store that cannot be read is 502.
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::Explore(x) => match x {
                ExploreError::UnknownVersion { .. }
                | ExploreError::UnknownType { .. }
                | ExploreError::NoRecord { .. }
                | ExploreError::NoHistory { .. } => StatusCode::NOT_FOUND,
                ExploreError::NotRetained { .. } => StatusCode::GONE,
                ExploreError::TypeRequired { .. } | ExploreError::AmbiguousType { .. } => {
                    StatusCode::BAD_REQUEST
                }
                ExploreError::Empty { .. } => StatusCode::SERVICE_UNAVAILABLE,
            },
            Error::Key(KeyError::Query { .. } | KeyError::NoKey { .. }) => StatusCode::BAD_REQUEST,
            Error::Dynamic(DynamicError::BadKey { .. } | DynamicError::BadPath { .. }) => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::BAD_GATEWAY,
        };
        Failure {
            status,
            message: e.to_string(),
        }
    }
}

impl From<ExploreError> for Failure {
    fn from(e: ExploreError) -> Self {
        Error::from(e).into()
    }
}

/// A failure shown as a page.
pub(crate) struct PageFailure(pub Failure);

impl IntoResponse for PageFailure {
    fn into_response(self) -> Response {
        let page = super::pages::failure_page(&self.0);
        (self.0.status, page).into_response()
    }
}

impl From<Failure> for PageFailure {
    fn from(f: Failure) -> Self {
        PageFailure(f)
    }
}

/// A failure as JSON: `{"status": 404, "error": "..."}`.
pub(crate) struct ApiFailure(pub Failure);

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "status": self.0.status.as_u16(),
            "error": self.0.message,
        });
        super::api::json_response(self.0.status, &body)
    }
}

impl From<Failure> for ApiFailure {
    fn from(f: Failure) -> Self {
        ApiFailure(f)
    }
}

/// The query string's parameters; a malformed one is a 400.
pub(crate) type QueryArg = Result<Query<HashMap<String, String>>, QueryRejection>;
/// The path's parameters; a malformed one is a 400.
pub(crate) type PathArg<T> = Result<Path<T>, PathRejection>;

/// The parameters, or a failure naming what is malformed.
pub(crate) fn params(q: QueryArg) -> Result<HashMap<String, String>, Failure> {
    q.map(|Query(p)| p)
        .map_err(|e| Failure::bad_request(format!("malformed query string: {}", e.body_text())))
}

/// The path's parameters, or a failure naming what is malformed.
pub(crate) fn path<T>(p: PathArg<T>) -> Result<T, Failure> {
    p.map(|Path(p)| p)
        .map_err(|e| Failure::bad_request(format!("malformed path: {}", e.body_text())))
}

/// A version number given as `what`.
pub(crate) fn version(what: &str, raw: &str) -> Result<u64, Failure> {
    match raw.trim().parse::<u64>() {
        Ok(v) if v > 0 => Ok(v),
        Ok(_) => Err(Failure::bad_request(format!(
            "invalid {what} 0: versions start at 1"
        ))),
        Err(_) => Err(Failure::bad_request(format!(
            "invalid {what} {raw:?}: expected a version number"
        ))),
    }
}

/// An optional whole number below 2^32 given as `what`.
pub(crate) fn number(params: &HashMap<String, String>, what: &str) -> Result<Option<u32>, Failure> {
    params
        .get(what)
        .filter(|raw| !raw.is_empty())
        .map(|raw| {
            raw.trim().parse::<u32>().map_err(|_| {
                Failure::bad_request(format!(
                    "invalid {what} {raw:?}: expected a whole number below 2^32"
                ))
            })
        })
        .transpose()
}

/// A required, non-empty parameter.
pub(crate) fn required<'p>(
    params: &'p HashMap<String, String>,
    what: &str,
    example: &str,
) -> Result<&'p str, Failure> {
    match params.get(what).map(String::as_str) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(Failure::bad_request(format!(
            "missing {what}: give it in the query string ({example})"
        ))),
    }
}

/// An optional parameter; empty counts as absent (an empty form field).
pub(crate) fn optional<'p>(params: &'p HashMap<String, String>, what: &str) -> Option<&'p str> {
    params
        .get(what)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// Any path no route takes.
pub(crate) async fn not_found(uri: Uri) -> Response {
    let failure = Failure::not_found(format!("no page at {}", uri.path()));
    if uri.path().starts_with("/api/") {
        ApiFailure(failure).into_response()
    } else {
        PageFailure(failure).into_response()
    }
}
