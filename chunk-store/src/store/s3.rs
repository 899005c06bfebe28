//! [`ObjectStore`] on an S3-compatible object store (AWS S3, MinIO, Ceph, Garage, s3s).
//!
//! # Create-only writes
//!
//! Every `PutObject` carries `If-None-Match: *`, which AWS S3, MinIO and s3s
//! honour. Correctness does not depend on it, because some servers ignore it:
//! pack names are random 256-bit ids, so two writers never pick the same key.
//! For the few small objects whose names are not random (`config`, key files)
//! the store also asks `HeadObject` first, which catches `init` run twice on a
//! server that ignores the condition.
//!
//! # Failures, retries and deadlines
//!
//! Retries happen at exactly one layer, here: the SDK's own retry is off.
//! The SDK's layer ends when response headers arrive, so it cannot retry a
//! body that is cut short or stalls; an attempt here covers the whole call,
//! body included. Each attempt has a connect timeout (in the HTTP client) and
//! a per-attempt timeout; each call has an overall deadline. Transient
//! failures (HTTP 500/502/503/504, `SlowDown`, connection refused or reset,
//! timeouts, bodies cut short) are retried with exponential backoff and full
//! jitter, while a store-wide retry budget allows: it starts with 500
//! tokens (and holds no more), every first attempt adds one, every retry
//! spends one. Past that reserve retries never outnumber first attempts, and
//! a store that is gone makes calls fail fast once the budget is spent. Permanent failures (400, 403, a missing bucket)
//! fail at once with one line naming the bucket and key.
//!
//! # Several endpoints
//!
//! A store may be given several endpoints of one service (the S3 API of
//! every Garage node, say). Attempts go round-robin over the endpoints that
//! answer; an endpoint whose attempt fails transiently is skipped for
//! [`ENDPOINT_COOLDOWN`] and then tried again, and the retry of that
//! attempt goes to the next endpoint at once. A node killed during a backup
//! costs a few retries, not the backup.
//!
//! # Bounded concurrency
//!
//! At most `connections` requests are in flight per store; callers wait for a
//! slot while holding only the bytes they already have, so memory stays bounded
//! by what the callers queue (the backup pipeline bounds that).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Region, retry::RetryConfig};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ObjectLockMode;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use bytes::Bytes;
use tokio::sync::Semaphore;

use super::{ObjectInfo, ObjectLock, ObjectStore, StoreError};

/// How to reach a bucket and how patiently.
#[derive(Debug, Clone)]
pub struct S3Options {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket (no leading or trailing `/`; may be empty).
    pub prefix: String,
    /// Endpoint URLs of a non-AWS service (`http://127.0.0.1:3900`), each
    /// a way to the same buckets; empty is AWS.
    pub endpoints: Vec<String>,
    /// Region; `None` takes the standard AWS chain, then `us-east-1`.
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most self-hosted
    /// servers need; virtual-hosted style otherwise.
    pub path_style: bool,
    /// Requests in flight at most.
    pub connections: usize,
    /// Time to establish a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Time one attempt may take, body included.
    pub attempt_timeout: Duration,
    /// Time one call may take, all attempts and backoff included.
    pub deadline: Duration,
    /// Attempts per call at most.
    pub max_attempts: u32,
}

impl S3Options {
    /// Requests in flight at most, unless configured.
    pub const DEFAULT_CONNECTIONS: usize = 16;
    /// Time one attempt may take, unless configured.
    pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
    /// Time one call may take, retries included, unless configured.
    pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(300);

    /// Options for `s3://BUCKET/PREFIX` with the defaults.
    pub fn from_url(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{url}: an S3 repository is written s3://BUCKET/PREFIX"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!(
                "{url}: the bucket name is missing (s3://BUCKET/PREFIX)"
            ));
        }
        Ok(Self {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoints: Vec::new(),
            region: None,
            path_style: false,
            connections: Self::DEFAULT_CONNECTIONS,
            connect_timeout: Duration::from_secs(5),
            attempt_timeout: Self::DEFAULT_ATTEMPT_TIMEOUT,
            deadline: Self::DEFAULT_DEADLINE,
            max_attempts: 10,
        })
    }
}

