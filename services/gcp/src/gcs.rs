//! [`Store`] on one Cloud Storage bucket, with `gcloud-storage` (JSON API over HTTP).
//!
//! - **get** streams the body of the media download as an `AsyncRead`.
//! - **put** streams the `AsyncRead` up without holding the object: a resumable upload in
//!   [`CHUNK_SIZE`] chunks (one chunk in memory; a chunk that fails transiently is
//!   resent from what the server says it has), or a multipart upload whose data part is
//!   the reader itself (chunked transfer encoding, nothing buffered).
//! - **CreateOnly** is `ifGenerationMatch=0`; a 412 is [`StoreError::AlreadyExists`].
//!   **IfGeneration(g)** is `ifGenerationMatch=g`; a 412 is
//!   [`StoreError::PreconditionFailed`]. Cloud Storage checks the precondition on every
//!   upload type, but fake-gcs-server checks it only on multipart uploads, so against the
//!   emulator a conditional put is always a multipart upload ([`UploadStrategy::Auto`]);
//!   on the real service it is a resumable upload like any other put.
//! - **Metadata** ([`PutOptions::metadata`]) is the object resource's custom `metadata`,
//!   sent with the upload (multipart part or resumable session); `head` and `list`
//!   return it.
//! - **copy** is the server-side `copyTo` call (no bytes pass through us; the copy keeps
//!   the source's metadata), with the mode's `ifGenerationMatch` (`gcloud-storage`'s
//!   rewrite request has no destination generation precondition; within one bucket copy
//!   is metadata-only on Cloud Storage anyway). fake-gcs-server ignores the precondition
//!   on `copyTo`, so on the emulator a conditional copy is a download streamed into a
//!   conditional multipart upload carrying the source's metadata instead.
//! - Every error is classified by [`store_error`] alone.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use gcloud_storage::client::{Client, ClientConfig};
use gcloud_storage::http::buckets::insert::{InsertBucketParam, InsertBucketRequest};
use gcloud_storage::http::objects::compose::{ComposeObjectRequest, ComposingTargets};
use gcloud_storage::http::objects::copy::CopyObjectRequest;
use gcloud_storage::http::objects::delete::DeleteObjectRequest;
use gcloud_storage::http::objects::download::Range;
use gcloud_storage::http::objects::get::GetObjectRequest;
use gcloud_storage::http::objects::list::ListObjectsRequest;
use gcloud_storage::http::objects::upload::{Media, UploadObjectRequest, UploadType};
use gcloud_storage::http::objects::{Object, SourceObjects};
use gcloud_storage::http::resumable_upload_client::{ChunkSize, ResumableUploadClient, UploadStatus};
use gcloud_storage::http::Error as GcsError;
use reel_runtime::store::{check_key, ByteReader, ObjectMeta, PutMode, PutOptions, RemoteObject, Store, StoreError};
use tokio::io::AsyncReadExt;
use tracing::debug;

/// Size of one resumable-upload chunk (a multiple of 256 KiB, as the API requires).
pub const CHUNK_SIZE: usize = 8 * 1024 * 1024;
/// How often an idempotent call (head, list, delete, opening a download, one upload
/// chunk) is tried before a transient error is returned.
const ATTEMPTS: u32 = 3;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// No byte for this long on an open connection is a network timeout.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The one place that turns a Cloud Storage error into a [`StoreError`].
///
/// 401/403 → PermissionDenied, 404 → NotFound(key), 412 → AlreadyExists(key),
/// 408/429/5xx, timeouts and connection errors → Transient, everything else → Other.
fn store_error(key: &str, context: &str, err: &GcsError) -> StoreError {
    let text = format!("{context}: {err}");
    let by_status = |code: u16| match code {
        401 | 403 => StoreError::PermissionDenied(text.clone()),
        404 => StoreError::NotFound(key.to_string()),
        412 => StoreError::AlreadyExists(key.to_string()),
        408 | 429 | 500..=599 => StoreError::Transient(text.clone()),
        _ => StoreError::Other(text.clone()),
    };
    match err {
        GcsError::Response(response) => by_status(response.code),
        GcsError::HttpClient(e) | GcsError::RawResponse(e, _) => match e.status() {
            Some(status) => by_status(status.as_u16()),
            None if e.is_timeout() || e.is_connect() || e.is_request() || e.is_body() => StoreError::Transient(text),
            None => StoreError::Other(text),
        },
        // Middleware errors are the retry/transport layer's; a failed token fetch is
        // usually the metadata server or network.
        GcsError::HttpMiddleware(_) => StoreError::Transient(text),
        GcsError::TokenSource(_) => {
            let lower = text.to_ascii_lowercase();
            if lower.contains("timeout") || lower.contains("timed out") || lower.contains("connect") {
                StoreError::Transient(text)
            } else {
                StoreError::PermissionDenied(text)
            }
        }
        _ => StoreError::Other(text),
    }
}

