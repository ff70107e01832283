//! Where a blob store is, from a URL, and how to talk to it.
//!
//! [`StoreUrl::parse`] turns the CLI's `--store URL` into one of:
//!
//! - `s3://bucket/prefix`: Amazon S3 or an S3-compatible server (MinIO,
//!   moto), through object_store's AWS backend. Needs the crate feature
//!   `s3`; a build without it refuses the URL with a configuration error
//!   that says so.
//! - `file:///abs/path`, `file://rel/path` or a plain path: a local
//!   directory.
//!
//! Anything else is an [`Error::Config`] naming the part that is wrong.
//!
//! S3 settings come first from the usual `AWS_*` environment variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION`, `AWS_ENDPOINT`, ... as `AmazonS3Builder::from_env` reads
//! them), then from [`StoreOptions`], which wins where it says something.
//!
//! Every request has a timeout and every retry loop a bound: see
//! [`RetryOptions`] and [`StoreOptions::request_timeout`]. The defaults are
//! chosen for a producer or consumer that would rather report a broken store
//! within about a minute than hang.

use super::BlobStore;
use crate::error::Error;
use std::path::PathBuf;
use std::time::Duration;

/// The smallest part S3 accepts in a multipart upload (all but the last).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// The largest part S3 accepts.
pub const MAX_PART_SIZE: usize = 5 * 1024 * 1024 * 1024;

/// A parsed, validated `--store` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `s3://bucket/prefix`
    S3 {
        /// The bucket.
        bucket: String,
        /// The dataset's prefix inside it ("" for the bucket's root).
        prefix: String,
    },
    /// A local directory.
    Local(PathBuf),
}

fn config(what: &str, reason: impl Into<String>) -> Error {
    Error::Config {
        what: what.to_string(),
        reason: reason.into(),
    }
}

impl StoreUrl {
    /// Parses a store URL; the error names the part that is wrong.
    pub fn parse(url: &str) -> Result<Self, Error> {
        if url.trim().is_empty() {
            return Err(config("store URL", "is empty"));
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Ok(StoreUrl::Local(PathBuf::from(url)));
        };
        match scheme {
            "file" => {
                if rest.is_empty() {
                    return Err(config("store URL", format!("`{url}` names no directory")));
                }
                Ok(StoreUrl::Local(PathBuf::from(rest)))
            }
            "s3" => {
                if rest.contains(['?', '#']) {
                    return Err(config(
                        "store URL",
                        format!("`{url}`: query strings and fragments are not supported; pass settings as options"),
                    ));
                }
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                check_bucket(bucket)?;
                let prefix = prefix.trim_matches('/');
                if !prefix.is_empty() {
                    object_store::path::Path::parse(prefix).map_err(|e| {
                        config("store URL prefix", format!("`{prefix}` is not a valid object path: {e}"))
                    })?;
                }
                Ok(StoreUrl::S3 {
                    bucket: bucket.to_string(),
                    prefix: prefix.to_string(),
                })
            }
            other => Err(config(
                "store URL scheme",
                format!(
                    "`{other}` in `{url}` is not supported; use s3://bucket/prefix, file:///path or a directory path"
                ),
            )),
        }
    }
}

/// S3 bucket naming rules (the subset that catches typos): 3 to 63
/// characters, lower-case letters, digits, `.` and `-`, starting and ending
/// with a letter or digit.
fn check_bucket(bucket: &str) -> Result<(), Error> {
    let ok_len = (3..=63).contains(&bucket.len());
    let ok_chars = bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let ok_ends = bucket
        .bytes()
        .next()
        .zip(bucket.bytes().last())
        .is_some_and(|(a, z)| a.is_ascii_alphanumeric() && z.is_ascii_alphanumeric());
    if ok_len && ok_chars && ok_ends {
        Ok(())
    } else {
        Err(config(
            "store URL bucket",
            format!(
                "`{bucket}` is not a valid S3 bucket name (3-63 characters: lower-case letters, digits, '.', '-')"
            ),
        ))
    }
}

/// Bounded retries of one request (S3 only; local stores do not retry).
///
/// A request is retried on connection errors, timeouts, 5xx and 429, with
/// exponential backoff from `init_backoff` doubling up to `max_backoff`,
/// at most `max_retries` times and never after `retry_timeout` has passed
/// since the first attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryOptions {
    /// Retries after the first attempt (0: object_store does not retry).
    pub max_retries: usize,
    /// No retry starts after this long since the first attempt.
    pub retry_timeout: Duration,
    /// The first back-off; it doubles with each retry.
    pub init_backoff: Duration,
    /// The longest back-off.
    pub max_backoff: Duration,
}