/// First retry waits up to this long; each further one doubles it.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest wait between attempts.
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// Retry tokens the budget starts with and holds at most.
const BUDGET_CAPACITY: u64 = 500;
/// How long an endpoint that failed is skipped (when another answers).
pub const ENDPOINT_COOLDOWN: Duration = Duration::from_secs(10);

/// Why one attempt failed.
#[derive(Debug)]
enum Failure {
    /// Worth another attempt.
    Transient(String),
    /// An HTTP status with the S3 error code, if the body carried one.
    Status {
        status: u16,
        code: Option<String>,
        message: String,
    },
    /// Will fail the same way again.
    Permanent(String),
}

impl Failure {
    fn from_sdk<E>(err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match &err {
            SdkError::ServiceError(se) => {
                let status = se.raw().status().as_u16();
                let code = se.err().code().map(str::to_string);
                let message = se
                    .err()
                    .message()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("HTTP {status}"));
                Failure::Status {
                    status,
                    code,
                    message,
                }
                .normalize()
            }
            SdkError::TimeoutError(_) => Failure::Transient("timed out".into()),
            SdkError::ResponseError(_) => {
                Failure::Transient(format!("bad response: {}", DisplayErrorContext(&err)))
            }
            SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout() || is_connection(&err) => {
                Failure::Transient(connector_reason(&err))
            }
            // Anything else before a response (no credentials found, a bad
            // endpoint URL) fails the same way on every attempt.
            _ => Failure::Permanent(connector_reason(&err)),
        }
    }

    /// Turns transient statuses into [`Failure::Transient`].
    fn normalize(self) -> Self {
        match self {
            Failure::Status {
                status,
                code,
                message,
            } if matches!(status, 500 | 502 | 503 | 504)
                || matches!(
                    code.as_deref(),
                    Some("SlowDown" | "InternalError" | "RequestTimeout" | "ServiceUnavailable")
                ) =>
            {
                Failure::Transient(format!(
                    "HTTP {status} {}: {message}",
                    code.as_deref().unwrap_or("")
                ))
            }
            other => other,
        }
    }

    fn status(&self) -> Option<u16> {
        match self {
            Failure::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A 404 for the object itself (a missing bucket is a misconfiguration).
    fn is_missing_object(&self) -> bool {
        self.status() == Some(404) && self.code() != Some("NoSuchBucket")
    }

    fn code(&self) -> Option<&str> {
        match self {
            Failure::Status { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}

/// True if the failure happened on the connection (an I/O error somewhere
/// in the chain, or a connection closed before the answer was complete).
fn is_connection<E: std::error::Error + 'static>(err: &E) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.is::<std::io::Error>() || e.to_string().contains("connection closed") {
            return true;
        }
        source = e.source();
    }
    false
}

/// The innermost cause of a connection-level failure ("Connection refused").
fn connector_reason<E: std::error::Error + 'static>(err: &E) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut last = err.to_string();
    while let Some(e) = source {
        let text = e.to_string();
        if !text.is_empty() {
            last = text;
        }
        source = e.source();
    }
    last
}

/// Shared retry budget: first attempts earn tokens, retries spend them.
#[derive(Debug)]
struct RetryBudget {
    tokens: AtomicU64,
}

impl RetryBudget {
    fn earn(&self) {
        let _ = self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t < BUDGET_CAPACITY).then_some(t + 1)
            });
    }

    fn spend(&self) -> bool {
        self.tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| t.checked_sub(1))
            .is_ok()
    }
}