/// The HTTP status of an error, when the server answered.
fn http_status(err: &GcsError) -> Option<u16> {
    match err {
        GcsError::Response(r) => Some(r.code),
        GcsError::HttpClient(e) | GcsError::RawResponse(e, _) => e.status().map(|s| s.as_u16()),
        _ => None,
    }
}

/// Retry `op` on transient errors (idempotent calls only).
async fn retry<T, F, Fut>(mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                let pause = Duration::from_millis(200 * 4u64.pow(attempt - 1));
                debug!(error = %e, attempt, "transient storage error; retrying");
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

fn decode_crc32c(value: Option<&str>) -> u32 {
    value
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .and_then(|bytes| <[u8; 4]>::try_from(bytes.as_slice()).ok())
        .map(u32::from_be_bytes)
        .unwrap_or(0)
}

fn meta_of(object: &Object) -> ObjectMeta {
    let when = object.updated.or(object.time_created);
    let updated = when
        .and_then(|t| i64::try_from(t.unix_timestamp_nanos()).ok())
        .map(DateTime::<Utc>::from_timestamp_nanos)
        .unwrap_or_else(Utc::now);
    ObjectMeta {
        key: object.name.clone(),
        size: object.size.max(0) as u64,
        crc32c: decode_crc32c(object.crc32c.as_deref()),
        generation: object.generation,
        updated,
        metadata: object.metadata.iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

/// The `ifGenerationMatch` of a write under `mode`.
fn generation_match(mode: PutMode) -> Option<i64> {
    match mode {
        PutMode::Overwrite => None,
        PutMode::CreateOnly => Some(0),
        PutMode::IfGeneration(g) => Some(g),
    }
}

/// A failed conditional write under `mode`: a 412 ([`store_error`] says AlreadyExists)
/// of an IfGeneration write is [`StoreError::PreconditionFailed`].
fn write_error(mode: PutMode, err: StoreError) -> StoreError {
    match (mode, err) {
        (PutMode::IfGeneration(g), StoreError::AlreadyExists(key)) => {
            StoreError::PreconditionFailed(format!("{key}: its generation is no longer {g}"))
        }
        (_, err) => err,
    }
}

/// Cloud Storage's limit of components per compose call.
const COMPOSE_LIMIT: usize = 32;

/// The object resource of an upload of `key` with `metadata`.
fn object_resource(key: &str, metadata: &std::collections::BTreeMap<String, String>) -> Object {
    Object {
        name: key.to_string(),
        content_type: Some(content_type(key).to_string()),
        metadata: (!metadata.is_empty()).then(|| metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        ..Default::default()
    }
}

fn content_type(key: &str) -> &'static str {
    let ext = key.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "mp4" | "m4v" => "video/mp4",
        "mov" => "video/quicktime",
        "webm" => "video/webm",
        "mkv" => "video/x-matroska",
        "ts" => "video/mp2t",
        "json" => "application/json",
        "txt" | "log" => "text/plain",
        _ => "application/octet-stream",
    }
}

/// Read until `buf` holds `want` bytes or the reader ends. Returns whether it ended.
async fn fill(body: &mut ByteReader, buf: &mut Vec<u8>, want: usize, key: &str) -> Result<bool, StoreError> {
    while buf.len() < want {
        let start = buf.len();
        buf.resize(want, 0);
        let n = body
            .read(&mut buf[start..])
            .await
            .map_err(|e| StoreError::from_io(&format!("reading the body for {key}"), e))?;
        buf.truncate(start + n);
        if n == 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// How [`GcsStore::put`] uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UploadStrategy {
    /// Resumable, except create-only puts on the emulator, which are multipart (the only
    /// upload type on which fake-gcs-server checks `ifGenerationMatch`).
    #[default]
    Auto,
    /// Always a chunked resumable upload.
    Resumable,
    /// Always a streamed multipart upload.
    Multipart,
}

/// How to reach Cloud Storage: a typed config, built by the caller (no environment is
/// read here; the programs map their `Settings` onto it in `reel_program::adapters`).
///
/// ```
/// use reel_gcp::GcsConfig;
/// // Production: the default endpoint, Application Default Credentials.
/// let prod = GcsConfig::new();
/// assert_eq!(prod.endpoint(), None);
/// // fake-gcs-server: its endpoint, anonymous access, its workarounds.
/// let local = GcsConfig::new().with_emulator("http://127.0.0.1:4443");
/// assert!(local.is_emulator());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcsConfig {
    endpoint: Option<String>,
    anonymous: bool,
    emulator: bool,
}

impl GcsConfig {
    /// Cloud Storage with Application Default Credentials.
    pub fn new() -> Self {
        GcsConfig::default()
    }

    /// Talk to `endpoint` (`https://host[:port]`, or `http://` for a local server)
    /// instead of `https://storage.googleapis.com`.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into().trim_end_matches('/').to_string());
        self
    }

    /// Send no credentials (emulators).
    pub fn with_anonymous_credentials(mut self) -> Self {
        self.anonymous = true;
        self
    }

    /// fake-gcs-server at `host` (`http://host:port` as `STORAGE_EMULATOR_HOST` has it,
    /// or `host:port`): its endpoint, anonymous access, and the store's emulator
    /// workarounds (create-only puts and copies done the ways fake-gcs-server checks).
    pub fn with_emulator(self, host: &str) -> Self {
        let mut config = self.with_endpoint(crate::emulator_url(host)).with_anonymous_credentials();
        config.emulator = true;
        config
    }

    /// The endpoint URL, when it is not the default one.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// Whether this is fake-gcs-server ([`GcsConfig::with_emulator`]).
    pub fn is_emulator(&self) -> bool {
        self.emulator
    }
}

/// A Cloud Storage connection (endpoint, credentials, HTTP client), shared by the
/// stores of every bucket. Cheap to clone.
#[derive(Clone)]
pub struct GcsClient {
    client: Client,
    emulator: Option<String>,
}

impl std::fmt::Debug for GcsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcsClient").field("emulator", &self.emulator).finish_non_exhaustive()
    }
}