impl Default for RetryOptions {
    /// 3 retries, 100 ms doubling to 5 s, none after 30 s.
    fn default() -> Self {
        RetryOptions {
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryOptions {
    /// No retries in object_store: for a store that burrow's own retry
    /// decorator wraps ([`BlobStore::resilient`]), so that only one layer
    /// retries and a failing call is reported within the decorator's
    /// bounds (object_store's attempts would multiply them).
    pub fn none() -> Self {
        RetryOptions {
            max_retries: 0,
            ..RetryOptions::default()
        }
    }
}

/// How large blobs go up (see [`super::BlobWriter`]).
///
/// A writer holds at most `part_size * (max_concurrent_parts + 1)` bytes of
/// its own buffers: one part filling, `max_concurrent_parts` in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadOptions {
    /// Bytes per multipart part, and the size up to which a blob is sent
    /// as one create-only put. At least [`MIN_PART_SIZE`] (S3's minimum).
    pub part_size: usize,
    /// Parts uploading at once.
    pub max_concurrent_parts: usize,
}

impl Default for UploadOptions {
    /// 8 MiB parts, 4 at a time: at most 40 MiB buffered per writer.
    fn default() -> Self {
        UploadOptions {
            part_size: 8 * 1024 * 1024,
            max_concurrent_parts: 4,
        }
    }
}

impl UploadOptions {
    /// Refuses settings that cannot work, naming the setting.
    pub fn validate(&self) -> Result<(), Error> {
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&self.part_size) {
            return Err(config(
                "upload part size",
                format!(
                    "{} bytes is outside S3's limits ({MIN_PART_SIZE} to {MAX_PART_SIZE})",
                    self.part_size
                ),
            ));
        }
        if self.max_concurrent_parts == 0 {
            return Err(config("concurrent upload parts", "must be at least 1"));
        }
        Ok(())
    }
}

/// Settings for [`BlobStore::from_url`]. `None` leaves the environment's
/// (or object_store's) setting in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// S3 endpoint, e.g. `http://127.0.0.1:9000` for MinIO (`AWS_ENDPOINT`).
    pub endpoint: Option<String>,
    /// `true`: path-style requests (`endpoint/bucket/key`), which MinIO and
    /// moto need; `false`: virtual-hosted (`bucket.endpoint/key`).
    pub path_style: Option<bool>,
    /// Allow plain `http://` endpoints (`AWS_ALLOW_HTTP`).
    pub allow_http: Option<bool>,
    /// S3 region (`AWS_REGION`; object_store's default is `us-east-1`).
    pub region: Option<String>,
    /// Further object_store S3 settings by their config key
    /// (`aws_access_key_id`, `aws_secret_access_key`, `aws_session_token`,
    /// `aws_copy_if_not_exists`, ...), applied after the environment. An
    /// unknown key is a configuration error.
    pub s3_settings: Vec<(String, String)>,
    /// object_store's own HTTP retries (off where burrow's retry decorator
    /// wraps the store: only one layer retries).
    pub retry: RetryOptions,
    /// Whole-request timeout, body included (default 60 s).
    pub request_timeout: Duration,
    /// TCP connect timeout (default 5 s).
    pub connect_timeout: Duration,
    /// How large blobs are uploaded (part size, parts in flight).
    pub upload: UploadOptions,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            endpoint: None,
            path_style: None,
            allow_http: None,
            region: None,
            s3_settings: Vec::new(),
            retry: RetryOptions::default(),
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            upload: UploadOptions::default(),
        }
    }
}

impl StoreOptions {
    /// Refuses settings that cannot work, naming the setting.
    pub fn validate(&self) -> Result<(), Error> {
        self.upload.validate()?;
        if self.request_timeout.is_zero() {
            return Err(config("request timeout", "must be more than zero"));
        }
        if self.connect_timeout.is_zero() {
            return Err(config("connect timeout", "must be more than zero"));
        }
        if self.retry.init_backoff > self.retry.max_backoff {
            return Err(config(
                "retry backoff",
                format!(
                    "initial backoff {:?} is more than the maximum {:?}",
                    self.retry.init_backoff, self.retry.max_backoff
                ),
            ));
        }
        Ok(())
    }
}

impl BlobStore {
    /// Opens the store a `--store` URL names (see the [module docs](self)).
    /// Builds the client only; [`BlobStore::check`] (or
    /// [`BlobStore::connect`]) asks the store whether it is reachable.
    pub fn from_url(url: &str, options: &StoreOptions) -> Result<BlobStore, Error> {
        options.validate()?;
        let store = match StoreUrl::parse(url)? {
            StoreUrl::Local(dir) => BlobStore::local(dir)?,
            StoreUrl::S3 { bucket, prefix } => s3(&bucket, &prefix, options)?,
        };
        Ok(store.with_upload_options(options.upload.clone()))
    }