/// One way to the service, and whether it answers.
#[derive(Debug)]
struct Endpoint {
    client: aws_sdk_s3::Client,
    /// Skipped until then after a transient failure.
    down_until: std::sync::Mutex<Option<Instant>>,
}

impl Endpoint {
    fn usable(&self, now: Instant) -> bool {
        self.down_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|t| now >= t)
    }

    fn mark(&self, answered: bool) {
        *self.down_until.lock().unwrap_or_else(|p| p.into_inner()) =
            (!answered).then(|| Instant::now() + ENDPOINT_COOLDOWN);
    }
}

/// An S3 bucket (and prefix) as an object store.
#[derive(Debug, Clone)]
pub struct S3Store {
    endpoints: Arc<Vec<Endpoint>>,
    next: Arc<std::sync::atomic::AtomicUsize>,
    options: Arc<S3Options>,
    slots: Arc<Semaphore>,
    budget: Arc<RetryBudget>,
    requests: Arc<AtomicU64>,
    /// Object lock of every object written, once the config says so.
    lock: Arc<std::sync::RwLock<Option<ObjectLock>>>,
}

impl S3Store {
    /// A store for `options`, with credentials from the standard AWS chain
    /// (environment, shared profile, web identity, container and instance
    /// metadata). Does not contact the server; see [`S3Store::check_access`].
    pub async fn new(options: S3Options) -> Self {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(options.connect_timeout)
                    .operation_attempt_timeout(options.attempt_timeout)
                    .build(),
            );
        // A self-hosted server rarely cares about the region, so the slow
        // parts of the region chain (profile files, instance metadata) are
        // asked only for AWS itself.
        let region = options.region.clone().or_else(|| {
            ["AWS_REGION", "AWS_DEFAULT_REGION"]
                .iter()
                .find_map(|v| std::env::var(v).ok().filter(|r| !r.is_empty()))
                .or_else(|| (!options.endpoints.is_empty()).then(|| "us-east-1".to_string()))
        });
        if let Some(region) = region {
            loader = loader.region(Region::new(region));
        }
        let shared = loader.load().await;
        let client = |endpoint: Option<&String>| {
            let mut config = aws_sdk_s3::config::Builder::from(&shared)
                .force_path_style(options.path_style)
                .request_checksum_calculation(
                    aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
                )
                .response_checksum_validation(
                    aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
                );
            if shared.region().is_none() {
                config = config.region(Region::new("us-east-1"));
            }
            if let Some(url) = endpoint {
                config = config.endpoint_url(url);
            }
            Endpoint {
                client: aws_sdk_s3::Client::from_conf(config.build()),
                down_until: std::sync::Mutex::new(None),
            }
        };
        let endpoints = if options.endpoints.is_empty() {
            vec![client(None)]
        } else {
            options.endpoints.iter().map(|e| client(Some(e))).collect()
        };
        Self {
            endpoints: Arc::new(endpoints),
            next: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            slots: Arc::new(Semaphore::new(options.connections.max(1))),
            budget: Arc::new(RetryBudget {
                tokens: AtomicU64::new(BUDGET_CAPACITY),
            }),
            requests: Arc::new(AtomicU64::new(0)),
            lock: Arc::new(std::sync::RwLock::new(None)),
            options: Arc::new(options),
        }
    }

    /// Requests sent so far, retries included.
    pub fn requests_sent(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Checks that the endpoint answers, the bucket exists and the
    /// credentials are accepted, with one line saying which failed.
    pub async fn check_access(&self) -> Result<(), StoreError> {
        let options = &self.options;
        let prefix = self.full_key("");
        let listed = self
            .call(
                "",
                Some(options.deadline.min(Duration::from_secs(20))),
                |client| {
                    let request = client
                        .list_objects_v2()
                        .bucket(&options.bucket)
                        .prefix(&prefix)
                        .max_keys(1);
                    async move { request.send().await.map(|_| ()).map_err(Failure::from_sdk) }
                },
            )
            .await;
        listed.map_err(|e| match e {
            StoreError::Unavailable { reason, .. } => StoreError::Rejected {
                location: self.location(),
                key: String::new(),
                reason: format!("cannot reach S3 endpoint {}: {reason}", self.endpoint()),
            },
            other => other,
        })
    }

    fn endpoint(&self) -> String {
        if self.options.endpoints.is_empty() {
            "AWS S3".to_string()
        } else {
            self.options.endpoints.join(",")
        }
    }

    /// The endpoint for the next attempt: the next in turn that answers,
    /// else the one that has been skipped the longest.
    fn pick(&self) -> &Endpoint {
        let n = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        (0..n)
            .map(|k| &self.endpoints[(start + k) % n])
            .find(|e| e.usable(now))
            .unwrap_or_else(|| {
                self.endpoints
                    .iter()
                    .min_by_key(|e| *e.down_until.lock().unwrap_or_else(|p| p.into_inner()))
                    .unwrap_or(&self.endpoints[start % n])
            })
    }

    fn full_key(&self, key: &str) -> String {
        if self.options.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.options.prefix)
        }
    }

    /// Runs `attempt` until it succeeds, fails permanently, or the attempts,
    /// the deadline or the retry budget run out.
    async fn call<T, F, Fut>(
        &self,
        key: &str,
        deadline: Option<Duration>,
        attempt: F,
    ) -> Result<T, StoreError>
    where
        F: Fn(&aws_sdk_s3::Client) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let deadline = deadline.unwrap_or(self.options.deadline);
        let started = Instant::now();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let endpoint = self.pick();
            let result = {
                let _slot = self.slots.acquire().await;
                self.requests.fetch_add(1, Ordering::Relaxed);
                let budget = self
                    .options
                    .attempt_timeout
                    .min(deadline.saturating_sub(started.elapsed()))
                    .max(Duration::from_millis(1));
                match tokio::time::timeout(budget, attempt(&endpoint.client)).await {
                    Ok(r) => r,
                    Err(_) => Err(Failure::Transient(format!(
                        "no complete answer within {}",
                        humanize(budget)
                    ))),
                }
            };
            endpoint.mark(!matches!(result, Err(Failure::Transient(_))));
            if attempts == 1 {
                self.budget.earn();
            }
            let reason = match result {
                Ok(v) => return Ok(v),
                Err(Failure::Transient(reason)) => reason,
                Err(failure) => return Err(self.permanent(key, failure)),
            };
            let backoff = backoff(attempts);
            let out_of_time = started.elapsed() + backoff >= deadline;
            if attempts >= self.options.max_attempts || out_of_time || !self.budget.spend() {
                tracing::debug!(key, attempts, "giving up: {reason}");
                return Err(StoreError::Unavailable {
                    location: self.location(),
                    key: key.to_string(),
                    attempts,
                    elapsed: started.elapsed(),
                    reason,
                });
            }
            tracing::debug!(key, attempts, ?backoff, "retrying: {reason}");
            // Another endpoint that answers is tried at once.
            if self.endpoints.len() == 1 || !self.endpoints.iter().any(|e| e.usable(Instant::now()))
            {
                tokio::time::sleep(backoff).await;
            }
        }
    }

    /// The error for a permanent failure, in the user's terms.
    fn permanent(&self, key: &str, failure: Failure) -> StoreError {
        let bucket = &self.options.bucket;
        let reason = match (&failure, failure.status(), failure.code()) {
            (_, _, Some("NoSuchBucket")) => format!(
                "bucket {bucket} does not exist at {}; create it first",
                self.endpoint()
            ),
            (_, _, Some(code @ ("InvalidAccessKeyId" | "SignatureDoesNotMatch"))) => format!(
                "the S3 credentials were refused ({code}); check AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY (or the AWS profile)"
            ),
            (Failure::Status { message, .. }, Some(403), code) => format!(
                "access to bucket {bucket} denied ({}: {message}); check the credentials and \
                 the bucket policy",
                code.unwrap_or("403")
            ),
            (Failure::Status { message, .. }, Some(status), code) => {
                format!("HTTP {status} {}: {message}", code.unwrap_or(""))
            }
            (Failure::Permanent(reason), _, _) => reason.clone(),
            (Failure::Transient(reason), _, _) => reason.clone(),
            (Failure::Status { message, .. }, None, _) => message.clone(),
        };
        StoreError::Rejected {
            location: self.location(),
            key: key.to_string(),
            reason,
        }
    }

    fn not_found(&self, key: &str) -> StoreError {
        StoreError::NotFound {
            location: self.location(),
            key: key.to_string(),
        }
    }

    /// GetObject of a whole object or a `bytes=` range, body included in
    /// each attempt (a body cut short is retried).
    async fn get_object(&self, key: &str, range: Option<String>) -> Result<GetOutcome, StoreError> {
        let full = self.full_key(key);
        self.call(key, None, |client| {
            let request = client
                .get_object()
                .bucket(&self.options.bucket)
                .key(&full)
                .set_range(range.clone());
            async move {
                match request.send().await {
                    Ok(out) => {
                        // The object's size, from `Content-Range: bytes a-b/size`.
                        let total = out.content_range().and_then(|r| {
                            r.rsplit_once('/').and_then(|(_, t)| t.parse::<u64>().ok())
                        });
                        let expected = out.content_length();
                        let body = out
                            .body
                            .collect()
                            .await
                            .map_err(|e| {
                                Failure::Transient(format!("response body cut short: {e}"))
                            })?
                            .into_bytes();
                        if let Some(n) = expected.filter(|&n| n as usize != body.len()) {
                            return Err(Failure::Transient(format!(
                                "response body cut short ({} of {n} bytes)",
                                body.len()
                            )));
                        }
                        Ok(GetOutcome::Bytes(body, total))
                    }
                    Err(e) => match Failure::from_sdk(e) {
                        f if f.is_missing_object() => Ok(GetOutcome::Missing),
                        f if f.status() == Some(416) => Ok(GetOutcome::PastEnd),
                        f => Err(f),
                    },
                }
            }
        })
        .await
    }

    async fn put_object(&self, key: &str, data: &Bytes) -> Result<(), StoreError> {
        let full = self.full_key(key);
        let tries = AtomicU64::new(0);
        let outcome = self
            .call(key, None, |client| {
                let retry = tries.fetch_add(1, Ordering::Relaxed) > 0;
                let mut request = client
                    .put_object()
                    .bucket(&self.options.bucket)
                    .key(&full)
                    .if_none_match("*")
                    .content_length(data.len() as i64)
                    .body(ByteStream::from(data.clone()));
                if let Some(lock) = *self.lock.read().unwrap_or_else(|p| p.into_inner()) {
                    // The date counts from this attempt. S3 wants an
                    // integrity header on locked writes: SHA-256 of the body.
                    let until = lock.retain_until(crate::now_unix_nanos() / 1_000_000_000);
                    request = request
                        .object_lock_mode(match lock.mode {
                            super::LockMode::Governance => ObjectLockMode::Governance,
                            super::LockMode::Compliance => ObjectLockMode::Compliance,
                        })
                        .object_lock_retain_until_date(aws_sdk_s3::primitives::DateTime::from_secs(
                            until,
                        ))
                        .checksum_sha256(sha256_base64(data));
                }
                async move {
                    match request.send().await {
                        Ok(_) => Ok(PutOutcome::Stored),
                        Err(e) => match Failure::from_sdk(e) {
                            f if f.status() == Some(412) => Ok(PutOutcome::Exists { retry }),
                            // A conditional write racing another one on the same key.
                            f if f.status() == Some(409) => Ok(PutOutcome::Exists { retry }),
                            f => Err(f),
                        },
                    }
                }
            })
            .await?;
        match outcome {
            PutOutcome::Stored => Ok(()),
            // An earlier attempt of this call stored the object and its
            // answer was lost: the object is ours if it has our size (pack
            // names are random, so nobody else writes this key).
            PutOutcome::Exists { retry: true }
                if self.head(key).await? == Some(data.len() as u64) =>
            {
                Ok(())
            }
            PutOutcome::Exists { .. } => Err(StoreError::AlreadyExists {
                location: self.location(),
                key: key.to_string(),
            }),
        }
    }
}