impl GcsClient {
    /// Build the client for `config` (no network call is made; Application Default
    /// Credentials are looked up unless the config is anonymous).
    pub async fn connect(config: GcsConfig) -> Result<Self, StoreError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()
            .map_err(|e| StoreError::Other(format!("cannot build the HTTP client: {e}")))?;
        let http = reqwest_middleware::ClientBuilder::new(http).build();
        let mut client_config = ClientConfig { http: Some(http), ..Default::default() };
        if let Some(endpoint) = config.endpoint() {
            client_config.storage_endpoint = endpoint.to_string();
        }
        let client_config = if config.anonymous {
            client_config.anonymous()
        } else {
            client_config.with_auth().await.map_err(|e| {
                StoreError::PermissionDenied(format!("no Google Cloud credentials for Cloud Storage: {e}"))
            })?
        };
        Ok(GcsClient {
            client: Client::new(client_config),
            emulator: config.is_emulator().then(|| config.endpoint().unwrap_or_default().to_string()),
        })
    }

    /// The emulator endpoint, when this client talks to one.
    pub fn emulator(&self) -> Option<&str> {
        self.emulator.as_deref()
    }

    /// The store of `bucket`.
    pub fn store(&self, bucket: &str) -> GcsStore {
        GcsStore { client: self.clone(), bucket: bucket.to_string(), strategy: UploadStrategy::Auto, page_size: 1000 }
    }
}