    /// [`BlobStore::from_url`], then [`BlobStore::check`]: what a producer
    /// or consumer calls at start-up.
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<BlobStore, Error> {
        let store = BlobStore::from_url(url, options)?;
        store.check().await?;
        Ok(store)
    }
}

#[cfg(not(feature = "s3"))]
fn s3(bucket: &str, _prefix: &str, _options: &StoreOptions) -> Result<BlobStore, Error> {
    Err(config(
        "store URL",
        format!(
            "s3://{bucket}: this build of burrow lacks S3 support (build it with the `s3` feature)"
        ),
    ))
}

#[cfg(feature = "s3")]
fn s3(bucket: &str, prefix: &str, options: &StoreOptions) -> Result<BlobStore, Error> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3CopyIfNotExists};
    use object_store::{BackoffConfig, ClientConfigKey, RetryConfig};
    use std::sync::Arc;

    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(region) = &options.region {
        builder = builder.with_region(region);
    }
    if let Some(path_style) = options.path_style {
        builder = builder.with_virtual_hosted_style_request(!path_style);
    }
    if let Some(allow_http) = options.allow_http {
        builder = builder.with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp),
            allow_http.to_string(),
        );
    }
    for (key, value) in &options.s3_settings {
        let parsed: AmazonS3ConfigKey = key.parse().map_err(|e| {
            config(
                "S3 setting",
                format!("`{key}` is not an object_store S3 setting: {e}"),
            )
        })?;
        builder = builder.with_config(parsed, value);
    }
    // Timeouts through config keys, so that the environment's other client
    // settings (AWS_ALLOW_HTTP, proxies) are kept.
    let secs = |d: Duration| format!("{}ms", d.as_millis());
    builder = builder
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
            secs(options.request_timeout),
        )
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
            secs(options.connect_timeout),
        );
    // Create-only copies are how large blobs stay create-only (see
    // `upload`); AWS S3 does them with a multipart copy completed with
    // `If-None-Match: *`. A store that wants another way (R2's header)
    // says so with `aws_copy_if_not_exists`.
    if builder
        .get_config_value(&AmazonS3ConfigKey::CopyIfNotExists)
        .is_none()
    {
        builder = builder.with_copy_if_not_exists(S3CopyIfNotExists::Multipart);
    }
    builder = builder.with_retry(RetryConfig {
        backoff: BackoffConfig {
            init_backoff: options.retry.init_backoff,
            max_backoff: options.retry.max_backoff,
            base: 2.0,
        },
        max_retries: options.retry.max_retries,
        retry_timeout: options.retry.retry_timeout,
    });
    // A plain-http endpoint is refused by the HTTP client on every request
    // ("URL scheme is not allowed") unless http is allowed: say so now.
    let endpoint = builder.get_config_value(&AmazonS3ConfigKey::Endpoint);
    let allow_http = builder
        .get_config_value(&AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if let Some(endpoint) = endpoint.filter(|e| e.starts_with("http://")) {
        if !allow_http {
            return Err(config(
                "S3 endpoint",
                format!(
                    "{endpoint} is plain http, which is refused unless allowed: set \
                     AWS_ALLOW_HTTP=true (or StoreOptions::allow_http), or use https"
                ),
            ));
        }
    }
    // With none of these, object_store falls back to the EC2 instance
    // metadata service; off EC2 that fails with an HTTP error that does not
    // say "no credentials" (see `StoreError::NoCredentials`).
    let configured = |key: AmazonS3ConfigKey| builder.get_config_value(&key).is_some();
    let implicit_credentials = !(configured(AmazonS3ConfigKey::AccessKeyId)
        || configured(AmazonS3ConfigKey::SecretAccessKey)
        || configured(AmazonS3ConfigKey::WebIdentityTokenFile)
        || configured(AmazonS3ConfigKey::ContainerCredentialsRelativeUri)
        || configured(AmazonS3ConfigKey::ContainerCredentialsFullUri)
        || builder
            .get_config_value(&AmazonS3ConfigKey::SkipSignature)
            .is_some_and(|v| v.eq_ignore_ascii_case("true")));
    let s3 = builder
        .build()
        .map_err(|e| config("S3 store", format!("s3://{bucket}/{prefix}: {e}")))?;
    let mut store = BlobStore::new(Arc::new(s3), prefix);
    store.description = format!("s3://{bucket}/{prefix}");
    store.bucket = Some(bucket.to_string());
    store.implicit_credentials = implicit_credentials;
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_stores() {
        assert_eq!(
            StoreUrl::parse("s3://my-bucket/data/movies/").unwrap(),
            StoreUrl::S3 {
                bucket: "my-bucket".into(),
                prefix: "data/movies".into()
            }
        );
        assert_eq!(
            StoreUrl::parse("s3://my-bucket").unwrap(),
            StoreUrl::S3 {
                bucket: "my-bucket".into(),
                prefix: "".into()
            }
        );
        assert_eq!(
            StoreUrl::parse("file:///var/burrow").unwrap(),
            StoreUrl::Local("/var/burrow".into())
        );
        assert_eq!(
            StoreUrl::parse("file://rel/dir").unwrap(),
            StoreUrl::Local("rel/dir".into())
        );
        assert_eq!(
            StoreUrl::parse("./data").unwrap(),
            StoreUrl::Local("./data".into())
        );
    }

    #[test]
    fn bad_urls_name_the_bad_part() {
        let cases = [
            ("gs://bucket/x", "scheme"),
            ("s3://Bad_Bucket/x", "bucket"),
            ("s3:///x", "bucket"),
            ("s3://ok-bucket/a/../b", "prefix"),
            ("s3://ok-bucket/x?region=eu", "query"),
            ("file://", "no directory"),
            ("", "empty"),
        ];
        for (url, part) in cases {
            let err = StoreUrl::parse(url).expect_err(url).to_string();
            assert!(err.contains(part), "{url}: {err}");
        }
    }

    #[test]
    fn options_are_validated() {
        StoreOptions::default().validate().unwrap();
        let o = StoreOptions {
            upload: UploadOptions {
                part_size: 1024,
                ..UploadOptions::default()
            },
            ..StoreOptions::default()
        };
        assert!(o.validate().unwrap_err().to_string().contains("part size"));
        let o = StoreOptions {
            request_timeout: Duration::ZERO,
            ..StoreOptions::default()
        };
        assert!(o
            .validate()
            .unwrap_err()
            .to_string()
            .contains("request timeout"));
    }

    // Invariant: a local store path that is a file is reported as a file,
    // not as missing and not as an OS error about creating a directory.
    #[test]
    fn store_path_that_is_a_file_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-store");
        std::fs::write(&file, b"x").unwrap();
        let url = file.display().to_string();
        let err = BlobStore::from_url(&url, &StoreOptions::default()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Store(super::super::StoreError::NotADirectory { .. })
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("is a file, not a directory"),
            "{err}"
        );
        assert!(err.to_string().contains(&url), "{err}");
    }

    #[cfg(not(feature = "s3"))]
    #[test]
    fn s3_without_the_feature_says_so() {
        let err = BlobStore::from_url("s3://bucket/x", &StoreOptions::default()).unwrap_err();
        assert!(err.to_string().contains("lacks S3 support"), "{err}");
    }

    /// Options for a store whose endpoint is a closed port on 127.0.0.1.
    #[cfg(feature = "s3")]
    fn closed_endpoint() -> StoreOptions {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        StoreOptions {
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            path_style: Some(true),
            allow_http: Some(true),
            retry: RetryOptions {
                max_retries: 0,
                retry_timeout: Duration::from_secs(5),
                ..RetryOptions::default()
            },
            connect_timeout: Duration::from_secs(2),
            ..StoreOptions::default()
        }
    }

    // Invariant: an S3 store with no credentials configured says "no S3
    // credentials" and what to set, not the metadata service's HTTP error.
    #[cfg(feature = "s3")]
    #[tokio::test]
    async fn s3_without_credentials_says_no_credentials() {
        for var in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
        ] {
            if std::env::var_os(var).is_some() {
                panic!("{var} is set: this test needs an environment without S3 credentials");
            }
        }
        let mut options = closed_endpoint();
        // Where object_store asks for instance credentials: a closed port
        // too, so the test does not wait on 169.254.169.254.
        let metadata = options.endpoint.clone().unwrap();
        options.s3_settings = vec![("aws_metadata_endpoint".into(), metadata)];
        let err = BlobStore::connect("s3://bucket/x", &options)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Store(super::super::StoreError::NoCredentials { .. })
            ),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains("no S3 credentials"), "{message}");
        assert!(message.contains("AWS_ACCESS_KEY_ID"), "{message}");
    }

    // Invariant: a plain-http endpoint without http allowed is refused when
    // the store is opened, with the setting that allows it.
    #[cfg(feature = "s3")]
    #[test]
    fn http_endpoint_without_allow_http_hints() {
        let options = StoreOptions {
            allow_http: Some(false),
            ..closed_endpoint()
        };
        let err = BlobStore::from_url("s3://bucket/x", &options).unwrap_err();
        assert!(err.to_string().contains("AWS_ALLOW_HTTP=true"), "{err}");
    }

    #[cfg(feature = "s3")]
    #[test]
    fn unknown_s3_settings_are_refused() {
        let options = StoreOptions {
            s3_settings: vec![("aws_no_such_thing".into(), "1".into())],
            ..StoreOptions::default()
        };
        let err = BlobStore::from_url("s3://bucket/x", &options).unwrap_err();
        assert!(err.to_string().contains("aws_no_such_thing"), "{err}");
    }
}