enum PutOutcome {
    Stored,
    Exists { retry: bool },
}

/// Base64 of the SHA-256 of `data` (the `x-amz-checksum-sha256` header).
fn sha256_base64(data: &[u8]) -> String {
    use base64::Engine;
    use sha2::Digest;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(data))
}

/// Exponential backoff with full jitter: uniform in [0, min(cap, base·2^n)).
fn backoff(attempts: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(16))
        .min(BACKOFF_CAP);
    ceiling.mul_f64(fastrand::f64())
}

fn humanize(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[async_trait]
impl ObjectStore for S3Store {
    fn location(&self) -> String {
        if self.options.prefix.is_empty() {
            format!("s3://{}", self.options.bucket)
        } else {
            format!("s3://{}/{}", self.options.bucket, self.options.prefix)
        }
    }

    fn set_object_lock(&self, lock: ObjectLock) -> Result<(), StoreError> {
        *self.lock.write().unwrap_or_else(|p| p.into_inner()) = Some(lock);
        Ok(())
    }

    async fn check_delete(&self) -> Result<(), StoreError> {
        // Deleting a key that does not exist changes nothing, and S3 checks
        // the permission first: 403 if these credentials may not delete.
        let probe = format!(
            "locks/delete-check-{}",
            hex::encode(crate::crypto::random_bytes::<8>())
        );
        self.delete(&probe).await
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        // See the module docs: names that are not random get a check first.
        if !key.starts_with("packs/") && self.head(key).await?.is_some() {
            return Err(StoreError::AlreadyExists {
                location: self.location(),
                key: key.to_string(),
            });
        }
        self.put_object(key, &data).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        match self.get_object(key, None).await? {
            GetOutcome::Bytes(body, _) => Ok(body),
            GetOutcome::Missing | GetOutcome::PastEnd => Err(self.not_found(key)),
        }
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        let short = |size: u64| StoreError::ShortRead {
            location: self.location(),
            key: key.to_string(),
            size,
            wanted: offset + len,
        };
        if len == 0 {
            return match self.head(key).await? {
                None => Err(self.not_found(key)),
                Some(size) if size < offset => Err(short(size)),
                Some(_) => Ok(Bytes::new()),
            };
        }
        let range = format!("bytes={}-{}", offset, offset + len - 1);
        match self.get_object(key, Some(range)).await? {
            GetOutcome::Bytes(body, _) if body.len() as u64 == len => Ok(body),
            GetOutcome::Bytes(body, total) => {
                Err(short(total.unwrap_or(offset + body.len() as u64)))
            }
            GetOutcome::Missing => Err(self.not_found(key)),
            GetOutcome::PastEnd => {
                let size = self.head(key).await?.ok_or_else(|| self.not_found(key))?;
                Err(short(size))
            }
        }
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let full = self.full_key(key);
        self.call(key, None, |client| {
            let request = client.head_object().bucket(&self.options.bucket).key(&full);
            async move {
                match request.send().await {
                    Ok(out) => Ok(Some(out.content_length().unwrap_or(0).max(0) as u64)),
                    Err(e) => match Failure::from_sdk(e) {
                        f if f.status() == Some(404) => Ok(None),
                        f => Err(f),
                    },
                }
            }
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let full = self.full_key(prefix);
        let strip = self.full_key("").len();
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .call(prefix, None, |client| {
                    let request = client
                        .list_objects_v2()
                        .bucket(&self.options.bucket)
                        .prefix(&full)
                        .set_continuation_token(token.clone());
                    async move { request.send().await.map_err(Failure::from_sdk) }
                })
                .await?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                let Some(relative) = key.get(strip..) else {
                    continue;
                };
                objects.push(ObjectInfo {
                    key: relative.to_string(),
                    size: object.size().unwrap_or(0).max(0) as u64,
                    modified: object.last_modified().map(|t| t.secs()),
                });
            }
            token = page
                .next_continuation_token()
                .filter(|_| page.is_truncated() == Some(true))
                .map(str::to_string);
            if token.is_none() {
                return Ok(objects);
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let full = self.full_key(key);
        let denied = self
            .call(key, None, |client| {
                let request = client
                    .delete_object()
                    .bucket(&self.options.bucket)
                    .key(&full);
                async move {
                    match request.send().await {
                        Ok(_) => Ok(None),
                        Err(e) => match Failure::from_sdk(e) {
                            f if f.is_missing_object() => Ok(None),
                            Failure::Status {
                                status: 403,
                                code,
                                message,
                            } => Ok(Some(format!(
                                "{}: {message}",
                                code.as_deref().unwrap_or("403")
                            ))),
                            f => Err(f),
                        },
                    }
                }
            })
            .await?;
        match denied {
            None => Ok(()),
            Some(answer) => Err(StoreError::Rejected {
                location: self.location(),
                key: String::new(),
                reason: format!(
                    "these S3 credentials may not delete objects (s3:DeleteObject refused: \
                     {answer}); forget and prune need an identity that may (README, \
                     \"Append-only backups\")"
                ),
            }),
        }
    }
}

/// What a GetObject found.
enum GetOutcome {
    /// The bytes, and the object's size when the answer said it.
    Bytes(Bytes, Option<u64>),
    Missing,
    PastEnd,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repository_urls() {
        let o = S3Options::from_url("s3://backups/fleet/a/").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (o.bucket.as_str(), o.prefix.as_str()),
            ("backups", "fleet/a")
        );
        let o = S3Options::from_url("s3://backups").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((o.bucket.as_str(), o.prefix.as_str()), ("backups", ""));
        assert!(S3Options::from_url("s3:///x").is_err());
        assert!(S3Options::from_url("/local/dir").is_err());
    }

    #[test]
    fn backoff_grows_and_stays_under_the_cap() {
        for attempt in 1..40 {
            let d = backoff(attempt);
            let ceiling = BACKOFF_BASE
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(BACKOFF_CAP);
            assert!(d <= ceiling, "{attempt}: {d:?} > {ceiling:?}");
        }
    }

    #[test]
    fn retry_budget_caps_retries_at_the_first_attempts_earned() {
        let budget = RetryBudget {
            tokens: AtomicU64::new(2),
        };
        assert!(budget.spend());
        assert!(budget.spend());
        assert!(!budget.spend());
        budget.earn();
        assert!(budget.spend());
        assert!(!budget.spend());
    }

    #[test]
    fn transient_statuses_are_retried_and_others_are_not() {
        let status = |status, code: Option<&str>| {
            Failure::Status {
                status,
                code: code.map(str::to_string),
                message: String::new(),
            }
            .normalize()
        };
        assert!(matches!(
            status(503, Some("SlowDown")),
            Failure::Transient(_)
        ));
        assert!(matches!(status(500, None), Failure::Transient(_)));
        assert!(matches!(
            status(400, Some("RequestTimeout")),
            Failure::Transient(_)
        ));
        assert!(matches!(
            status(403, Some("AccessDenied")),
            Failure::Status { .. }
        ));
        assert!(matches!(
            status(404, Some("NoSuchBucket")),
            Failure::Status { .. }
        ));
    }
}