/// One Cloud Storage bucket as a [`Store`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct GcsStore {
    client: GcsClient,
    bucket: String,
    strategy: UploadStrategy,
    page_size: i32,
}

impl GcsStore {
    /// Which Cloud Storage this is (the emulator's endpoint, or the real service).
    fn service(&self) -> String {
        self.client.emulator.clone().unwrap_or_else(|| "https://storage.googleapis.com".to_string())
    }

    /// One compose call of at most [`COMPOSE_LIMIT`] sources into `to`.
    async fn compose_once(&self, sources: &[String], to: &str, options: &PutOptions) -> Result<ObjectMeta, StoreError> {
        let request = ComposeObjectRequest {
            bucket: self.bucket.clone(),
            destination_object: to.to_string(),
            composing_targets: ComposingTargets {
                destination: Some(object_resource(to, &options.metadata)),
                source_objects: sources
                    .iter()
                    .map(|name| SourceObjects { name: name.clone(), ..Default::default() })
                    .collect(),
            },
            if_generation_match: generation_match(options.mode),
            ..Default::default()
        };
        let context = format!("compose {} object(s) into gs://{}/{to}", sources.len(), self.bucket);
        match self.client.client.compose_object(&request).await {
            Ok(object) => Ok(meta_of(&object)),
            Err(e) => match store_error(to, &context, &e) {
                // A missing source, named as well as the call allows.
                StoreError::NotFound(_) => {
                    Err(StoreError::NotFound(format!("a source of {to}: {}", sources.join(", "))))
                }
                // fake-gcs-server answers a missing source with a 500, not Cloud
                // Storage's 404: look for it before calling it transient.
                StoreError::Transient(text) if self.client.emulator.is_some() => {
                    for key in sources {
                        if self.head(key).await?.is_none() {
                            return Err(StoreError::NotFound(key.clone()));
                        }
                    }
                    Err(StoreError::Transient(text))
                }
                other => Err(write_error(options.mode, other)),
            },
        }
    }

    /// The store of `bucket` on an existing connection.
    pub fn new(client: GcsClient, bucket: &str) -> Self {
        client.store(bucket)
    }

    /// Choose how puts upload (tests use this to cover both paths).
    pub fn with_upload_strategy(mut self, strategy: UploadStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// List in pages of `n` objects (default 1000, the API's maximum); tests use small
    /// pages to cover paging.
    pub fn with_list_page_size(mut self, n: u32) -> Self {
        self.page_size = n.clamp(1, 1000) as i32;
        self
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Create the bucket in `project` unless it exists; returns whether it was created.
    /// Meant for the emulator and for `reel setup`; production buckets come from terraform.
    pub async fn create_bucket_if_missing(&self, project: &str) -> Result<bool, StoreError> {
        let request = InsertBucketRequest {
            name: self.bucket.clone(),
            param: InsertBucketParam { project: project.to_string(), ..Default::default() },
            ..Default::default()
        };
        match self.client.client.insert_bucket(&request).await {
            Ok(_) => Ok(true),
            Err(e) if http_status(&e) == Some(409) => Ok(false),
            Err(e) => Err(store_error("", &format!("create bucket {}", self.bucket), &e)),
        }
    }

    fn get_request(&self, key: &str) -> GetObjectRequest {
        GetObjectRequest { bucket: self.bucket.clone(), object: key.to_string(), ..Default::default() }
    }

    fn use_multipart(&self, mode: PutMode) -> bool {
        match self.strategy {
            UploadStrategy::Multipart => true,
            UploadStrategy::Resumable => false,
            UploadStrategy::Auto => mode != PutMode::Overwrite && self.client.emulator.is_some(),
        }
    }

    async fn put_multipart(&self, key: &str, body: ByteReader, options: &PutOptions) -> Result<ObjectMeta, StoreError> {
        let request = UploadObjectRequest {
            bucket: self.bucket.clone(),
            if_generation_match: generation_match(options.mode),
            ..Default::default()
        };
        let resource = object_resource(key, &options.metadata);
        let stream = tokio_util::io::ReaderStream::with_capacity(body, 256 * 1024);
        let object = self
            .client
            .client
            .upload_streamed_object(&request, stream, &UploadType::Multipart(Box::new(resource)))
            .await
            .map_err(|e| {
                write_error(options.mode, store_error(key, &format!("upload gs://{}/{key}", self.bucket), &e))
            })?;
        Ok(meta_of(&object))
    }

    async fn put_resumable(
        &self,
        key: &str,
        mut body: ByteReader,
        options: &PutOptions,
    ) -> Result<ObjectMeta, StoreError> {
        let context = format!("upload gs://{}/{key}", self.bucket);
        let request = UploadObjectRequest {
            bucket: self.bucket.clone(),
            if_generation_match: generation_match(options.mode),
            ..Default::default()
        };
        // The session carries the object resource (with its metadata) when there is
        // metadata to send; a plain name and content type otherwise.
        let upload_type = if options.metadata.is_empty() {
            let mut media = Media::new(key.to_string());
            media.content_type = content_type(key).into();
            UploadType::Simple(media)
        } else {
            UploadType::Multipart(Box::new(object_resource(key, &options.metadata)))
        };
        let session = retry(|| async {
            self.client
                .client
                .prepare_resumable_upload(&request, &upload_type)
                .await
                .map_err(|e| store_error(key, &context, &e))
        })
        .await
        .map_err(|e| write_error(options.mode, e))?;
        let result =
            self.send_chunks(key, &context, &session, &mut body).await.map_err(|e| write_error(options.mode, e));
        if result.is_err() {
            // Best effort: free the session (it would expire after a week anyway).
            let _ = session.clone().cancel().await;
        }
        result
    }

    async fn send_chunks(
        &self,
        key: &str,
        context: &str,
        session: &ResumableUploadClient,
        body: &mut ByteReader,
    ) -> Result<ObjectMeta, StoreError> {
        let mut offset: u64 = 0;
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK_SIZE + 1);
        loop {
            // One byte more than a chunk tells whether this chunk is the last one.
            let ended = fill(body, &mut buf, CHUNK_SIZE + 1, key).await?;
            let last = ended;
            let len = if last { buf.len() } else { CHUNK_SIZE };
            // The chunk goes to the HTTP client as shared bytes (sliced for a resend, never
            // copied): one chunk in memory per upload, not two or three.
            let mut filled = std::mem::replace(&mut buf, Vec::with_capacity(CHUNK_SIZE + 1));
            buf.extend_from_slice(&filled[len..]);
            filled.truncate(len);
            let chunk = bytes::Bytes::from(filled);
            let total = last.then_some(offset + len as u64);
            let mut sent = 0usize; // bytes of this chunk the server has
            let mut attempt = 1;
            loop {
                let first = offset + sent as u64;
                let size = if len == sent {
                    // Only a final, empty remainder: "bytes */TOTAL".
                    ChunkSize::new(first, first, total)
                } else {
                    ChunkSize::new(first, offset + len as u64 - 1, total)
                };
                let data = chunk.slice(sent..len);
                match session.upload_multiple_chunk(data, &size).await {
                    Ok(UploadStatus::Ok(object)) if last => return Ok(meta_of(&object)),
                    Ok(UploadStatus::Ok(_)) => {
                        return Err(StoreError::Other(format!("{context}: the server finished the upload early")))
                    }
                    Ok(UploadStatus::ResumeIncomplete(range))
                        if !last && range.last_byte + 1 >= offset + len as u64 =>
                    {
                        break;
                    }
                    Ok(UploadStatus::ResumeIncomplete(range)) => {
                        // The server kept less than was sent: send the rest again.
                        let have = (range.last_byte + 1).saturating_sub(offset) as usize;
                        if have <= sent && attempt >= ATTEMPTS {
                            return Err(StoreError::Transient(format!("{context}: the upload makes no progress")));
                        }
                        attempt += 1;
                        sent = have.min(len);
                    }
                    Ok(UploadStatus::NotStarted) => {
                        if offset > 0 || attempt >= ATTEMPTS {
                            return Err(StoreError::Transient(format!("{context}: the server has none of the upload")));
                        }
                        attempt += 1;
                        sent = 0;
                    }
                    Err(e) => {
                        let err = store_error(key, context, &e);
                        if !err.is_transient() || attempt >= ATTEMPTS {
                            return Err(err);
                        }
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(200 * 4u64.pow(attempt - 2))).await;
                        // Ask what the server has, then send the rest of this chunk.
                        match session.status(total).await {
                            Ok(UploadStatus::Ok(object)) if last => return Ok(meta_of(&object)),
                            Ok(UploadStatus::ResumeIncomplete(range)) => {
                                sent = ((range.last_byte + 1).saturating_sub(offset) as usize).min(len);
                            }
                            Ok(_) => sent = 0,
                            Err(e) => {
                                let err = store_error(key, context, &e);
                                if !err.is_transient() {
                                    return Err(err);
                                }
                            }
                        }
                    }
                }
            }
            offset += len as u64;
        }
    }
}

#[async_trait]
impl Store for GcsStore {
    fn describe(&self) -> String {
        match &self.client.emulator {
            Some(endpoint) => format!("gs://{} (emulator {endpoint})", self.bucket),
            None => format!("gs://{}", self.bucket),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        check_key(key)?;
        let request = self.get_request(key);
        let result = retry(|| async {
            self.client
                .client
                .get_object(&request)
                .await
                .map_err(|e| store_error(key, &format!("head gs://{}/{key}", self.bucket), &e))
        })
        .await;
        match result {
            Ok(object) => Ok(Some(meta_of(&object))),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One ranged GET (`Range: bytes=offset-(offset+len-1)`); a range past the end
    /// (416) is empty.
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        check_key(key)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let request = self.get_request(key);
        let context = format!("read bytes {offset}+{len} of gs://{}/{key}", self.bucket);
        let range = Range(Some(offset), Some(offset.saturating_add(len - 1)));
        let mut bytes = retry(|| async {
            match self.client.client.download_object(&request, &range).await {
                Ok(bytes) => Ok(bytes),
                Err(GcsError::Response(r)) if r.code == 416 => Ok(Vec::new()),
                Err(GcsError::HttpClient(e)) if e.status().is_some_and(|s| s.as_u16() == 416) => Ok(Vec::new()),
                Err(e) => Err(store_error(key, &context, &e)),
            }
        })
        .await?;
        // A server that ignores the range sends everything.
        if bytes.len() as u64 > len {
            let start = usize::try_from(offset).unwrap_or(usize::MAX).min(bytes.len());
            bytes = bytes[start..].iter().take(len as usize).copied().collect();
        }
        Ok(bytes)
    }

    async fn get(&self, key: &str) -> Result<ByteReader, StoreError> {
        check_key(key)?;
        let request = self.get_request(key);
        let context = format!("download gs://{}/{key}", self.bucket);
        let stream = retry(|| async {
            self.client
                .client
                .download_streamed_object(&request, &Range::default())
                .await
                .map_err(|e| store_error(key, &context, &e))
        })
        .await?;
        let key = key.to_string();
        let bucket = self.bucket.clone();
        let stream = stream.map_err(move |e| {
            // A failure mid-body is a network failure: TimedOut makes it transient in
            // StoreError::from_io (and, unlike Interrupted, io::copy does not loop on it).
            let kind = match store_error(&key, "", &e) {
                StoreError::Transient(_) => std::io::ErrorKind::TimedOut,
                StoreError::PermissionDenied(_) => std::io::ErrorKind::PermissionDenied,
                StoreError::NotFound(_) => std::io::ErrorKind::NotFound,
                _ => std::io::ErrorKind::Other,
            };
            std::io::Error::new(kind, format!("download gs://{bucket}/{key}: {e}"))
        });
        Ok(Box::pin(tokio_util::io::StreamReader::new(stream)))
    }

    async fn put_with(&self, key: &str, body: ByteReader, options: &PutOptions) -> Result<ObjectMeta, StoreError> {
        check_key(key)?;
        if self.use_multipart(options.mode) {
            self.put_multipart(key, body, options).await
        } else {
            self.put_resumable(key, body, options).await
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let mut out = Vec::new();
        let mut page_token: Option<String> = None;
        loop {
            let request = ListObjectsRequest {
                bucket: self.bucket.clone(),
                prefix: (!prefix.is_empty()).then(|| prefix.to_string()),
                page_token: page_token.clone(),
                max_results: Some(self.page_size),
                ..Default::default()
            };
            let page = retry(|| async {
                self.client
                    .client
                    .list_objects(&request)
                    .await
                    .map_err(|e| store_error(prefix, &format!("list gs://{}/{prefix}", self.bucket), &e))
            })
            .await?;
            out.extend(page.items.iter().flatten().map(meta_of));
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(token) => page_token = Some(token),
                None => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.dedup_by(|a, b| a.key == b.key);
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        check_key(key)?;
        let request =
            DeleteObjectRequest { bucket: self.bucket.clone(), object: key.to_string(), ..Default::default() };
        let result = retry(|| async {
            self.client
                .client
                .delete_object(&request)
                .await
                .map_err(|e| store_error(key, &format!("delete gs://{}/{key}", self.bucket), &e))
        })
        .await;
        match result {
            Ok(()) => Ok(true),
            Err(StoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Server-side compose: no byte passes through this process. Cloud Storage takes 32
    /// components per call, so longer lists are composed in groups into temporary
    /// objects (`{to}.compose-{level}-{n}`), which are composed in turn and deleted.
    async fn compose(&self, sources: &[String], to: &str, options: &PutOptions) -> Result<ObjectMeta, StoreError> {
        check_key(to)?;
        for key in sources {
            check_key(key)?;
        }
        if sources.is_empty() {
            return self.put_with(to, Box::pin(tokio::io::empty()), options).await;
        }
        let mut level = sources.to_vec();
        let mut temps = Vec::new();
        let mut depth = 0;
        let result = async {
            while level.len() > COMPOSE_LIMIT {
                let mut next = Vec::new();
                for (n, group) in level.chunks(COMPOSE_LIMIT).enumerate() {
                    let temp = format!("{to}.compose-{depth}-{n}");
                    self.compose_once(group, &temp, &PutOptions::new(PutMode::Overwrite)).await?;
                    temps.push(temp.clone());
                    next.push(temp);
                }
                level = next;
                depth += 1;
            }
            if options.mode != PutMode::Overwrite && self.client.emulator.is_some() {
                // fake-gcs-server ignores ifGenerationMatch on compose: compose to a
                // temporary object, then copy it under the condition (which `copy`
                // checks on the emulator).
                let temp = format!("{to}.compose-final");
                self.compose_once(
                    &level,
                    &temp,
                    &PutOptions::new(PutMode::Overwrite).with_metadata(options.metadata.clone()),
                )
                .await?;
                temps.push(temp.clone());
                return self.copy(&temp, to, options.mode).await;
            }
            self.compose_once(&level, to, options).await
        }
        .await;
        for temp in temps {
            if let Err(e) = self.delete(&temp).await {
                debug!(key = %temp, error = %e, "could not delete a temporary compose object");
            }
        }
        result
    }

    fn remote_object(&self, key: &str) -> Option<RemoteObject> {
        check_key(key).ok()?;
        Some(RemoteObject { service: self.service(), bucket: self.bucket.clone(), name: key.to_string() })
    }

    /// A server-side copy from another bucket of the same service (`copyTo`): the reel
    /// goes from the work bucket to its output path without passing through upload.
    /// fake-gcs-server ignores `ifGenerationMatch` on copies, so there a conditional copy
    /// is checked by a HEAD first (racy, emulator only; Cloud Storage checks it itself).
    async fn put_copy_of(
        &self,
        source: &RemoteObject,
        to: &str,
        options: &PutOptions,
    ) -> Result<Option<ObjectMeta>, StoreError> {
        check_key(to)?;
        if source.service != self.service() {
            return Ok(None);
        }
        if self.client.emulator.is_some() {
            let current = self.head(to).await?;
            let refused = match (options.mode, &current) {
                (PutMode::CreateOnly, Some(_)) => Some(StoreError::AlreadyExists(to.to_string())),
                (PutMode::IfGeneration(g), Some(m)) if m.generation != g => {
                    Some(StoreError::PreconditionFailed(format!("{to}: its generation is no longer {g}")))
                }
                (PutMode::IfGeneration(g), None) => {
                    Some(StoreError::PreconditionFailed(format!("{to}: its generation is no longer {g}")))
                }
                _ => None,
            };
            if let Some(refused) = refused {
                return Err(refused);
            }
        }
        let request = CopyObjectRequest {
            source_bucket: source.bucket.clone(),
            source_object: source.name.clone(),
            destination_bucket: self.bucket.clone(),
            destination_object: to.to_string(),
            if_generation_match: if self.client.emulator.is_some() { None } else { generation_match(options.mode) },
            metadata: Some(object_resource(to, &options.metadata)),
            ..Default::default()
        };
        let context = format!("copy gs://{}/{} to gs://{}/{to}", source.bucket, source.name, self.bucket);
        match self.client.client.copy_object(&request).await {
            Ok(object) => Ok(Some(meta_of(&object))),
            Err(e) => match store_error(to, &context, &e) {
                StoreError::NotFound(_) => Err(StoreError::NotFound(format!("gs://{}/{}", source.bucket, source.name))),
                other => Err(write_error(options.mode, other)),
            },
        }
    }

    async fn copy(&self, from: &str, to: &str, mode: PutMode) -> Result<ObjectMeta, StoreError> {
        check_key(from)?;
        check_key(to)?;
        if mode != PutMode::Overwrite && self.client.emulator.is_some() {
            // fake-gcs-server ignores ifGenerationMatch on copyTo (and on everything but
            // multipart uploads), so on the emulator a conditional copy streams the
            // source through a conditional multipart upload, which it does check.
            let source = self.head(from).await?.ok_or_else(|| StoreError::NotFound(from.to_string()))?;
            let body = self.get(from).await?;
            let options = PutOptions::new(mode).with_metadata(source.metadata);
            return self.put_multipart(to, body, &options).await;
        }
        let request = CopyObjectRequest {
            source_bucket: self.bucket.clone(),
            source_object: from.to_string(),
            destination_bucket: self.bucket.clone(),
            destination_object: to.to_string(),
            if_generation_match: generation_match(mode),
            ..Default::default()
        };
        let context = format!("copy gs://{0}/{from} to gs://{0}/{to}", self.bucket);
        match self.client.client.copy_object(&request).await {
            Ok(object) => Ok(meta_of(&object)),
            Err(e) => match store_error(to, &context, &e) {
                // Tell a missing source from a taken destination.
                StoreError::NotFound(_) => Err(StoreError::NotFound(from.to_string())),
                other => Err(write_error(mode, other)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_notation_is_decoded() {
        assert_eq!(decode_crc32c(Some("AAAAAA==")), 0);
        assert_eq!(decode_crc32c(Some("yZRlqg==")), 0xc99465aa);
        assert_eq!(decode_crc32c(Some("not base64!")), 0);
        assert_eq!(decode_crc32c(None), 0);
    }

    #[test]
    fn statuses_are_classified_in_one_place() {
        let response = |code: u16| {
            GcsError::Response(
                serde_json::from_value(serde_json::json!({"code": code, "errors": [], "message": "m"})).unwrap(),
            )
        };
        assert!(matches!(store_error("k", "c", &response(401)), StoreError::PermissionDenied(_)));
        assert!(matches!(store_error("k", "c", &response(403)), StoreError::PermissionDenied(_)));
        assert!(matches!(store_error("k", "c", &response(404)), StoreError::NotFound(k) if k == "k"));
        assert!(matches!(store_error("k", "c", &response(412)), StoreError::AlreadyExists(k) if k == "k"));
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(store_error("k", "c", &response(code)).is_transient(), "{code}");
        }
        assert!(matches!(store_error("k", "c", &response(400)), StoreError::Other(_)));
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type("jobs/a/reel.MP4"), "video/mp4");
        assert_eq!(content_type("jobs/a/manifest.json"), "application/json");
        assert_eq!(content_type("jobs/a/noext"), "application/octet-stream");
    }
}
