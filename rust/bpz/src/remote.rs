//! Archives read over HTTP(S) and from object stores (`s3://`, `gs://`, `az://`), through
//! the `object_store` crate: a [`Source`] whose reads are ranged GETs.
//!
//! The request budget is what makes remote reading worth it:
//! - **open = 1 request**: a suffix range GET of the last [`OPEN_TAIL_BYTES`] gives the
//!   object's length, its ETag, the trailer and (usually) the index; an archive no larger
//!   than that is then held whole and every later read is served from memory. An index
//!   larger than that first read costs one more request, for the rest of it: lookups are
//!   then answered from memory. Where suffix ranges are refused, a HEAD and a bounded
//!   range replace the first request.
//! - **one tensor = 1 more request**: the reader announces the byte ranges it is about to
//!   read ([`Source::prefetch`]); they are fetched together.
//! - **a full load** is split into parallel ranged GETs of a few MiB (neighbours merged
//!   across gaps of at most [`MERGE_GAP`] bytes), at most [`MAX_CONCURRENCY`] at a time and
//!   at most [`PREFETCH_WINDOW`] bytes held ahead of the decoders, so it streams at the
//!   speed of one plain GET without buffering the whole file.
//!
//! Every request after the first is pinned to the ETag (and length) seen on open: an
//! object replaced in between fails with "changed since it was opened", never a mix of
//! two files. Transient failures (timeouts, resets, 5xx, short bodies) are retried a
//! bounded number of times with backoff; every request has a timeout. Credentials never
//! reach an error message, a `Debug` output or the label naming the archive: every
//! message leaving this module is scrubbed of the secret values it was configured with.
//!
//! Clients are kept and shared between opens of one bucket or server with equal options,
//! credentials included (the connections of one open serve the next); request counts
//! stay per source.

use std::fmt;
use std::future::Future;
use std::io;
use std::ops::Range;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpService,
    ReqwestConnector,
};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::http::HttpBuilder;
use object_store::path::Path as StorePath;
use object_store::{
    BackoffConfig, ClientConfigKey, ClientOptions, Extensions, GetOptions, GetRange,
    GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreScheme,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RetryConfig, UploadPart,
};
use url::Url;

use crate::binindex::INDEX_MAGIC;
use crate::binindex_read::{tail_read_len, TAIL_READ_BYTES};
use crate::error::{Error, Result};
use crate::format::{END_MAGIC, SUPERBLOCK_LEN, TRAILER_LEN};
use crate::read::{Reader, Source};

/// Bytes fetched from the end of the object on open: trailer and index in one request for
/// any archive whose index is under about this size (~250 bytes a tensor: about a
/// thousand tensors), and the whole archive when it is smaller. A larger first read costs
/// its transfer on every open, a smaller one a round trip more for larger indexes; at
/// 20 ms each way and 100 MB/s (bench/remote.py), open + one tensor took 94 ms with 64 KiB,
/// 96 with 256 KiB, 104 with 1 MiB, and an index beyond the first read adds a 40 ms round trip.
pub const OPEN_TAIL_BYTES: u64 = 256 << 10;
/// Largest index an open fetches whole when its first read did not hold it all (one
/// request more); a larger one is read in the parts a lookup needs.
pub const INDEX_FETCH_MAX: u64 = 64 << 20;
/// A server that ignores `Range` and answers with the whole object: its body is used when
/// the object is at most this large, else the open fails (never an unbounded download).
pub const WHOLE_BODY_MAX: u64 = 64 << 20;
/// Ranges to read at most this far apart are fetched with one request.
pub const MERGE_GAP: u64 = 64 << 10;
/// Bounds of one ranged GET of a load: large enough that a request's overhead is small
/// next to its transfer, small enough to have several in flight (AWS advises 8-16 MB).
pub const PART_MIN: u64 = 4 << 20;
pub const PART_MAX: u64 = 16 << 20;
/// Requests in flight at once for one load.
pub const MAX_CONCURRENCY: usize = 8;
/// Bytes fetched ahead of the readers at most: bounds the memory of a full load.
pub const PREFETCH_WINDOW: u64 = 256 << 20;
/// Loads of one archive that prefetch at once (threads reading the same archive); an older
/// one is dropped (its readers then fetch what they still need themselves).
const MAX_PLANS: usize = 4;

/// Retries of a request that failed transiently (object_store retries connection errors,
/// timeouts and 5xx itself; this module retries short bodies).
const DEFAULT_MAX_RETRIES: usize = 3;
const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(20);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const SHORT_BODY_RETRIES: u32 = 2;

/// A response body as the frames it arrived in: not copied into one buffer (a full load
/// would copy every byte once more), read out by offset.
#[derive(Clone, Default)]
struct Body {
    frames: Vec<Bytes>,
    starts: Vec<usize>,
    len: usize,
}

impl Body {
    fn push(&mut self, frame: Bytes) {
        if !frame.is_empty() {
            self.starts.push(self.len);
            self.len += frame.len();
            self.frames.push(frame);
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    /// `front` followed by this body.
    fn prepend(&mut self, front: Body) {
        let back = std::mem::replace(self, front);
        for frame in back.frames {
            self.push(frame);
        }
    }

    /// Copies bytes `at..at + out.len()` (within the body) into `out`.
    fn copy_to(&self, at: usize, out: &mut [u8]) {
        if out.is_empty() {
            return;
        }
        let mut k = self.starts.partition_point(|&s| s <= at) - 1;
        let (mut pos, mut done) = (at, 0);
        while done < out.len() {
            let frame = &self.frames[k];
            let from = pos - self.starts[k];
            let n = (frame.len() - from).min(out.len() - done);
            out[done..done + n].copy_from_slice(&frame[from..from + n]);
            done += n;
            pos += n;
            k += 1;
        }
    }
}

async fn read_body(result: object_store::GetResult) -> object_store::Result<Body> {
    let mut stream = result.into_stream();
    let mut body = Body::default();
    while let Some(frame) = stream.next().await {
        body.push(frame?);
    }
    Ok(body)
}

/// Whether `s` looks like a URL this module reads (`scheme://...`), not a file path.
pub fn is_url(s: &str) -> bool {
    match s.split_once("://") {
        Some((scheme, _)) => {
            !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
                && scheme.as_bytes()[0].is_ascii_alphabetic()
        }
        None => false,
    }
}

/// Requests and body bytes of a [`RemoteSource`] since it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RemoteStats {
    /// HTTP requests sent (retries included).
    pub requests: u64,
    /// Body bytes received.
    pub bytes: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) bytes: AtomicU64,
}

/// One tokio runtime for every remote source: object_store is async, [`Source`] reads
/// block. Any thread (rayon's included) hands it futures and waits on a channel, so a
/// read never needs to be inside a runtime (nor panics when called from one).
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bpz-remote")
            .enable_all()
            .build()
            .expect("a tokio runtime for remote reads")
    })
}

pub(crate) fn block_on<F>(future: F) -> Result<F::Output, RemoteError>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime().spawn(async move {
        let _ = tx.send(future.await);
    });
    rx.recv().map_err(|_| RemoteError {
        kind: io::ErrorKind::Other,
        errno: Some(EIO),
        message: "internal error: a remote read task stopped without an answer".into(),
    })
}

// errno values (Linux numbering; Python picks the OSError subclass from them).
pub(crate) const ENOENT: i32 = 2;
pub(crate) const EIO: i32 = 5;
const EACCES: i32 = 13;
const EINVAL: i32 = 22;
const ECONNRESET: i32 = 104;
const ETIMEDOUT: i32 = 110;
const ECONNREFUSED: i32 = 111;
const ESTALE: i32 = 116;

/// A failure of a remote read, already scrubbed of credentials. Becomes an
/// `io::Error` (and so [`Error::Io`] naming the URL) whose source chain carries an OS
/// error number, so that bindings raise `FileNotFoundError`, `PermissionError`,
/// `TimeoutError`... as for a local file.
#[derive(Debug, Clone)]
pub(crate) struct RemoteError {
    kind: io::ErrorKind,
    errno: Option<i32>,
    message: String,
}

#[derive(Debug)]
struct ErrnoMessage {
    message: String,
    os: Option<io::Error>,
}

impl fmt::Display for ErrnoMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ErrnoMessage {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.os.as_ref().map(|e| e as _)
    }
}

impl RemoteError {
    pub(crate) fn new(kind: io::ErrorKind, errno: i32, message: impl Into<String>) -> Self {
        RemoteError {
            kind,
            errno: Some(errno),
            message: message.into(),
        }
    }

    pub(crate) fn into_io(self) -> io::Error {
        io::Error::new(
            self.kind,
            ErrnoMessage {
                message: self.message,
                os: self.errno.map(io::Error::from_raw_os_error),
            },
        )
    }

    pub(crate) fn into_error(self, label: &str) -> Error {
        Error::Io {
            path: label.to_owned(),
            source: self.into_io(),
        }
    }
}

/// The status of the last response to one request (object_store hands request
/// extensions to the HTTP client): says 416 from 404 without parsing messages.
#[derive(Clone, Default)]
pub(crate) struct StatusSlot(Arc<Mutex<Option<u16>>>);

tokio::task_local! {
    /// The slot of the operation a task runs, for requests sent without extensions.
    pub(crate) static TASK_STATUS: StatusSlot;
}

impl StatusSlot {
    pub(crate) fn get(&self) -> Option<u16> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

tokio::task_local! {
    /// The counters of the source whose operation a task runs: clients are shared between
    /// sources (see [`CountedStore`]), counts stay per source.
    static TASK_COUNTERS: Arc<Counters>;
}

/// Counts every HTTP request (to the counters of the task's source) and notes each
/// response's status.
#[derive(Debug)]
struct CountingService {
    inner: HttpClient,
}

#[async_trait::async_trait]
impl HttpService for CountingService {
    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let _ = TASK_COUNTERS.try_with(|c| c.requests.fetch_add(1, Ordering::Relaxed));
        let slot = request.extensions().get::<StatusSlot>().cloned();
        let response = self.inner.execute(request).await?;
        let status = Some(response.status().as_u16());
        if let Some(slot) = slot {
            *slot.0.lock().unwrap_or_else(|e| e.into_inner()) = status;
        } else {
            // Requests that take no extensions (listings, deletes) report to their task's slot.
            let _ = TASK_STATUS.try_with(|slot| {
                *slot.0.lock().unwrap_or_else(|e| e.into_inner()) = status;
            });
        }
        Ok(response)
    }
}

#[derive(Debug)]
struct CountingConnector;

impl HttpConnector for CountingConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(CountingService { inner }))
    }
}

/// A shared store as one source sees it: every operation runs with that source's
/// counters in [`TASK_COUNTERS`] (multipart parts and listing pages included).
#[derive(Debug)]
struct CountedStore {
    inner: Arc<dyn ObjectStore>,
    counters: Arc<Counters>,
}

impl fmt::Display for CountedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

impl CountedStore {
    fn scoped<F: Future>(&self, future: F) -> impl Future<Output = F::Output> {
        TASK_COUNTERS.scope(self.counters.clone(), future)
    }

    fn scoped_stream<T: Send + 'static>(
        &self,
        inner: BoxStream<'static, T>,
    ) -> BoxStream<'static, T> {
        Box::pin(CountedStream {
            inner,
            counters: self.counters.clone(),
        })
    }
}

struct CountedStream<T> {
    inner: BoxStream<'static, T>,
    counters: Arc<Counters>,
}

impl<T> futures::Stream for CountedStream<T> {
    type Item = T;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        let this = self.get_mut();
        TASK_COUNTERS.sync_scope(this.counters.clone(), || this.inner.poll_next_unpin(cx))
    }
}

#[derive(Debug)]
struct CountedUpload {
    inner: Box<dyn MultipartUpload>,
    counters: Arc<Counters>,
}

#[async_trait::async_trait]
impl MultipartUpload for CountedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        // The part's future runs later, on whatever task awaits it.
        Box::pin(TASK_COUNTERS.scope(self.counters.clone(), self.inner.put_part(data)))
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        TASK_COUNTERS
            .scope(self.counters.clone(), self.inner.complete())
            .await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        TASK_COUNTERS
            .scope(self.counters.clone(), self.inner.abort())
            .await
    }
}

#[async_trait::async_trait]
impl ObjectStore for CountedStore {
    async fn put_opts(
        &self,
        location: &StorePath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.scoped(self.inner.put_opts(location, payload, opts))
            .await
    }

    async fn put_multipart_opts(
        &self,
        location: &StorePath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let inner = self
            .scoped(self.inner.put_multipart_opts(location, opts))
            .await?;
        Ok(Box::new(CountedUpload {
            inner,
            counters: self.counters.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &StorePath,
        options: GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        let mut result = self.scoped(self.inner.get_opts(location, options)).await?;
        // A body cut short is resumed with a new request while it is read: counted too.
        // (Irrefutable without object_store's `fs` feature, which adds a file payload.)
        #[allow(irrefutable_let_patterns)]
        if let GetResultPayload::Stream(stream) = result.payload {
            result.payload = GetResultPayload::Stream(self.scoped_stream(stream));
        }
        Ok(result)
    }

    async fn head(&self, location: &StorePath) -> object_store::Result<ObjectMeta> {
        self.scoped(self.inner.head(location)).await
    }

    async fn delete(&self, location: &StorePath) -> object_store::Result<()> {
        self.scoped(self.inner.delete(location)).await
    }

    fn list(
        &self,
        prefix: Option<&StorePath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.scoped_stream(self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&StorePath>,
        offset: &StorePath,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.scoped_stream(self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&StorePath>,
    ) -> object_store::Result<ListResult> {
        self.scoped(self.inner.list_with_delimiter(prefix)).await
    }

    async fn copy(&self, from: &StorePath, to: &StorePath) -> object_store::Result<()> {
        self.scoped(self.inner.copy(from, to)).await
    }

    async fn copy_if_not_exists(
        &self,
        from: &StorePath,
        to: &StorePath,
    ) -> object_store::Result<()> {
        self.scoped(self.inner.copy_if_not_exists(from, to)).await
    }
}

/// Clients (and so connection pools, TLS set-up, credential caches) kept for reuse: at most
/// this many, the least recently used dropped first.
const STORE_CACHE_MAX: usize = 16;

/// What a client was built from: two opens share one only when every input is equal —
/// the store's address, every option (the environment's included, in the order applied)
/// and the retry settings. Never shown (it holds credentials).
#[derive(PartialEq, Eq)]
struct StoreKey {
    address: String,
    pairs: Vec<(String, String)>,
    max_retries: usize,
    retry_timeout: Duration,
}

static STORES: Mutex<Vec<(StoreKey, Arc<dyn ObjectStore>)>> = Mutex::new(Vec::new());

fn cached_store(key: &StoreKey) -> Option<Arc<dyn ObjectStore>> {
    let mut stores = STORES.lock().unwrap_or_else(|e| e.into_inner());
    let at = stores.iter().position(|(k, _)| k == key)?;
    let entry = stores.remove(at);
    let store = entry.1.clone();
    stores.push(entry);
    Some(store)
}

fn keep_store(key: StoreKey, store: &Arc<dyn ObjectStore>) {
    let mut stores = STORES.lock().unwrap_or_else(|e| e.into_inner());
    stores.retain(|(k, _)| *k != key);
    stores.push((key, store.clone()));
    let excess = stores.len().saturating_sub(STORE_CACHE_MAX);
    stores.drain(..excess);
}

impl fmt::Debug for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counters")
            .field("requests", &self.requests.load(Ordering::Relaxed))
            .finish()
    }
}

/// What names the object in messages: the URL without user, password, query or fragment
/// (a presigned URL's query is a credential).
pub fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) => {
            let had_query = u.query().is_some();
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            let mut s = u.to_string();
            if had_query {
                s.push_str("?<redacted>");
            }
            s
        }
        // Not a URL: keep only what precedes anything that could be a credential.
        Err(_) => {
            let cut = url.find(['@', '?', '#']).unwrap_or(url.len());
            url[..cut].to_owned()
        }
    }
}

/// Replaces every configured secret in `text`.
fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for secret in secrets {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "<redacted>");
        }
    }
    out
}

/// Whether an option's value is to be kept out of messages.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "secret",
        "token",
        "password",
        "key",
        "sas",
        "credential",
        "signature",
    ]
    .iter()
    .any(|w| key.contains(w))
        && !key.contains("skip_signature")
}

/// Options of a remote open beyond those of the store.
#[derive(Debug, Clone)]
struct Tuning {
    open_tail_bytes: u64,
}

/// Store options: object_store's keys for the URL's scheme (`endpoint`, `region`,
/// `access_key_id`, `secret_access_key`, `session_token`, `skip_signature`, `allow_http`,
/// `timeout`, `connect_timeout`, ...; `aws_*`, `google_*`, `azure_*` spellings too), and
/// bpz's: `anonymous` (= `skip_signature`), `max_retries`, `retry_timeout`, and
/// `open_tail_bytes`.
pub(crate) struct Built {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) path: StorePath,
    pub(crate) label: String,
    pub(crate) secrets: Vec<String>,
    tuning: Tuning,
}

pub(crate) fn invalid(label: &str, detail: impl fmt::Display) -> Error {
    Error::InvalidArgument(format!("{label}: {detail}"))
}

fn parse_bool(label: &str, key: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(invalid(
            label,
            format!("storage option {key:?} must be true or false"),
        )),
    }
}

fn parse_duration(label: &str, key: &str, value: &str) -> Result<Duration> {
    let v = value.trim();
    let (number, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60.0)
    } else {
        (v, 1.0)
    };
    number
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && *x >= 0.0)
        .map(|x| Duration::from_secs_f64(x * scale))
        .ok_or_else(|| {
            invalid(
                label,
                format!("storage option {key:?} must be a duration such as \"2s\" or \"500ms\""),
            )
        })
}

pub(crate) fn build_store(
    url: &str,
    options: &[(String, String)],
    counters: &Arc<Counters>,
) -> Result<Built> {
    build_store_at(url, options, counters, false)
}

/// [`build_store`], where `prefix` allows a URL naming a bucket or container root (an
/// empty object path), as a listing of a "directory" of objects may.
pub(crate) fn build_store_at(
    url: &str,
    options: &[(String, String)],
    counters: &Arc<Counters>,
    prefix: bool,
) -> Result<Built> {
    let label = redact_url(url);
    let parsed = Url::parse(url).map_err(|e| invalid(&label, format!("not a valid URL ({e})")))?;
    let mut secrets: Vec<String> = Vec::new();
    if !parsed.username().is_empty() {
        secrets.push(parsed.username().to_owned());
    }
    if let Some(p) = parsed.password() {
        secrets.push(p.to_owned());
    }
    if let Some(q) = parsed.query() {
        secrets.push(q.to_owned());
    }
    let (scheme, raw_path) = ObjectStoreScheme::parse(&parsed).map_err(|_| {
        invalid(
            &label,
            "not a URL bpz reads: use http(s)://host/path, s3://bucket/key, gs://bucket/key \
             or az://container/path",
        )
    })?;
    if matches!(scheme, ObjectStoreScheme::Local | ObjectStoreScheme::Memory) {
        return Err(invalid(
            &label,
            "local files are opened by their path, not a URL",
        ));
    }
    if parsed.query().is_some() || !parsed.username().is_empty() {
        return Err(invalid(
            &label,
            "credentials or a query in the URL are not supported: pass them as storage \
             options or environment variables",
        ));
    }
    let path = StorePath::from_url_path(raw_path)
        .map_err(|_| invalid(&label, "the object's path is not valid"))?;
    if path.as_ref().is_empty() && !prefix {
        return Err(invalid(&label, "the URL names no object"));
    }

    // The environment first (the standard variables of each store), then the explicit
    // options, which win.
    let env_prefix = match scheme {
        ObjectStoreScheme::AmazonS3 => Some("AWS_"),
        ObjectStoreScheme::GoogleCloudStorage => Some("GOOGLE_"),
        ObjectStoreScheme::MicrosoftAzure => Some("AZURE_"),
        _ => None,
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    if let Some(prefix) = env_prefix {
        for (k, v) in std::env::vars_os() {
            if let (Some(k), Some(v)) = (k.to_str(), v.to_str()) {
                if k.starts_with(prefix) {
                    pairs.push((k.to_ascii_lowercase(), v.to_owned()));
                }
            }
        }
    }
    let mut retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: DEFAULT_MAX_RETRIES,
        retry_timeout: DEFAULT_RETRY_TIMEOUT,
    };
    let mut tuning = Tuning {
        open_tail_bytes: OPEN_TAIL_BYTES,
    };
    for (k, v) in options {
        let key = k.trim().to_ascii_lowercase();
        match key.as_str() {
            "anonymous" => {
                if parse_bool(&label, k, v)? {
                    pairs.push(("skip_signature".into(), "true".into()));
                }
            }
            "max_retries" => {
                retry.max_retries = v.trim().parse().map_err(|_| {
                    invalid(&label, "storage option \"max_retries\" must be a count")
                })?
            }
            "retry_timeout" => retry.retry_timeout = parse_duration(&label, k, v)?,
            "open_tail_bytes" => {
                tuning.open_tail_bytes = v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|&n| n >= 64)
                    .ok_or_else(|| {
                        invalid(
                        &label,
                        "storage option \"open_tail_bytes\" must be a byte count of at least 64",
                    )
                    })?
            }
            _ => pairs.push((key, v.clone())),
        }
    }
    for (k, v) in &pairs {
        if is_secret_key(k) && v.len() >= 4 {
            secrets.push(v.clone());
        }
    }
    // An http:// endpoint is a request for plain HTTP.
    let endpoint_is_http = pairs.iter().any(|(k, v)| {
        k.contains("endpoint") && !k.contains("sts") && v.trim().starts_with("http://")
    });
    let allow_http_given = pairs.iter().any(|(k, _)| k.ends_with("allow_http"));

    let mut client = ClientOptions::new()
        .with_timeout(DEFAULT_TIMEOUT)
        .with_connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    if parsed.scheme() == "http" || (endpoint_is_http && !allow_http_given) {
        client = client.with_allow_http(true);
    }
    // The store's address: a bucket (container) named by the host, or an HTTP server; a
    // cloud store named by an https:// URL keeps its whole URL (its bucket may be in the
    // path), so it is shared only between opens of that one object.
    let address = match (&scheme, parsed.scheme()) {
        (ObjectStoreScheme::Http, _) => parsed[..url::Position::BeforePath].to_owned(),
        (_, "http" | "https") => parsed.as_str().to_owned(),
        _ => parsed[..url::Position::BeforePath].to_owned(),
    };
    let key = StoreKey {
        address: format!("{scheme:?} {address}"),
        pairs: pairs.clone(),
        max_retries: retry.max_retries,
        retry_timeout: retry.retry_timeout,
    };
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.dedup();
    let counted = |inner: Arc<dyn ObjectStore>| -> Arc<dyn ObjectStore> {
        Arc::new(CountedStore {
            inner,
            counters: counters.clone(),
        })
    };
    if let Some(store) = cached_store(&key) {
        return Ok(Built {
            store: counted(store),
            path,
            label,
            secrets,
            tuning,
        });
    }
    let connector = CountingConnector;
    let unknown = |k: &str| {
        invalid(
            &label,
            format!("unknown storage option {k:?} for a {} URL", parsed.scheme()),
        )
    };
    let store_err = |e: object_store::Error| invalid(&label, scrub(&e.to_string(), &secrets));
    let store: Arc<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::AmazonS3 => {
            let mut b = AmazonS3Builder::new()
                .with_client_options(client)
                .with_url(url);
            for (k, v) in &pairs {
                let key = AmazonS3ConfigKey::from_str(k);
                match key {
                    Ok(key) => b = b.with_config(key, v),
                    // Unknown AWS_* environment variables belong to other tools.
                    Err(_) if k.starts_with("aws_") && !options_has(options, k) => {}
                    Err(_) => return Err(unknown(k)),
                }
            }
            Arc::new(
                b.with_retry(retry)
                    .with_http_connector(connector)
                    .build()
                    .map_err(store_err)?,
            )
        }
        ObjectStoreScheme::GoogleCloudStorage => {
            let mut b = GoogleCloudStorageBuilder::new()
                .with_client_options(client)
                .with_url(url);
            for (k, v) in &pairs {
                match GoogleConfigKey::from_str(k) {
                    Ok(key) => b = b.with_config(key, v),
                    Err(_) if k.starts_with("google_") && !options_has(options, k) => {}
                    Err(_) => return Err(unknown(k)),
                }
            }
            Arc::new(
                b.with_retry(retry)
                    .with_http_connector(connector)
                    .build()
                    .map_err(store_err)?,
            )
        }
        ObjectStoreScheme::MicrosoftAzure => {
            let mut b = MicrosoftAzureBuilder::new()
                .with_client_options(client)
                .with_url(url);
            for (k, v) in &pairs {
                match AzureConfigKey::from_str(k) {
                    Ok(key) => b = b.with_config(key, v),
                    Err(_) if k.starts_with("azure_") && !options_has(options, k) => {}
                    Err(_) => return Err(unknown(k)),
                }
            }
            Arc::new(
                b.with_retry(retry)
                    .with_http_connector(connector)
                    .build()
                    .map_err(store_err)?,
            )
        }
        ObjectStoreScheme::Http => {
            let base = &parsed[..url::Position::BeforePath];
            let mut b = HttpBuilder::new()
                .with_client_options(client)
                .with_url(base);
            for (k, v) in &pairs {
                match ClientConfigKey::from_str(k) {
                    Ok(key) => b = b.with_config(key, v),
                    // Signing options mean nothing to a plain HTTP server.
                    Err(_) if k == "skip_signature" => {}
                    Err(_) => return Err(unknown(k)),
                }
            }
            Arc::new(
                b.with_retry(retry)
                    .with_http_connector(connector)
                    .build()
                    .map_err(store_err)?,
            )
        }
        _ => {
            return Err(invalid(
                &label,
                "this kind of URL is not supported: use http(s)://, s3://, gs:// or az://",
            ))
        }
    };
    keep_store(key, &store);
    Ok(Built {
        store: counted(store),
        path,
        label,
        secrets,
        tuning,
    })
}

fn options_has(options: &[(String, String)], key: &str) -> bool {
    options
        .iter()
        .any(|(k, _)| k.trim().eq_ignore_ascii_case(key))
}

/// The shared state of a [`RemoteSource`], also held by its fetch tasks.
struct Inner {
    label: String,
    store: Arc<dyn ObjectStore>,
    path: StorePath,
    len: u64,
    etag: Option<String>,
    last_modified: Option<String>,
    secrets: Vec<String>,
    counters: Arc<Counters>,
    /// Bytes `tail_start..len` from the open request (the whole object when it is small).
    tail_start: u64,
    tail: Body,
    /// The file's first bytes when the open fetched them (see `after_first_read`).
    head: Body,
    /// The loads in progress, oldest first.
    plans: Mutex<Vec<Arc<Plan>>>,
}

/// Ranges announced by the reader for one load, fetched ahead: sorted, disjoint slots.
struct Plan {
    slots: Vec<Arc<Slot>>,
    /// Bytes fetched and not read yet ([`PREFETCH_WINDOW`] bounds it).
    buffered: AtomicU64,
    released: tokio::sync::Notify,
    /// Announced bytes not read yet: at zero the load is over and the plan retires.
    unread: AtomicU64,
    /// Set when the plan retires: its planner stops.
    retired: std::sync::atomic::AtomicBool,
}

struct Slot {
    range: Range<u64>,
    /// Bytes the reader announced within it (gaps merged in are never read).
    wanted: u64,
    state: Mutex<SlotState>,
    ready: Condvar,
}

enum SlotState {
    Planned,
    Loading,
    Ready {
        data: Body,
        unread: u64,
    },
    /// Every announced byte was read: the data is dropped.
    Consumed,
    Failed(RemoteError),
}

/// An object read with ranged GETs (see the module docs).
pub struct RemoteSource {
    inner: Arc<Inner>,
}

impl fmt::Debug for RemoteSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteSource")
            .field("url", &self.inner.label)
            .field("len", &self.inner.len)
            .field("etag", &self.inner.etag)
            .finish_non_exhaustive()
    }
}

/// What the open request learnt.
struct Opened {
    len: u64,
    etag: Option<String>,
    last_modified: Option<String>,
    tail_start: u64,
    tail: Body,
}

/// ETag and modification time of a response (a missing Last-Modified reads as the epoch:
/// unknown). Both are compared: some servers give every file the same default ETag.
fn meta_identity(meta: &ObjectMeta) -> (Option<String>, Option<String>) {
    let modified = (meta.last_modified.timestamp() != 0).then(|| meta.last_modified.to_rfc3339());
    (meta.e_tag.clone(), modified)
}

/// Maps an object_store error (whose text may hold URLs and headers) to a scrubbed one.
pub(crate) fn classify(
    e: &object_store::Error,
    status: Option<u16>,
    label: &str,
    secrets: &[String],
) -> RemoteError {
    use object_store::Error as E;
    let detail = scrub(&e.to_string(), secrets);
    // The transport's failure, wherever it sits in the chain: object_store's own kind when
    // an `HttpError` is reachable, else the OS error at the bottom (a request error of the
    // retry layer hands on its source, skipping the `HttpError` itself), else the text of
    // a client timeout (reqwest's has no public type).
    let http_kind = {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        let (mut found, mut os) = (None, None);
        while let Some(s) = source {
            if let Some(h) = s.downcast_ref::<HttpError>() {
                found = Some(h.kind());
            }
            if let Some(io) = s.downcast_ref::<io::Error>() {
                os = Some(io.kind());
            }
            source = s.source();
        }
        found.or_else(|| match os {
            Some(io::ErrorKind::ConnectionRefused) => Some(HttpErrorKind::Connect),
            Some(io::ErrorKind::TimedOut) => Some(HttpErrorKind::Timeout),
            Some(
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof,
            ) => Some(HttpErrorKind::Interrupted),
            _ if detail.contains("operation timed out") => Some(HttpErrorKind::Timeout),
            _ => None,
        })
    };
    let status = status.filter(|s| *s >= 400);
    match (e, status) {
        (E::NotFound { .. }, _) | (_, Some(404)) => RemoteError::new(
            io::ErrorKind::NotFound,
            ENOENT,
            format!("no such object (HTTP 404) at {label}"),
        ),
        (E::PermissionDenied { .. }, _) | (_, Some(403)) => RemoteError::new(
            io::ErrorKind::PermissionDenied,
            EACCES,
            "access denied (HTTP 403): check the credentials and the permissions on the \
             object"
                .to_string(),
        ),
        (E::Unauthenticated { .. }, _) | (_, Some(401)) => RemoteError::new(
            io::ErrorKind::PermissionDenied,
            EACCES,
            "not authenticated (HTTP 401): credentials are missing or wrong".to_string(),
        ),
        (E::Precondition { .. }, _) | (_, Some(412)) => changed("its ETag no longer matches"),
        _ => match http_kind {
            Some(HttpErrorKind::Timeout) => RemoteError::new(
                io::ErrorKind::TimedOut,
                ETIMEDOUT,
                format!("timed out (after retries): {detail}"),
            ),
            Some(HttpErrorKind::Connect) => RemoteError::new(
                io::ErrorKind::ConnectionRefused,
                ECONNREFUSED,
                format!("cannot connect (after retries): {detail}"),
            ),
            Some(HttpErrorKind::Interrupted | HttpErrorKind::Request) => RemoteError::new(
                io::ErrorKind::ConnectionReset,
                ECONNRESET,
                format!("the connection failed (after retries): {detail}"),
            ),
            _ => RemoteError::new(io::ErrorKind::Other, EIO, detail),
        },
    }
}

fn changed(detail: &str) -> RemoteError {
    RemoteError::new(
        io::ErrorKind::Other,
        ESTALE,
        format!(
            "the object changed since it was opened ({detail}): refusing to mix two \
             versions of it; open it again"
        ),
    )
}

/// Whether the error says the server answered a range request with the whole object.
fn is_range_ignored(e: &object_store::Error, status: Option<u16>) -> bool {
    let text = e.to_string();
    status == Some(200)
        || matches!(e, object_store::Error::NotSupported { .. }) && text.contains("Range")
        || text.contains("non-partial response")
}

fn is_suffix_refused(e: &object_store::Error, status: Option<u16>) -> bool {
    matches!(status, Some(400 | 416 | 501))
        || matches!(e, object_store::Error::NotSupported { .. }) && e.to_string().contains("suffix")
}

impl Inner {
    /// What the reader will read right after the open request when that request did not
    /// hold it, as (bytes before the tail, the file's first bytes):
    /// - the rest of an index larger than the first read (the reader then looks tensors
    ///   up in it: page by page, each a round trip, were it not fetched whole now), and
    ///   at least the 64 KiB the reader reads from the end;
    /// - the superblock, when the reader cannot take it from the index head's copy in what
    ///   it reads from the end (an index larger than `TAIL_HELD_MAX`, or a format 1.0 file).
    ///
    /// Nothing when the tail is the whole file, or ends in no committed trailer (an
    /// unfinished append: the reader looks for the last committed version itself); no
    /// index larger than [`INDEX_FETCH_MAX`].
    fn after_first_read(&self) -> (Option<Range<u64>>, Option<Range<u64>>) {
        let n = self.tail.len();
        if self.tail_start <= SUPERBLOCK_LEN as u64 || n < TRAILER_LEN {
            return (None, None);
        }
        let mut t = [0u8; TRAILER_LEN];
        self.tail.copy_to(n - TRAILER_LEN, &mut t);
        let word = |at: usize| u64::from_le_bytes(t[at..at + 8].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(t[20..24].try_into().expect("4 bytes"));
        let (offset, len) = (word(0), word(8));
        let committed = t[24..32] == END_MAGIC
            && crc32c::crc32c(&t[..20]) == crc
            && offset
                .checked_add(len)
                .and_then(|e| e.checked_add(TRAILER_LEN as u64))
                == Some(self.len);
        if !committed || len > INDEX_FETCH_MAX {
            return (None, None);
        }
        let start = offset.min(self.len.saturating_sub(TAIL_READ_BYTES));
        let index = (start < self.tail_start).then_some(start..self.tail_start);
        // What the reader's tail will hold (`held_tail`): the index head's copy of the
        // superblock must lie within it.
        let held = self.len - start.min(self.tail_start);
        let reader_tail = self.len - tail_read_len(self.len, held);
        let not_binary = offset >= self.tail_start && {
            let mut magic = [0u8; 8];
            let at = (offset - self.tail_start) as usize;
            at + 8 <= n && {
                self.tail.copy_to(at, &mut magic);
                magic != INDEX_MAGIC
            }
        };
        let head = (offset < reader_tail || not_binary).then_some(0..SUPERBLOCK_LEN as u64);
        (index, head)
    }

    fn err(&self, e: &object_store::Error, status: Option<u16>) -> RemoteError {
        classify(e, status, &self.label, &self.secrets)
    }

    fn check_same(&self, meta: &ObjectMeta) -> Result<(), RemoteError> {
        if meta.size != self.len {
            return Err(changed(&format!(
                "{} bytes now, {} when opened",
                meta.size, self.len
            )));
        }
        let (etag, modified) = meta_identity(meta);
        if let (Some(a), Some(b)) = (&self.etag, &etag) {
            if a != b {
                return Err(changed("its ETag differs"));
            }
        }
        if let (Some(a), Some(b)) = (&self.last_modified, &modified) {
            if a != b {
                return Err(changed("its modification time differs"));
            }
        }
        Ok(())
    }

    /// One ranged GET pinned to the opened object, its body checked for length; short
    /// bodies are retried.
    async fn fetch(&self, range: Range<u64>) -> Result<Body, RemoteError> {
        let want = range.end - range.start;
        let mut attempt = 0;
        loop {
            let slot = StatusSlot::default();
            let mut extensions = Extensions::new();
            extensions.insert(slot.clone());
            let options = GetOptions {
                range: Some(GetRange::Bounded(range.clone())),
                if_match: self.etag.clone(),
                extensions,
                ..Default::default()
            };
            let got = self.store.get_opts(&self.path, options).await;
            let result = got.map_err(|e| self.err(&e, slot.get()))?;
            self.check_same(&result.meta)?;
            let body = read_body(result)
                .await
                .map_err(|e| self.err(&e, slot.get()))?;
            self.counters
                .bytes
                .fetch_add(body.len() as u64, Ordering::Relaxed);
            if body.len() as u64 == want {
                return Ok(body);
            }
            attempt += 1;
            if attempt > SHORT_BODY_RETRIES {
                return Err(RemoteError::new(
                    io::ErrorKind::UnexpectedEof,
                    EIO,
                    format!(
                        "short body: {} of the {want} bytes asked for at {}..{} (after {} \
                         tries)",
                        body.len(),
                        range.start,
                        range.end,
                        attempt
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
    }
}

impl RemoteSource {
    /// Opens `url` with one request (see the module docs). `options` are store options
    /// (see [`RemoteSource::label`] for what names it in messages).
    pub fn open(url: &str, options: &[(String, String)]) -> Result<Arc<RemoteSource>> {
        let counters = Arc::new(Counters::default());
        let Built {
            store,
            path,
            label,
            secrets,
            tuning,
        } = build_store(url, options, &counters)?;
        let error_label = label.clone();
        // One hand-off to the runtime for the whole open (the index completion included).
        let inner = block_on(async move {
            let opened = open_tail(
                &*store,
                &path,
                tuning.open_tail_bytes,
                &label,
                &secrets,
                &counters,
            )
            .await?;
            let mut inner = Inner {
                label,
                store,
                path,
                len: opened.len,
                etag: opened.etag,
                last_modified: opened.last_modified,
                secrets,
                counters,
                tail_start: opened.tail_start,
                tail: opened.tail,
                head: Body::default(),
                plans: Mutex::new(Vec::new()),
            };
            // Both in one round trip, in parallel.
            let (index, head) = inner.after_first_read();
            let fetch = |r: Option<Range<u64>>| {
                let inner = &inner;
                async move {
                    match r {
                        Some(r) => inner.fetch(r).await.map(Some),
                        None => Ok(None),
                    }
                }
            };
            let (front, head) = futures::future::join(fetch(index.clone()), fetch(head)).await;
            if let (Some(range), Some(front)) = (index, front?) {
                inner.tail.prepend(front);
                inner.tail_start = range.start;
            }
            inner.head = head?.unwrap_or_default();
            Ok::<_, RemoteError>(inner)
        })
        .and_then(|r| r)
        .map_err(|e| e.into_error(&error_label))?;
        Ok(Arc::new(RemoteSource {
            inner: Arc::new(inner),
        }))
    }

    /// The URL as shown in messages (no credentials, no query).
    pub fn label(&self) -> &str {
        &self.inner.label
    }

    /// The ETag the object had when opened (every later request is pinned to it).
    pub fn etag(&self) -> Option<&str> {
        self.inner.etag.as_deref()
    }

    pub fn stats(&self) -> RemoteStats {
        RemoteStats {
            requests: self.inner.counters.requests.load(Ordering::Relaxed),
            bytes: self.inner.counters.bytes.load(Ordering::Relaxed),
        }
    }

    /// Copies what the open request already holds; returns the part of `range` before it.
    fn copy_from_tail(&self, offset: u64, buf: &mut [u8]) -> usize {
        let inner = &self.inner;
        let end = offset + buf.len() as u64;
        if end <= inner.tail_start || buf.is_empty() {
            return buf.len();
        }
        let from = offset.max(inner.tail_start);
        let skip = (from - offset) as usize;
        let at = (from - inner.tail_start) as usize;
        let n = buf.len() - skip;
        inner.tail.copy_to(at, &mut buf[skip..skip + n]);
        skip
    }

    /// Fetches `range` into `buf` now, in parallel parts when it is large.
    fn fetch_direct(&self, offset: u64, buf: &mut [u8]) -> Result<(), RemoteError> {
        let len = buf.len() as u64;
        let parts = split_parts(offset..offset + len, part_len(len));
        let inner = self.inner.clone();
        let bodies = block_on(async move {
            let mut set = tokio::task::JoinSet::new();
            for (i, r) in parts.into_iter().enumerate() {
                let inner = inner.clone();
                set.spawn(async move { (i, inner.fetch(r).await) });
            }
            let mut out = Vec::new();
            while let Some(joined) = set.join_next().await {
                match joined {
                    Ok((i, Ok(b))) => out.push((i, b)),
                    Ok((_, Err(e))) => return Err(e),
                    Err(_) => {
                        return Err(RemoteError::new(
                            io::ErrorKind::Other,
                            EIO,
                            "internal error: a remote read task failed",
                        ))
                    }
                }
            }
            out.sort_by_key(|(i, _)| *i);
            Ok(out)
        })??;
        let mut at = 0;
        for (_, body) in bodies {
            let n = body.len();
            body.copy_to(0, &mut buf[at..at + n]);
            at += body.len();
        }
        Ok(())
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), RemoteError> {
        if offset + buf.len() as u64 <= self.inner.head.len() as u64 {
            self.inner.head.copy_to(offset as usize, buf);
            return Ok(());
        }
        let before_tail = self.copy_from_tail(offset, buf);
        if before_tail == 0 {
            return Ok(());
        }
        let buf = &mut buf[..before_tail];
        let end = offset + buf.len() as u64;
        let overlaps = |p: &Plan| {
            let k = p.slots.partition_point(|s| s.range.end <= offset);
            p.slots.get(k).is_some_and(|s| s.range.start < end)
        };
        // The newest load that planned these bytes.
        let plan = self
            .inner
            .plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .rev()
            .find(|p| overlaps(p))
            .cloned();
        let Some(plan) = plan else {
            return self.fetch_direct(offset, buf);
        };
        // Walk the planned slots over the range; fetch what none covers.
        let mut at = offset;
        let first = plan.slots.partition_point(|s| s.range.end <= offset);
        for slot in &plan.slots[first..] {
            if slot.range.start >= end {
                break;
            }
            if slot.range.start > at {
                let gap = (slot.range.start - offset) as usize;
                self.fetch_direct(at, &mut buf[(at - offset) as usize..gap])?;
                at = slot.range.start;
            }
            let stop = slot.range.end.min(end);
            let piece = &mut buf[(at - offset) as usize..(stop - offset) as usize];
            self.read_slot(&plan, slot, at, piece)?;
            at = stop;
        }
        if at < end {
            self.fetch_direct(at, &mut buf[(at - offset) as usize..])?;
        }
        Ok(())
    }

    /// Copies `buf.len()` bytes at `offset` from a planned slot: waits for its fetch,
    /// or fetches it now if the planner has not started it yet.
    fn read_slot(
        &self,
        plan: &Arc<Plan>,
        slot: &Arc<Slot>,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), RemoteError> {
        let mut state = slot.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match &mut *state {
                SlotState::Planned => {
                    *state = SlotState::Loading;
                    drop(state);
                    plan.buffered.fetch_add(slot.wanted, Ordering::Relaxed);
                    let inner = self.inner.clone();
                    let range = slot.range.clone();
                    let result = block_on(async move { inner.fetch(range).await }).and_then(|r| r);
                    finish_slot(slot, result);
                    state = slot.state.lock().unwrap_or_else(|e| e.into_inner());
                }
                SlotState::Loading => {
                    state = slot.ready.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                SlotState::Ready { data, unread } => {
                    let at = (offset - slot.range.start) as usize;
                    data.copy_to(at, buf);
                    let n = buf.len() as u64;
                    *unread = unread.saturating_sub(n);
                    if *unread == 0 {
                        *state = SlotState::Consumed;
                        let _ =
                            plan.buffered
                                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                                    Some(b.saturating_sub(slot.wanted))
                                });
                        plan.released.notify_one();
                    }
                    drop(state);
                    let left = plan
                        .unread
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                            Some(u.saturating_sub(n))
                        })
                        .map_or(0, |before| before.saturating_sub(n));
                    if left == 0 {
                        self.retire(plan);
                    }
                    return Ok(());
                }
                SlotState::Consumed => {
                    // Read more often than announced (a tensor asked for twice).
                    drop(state);
                    return self.fetch_direct(offset, buf);
                }
                SlotState::Failed(e) => {
                    // The load fails with it: what else was fetched for it is dropped.
                    let e = e.clone();
                    drop(state);
                    self.retire(plan);
                    return Err(e);
                }
            }
        }
    }

    /// Stops a plan's fetching and drops it with what it holds.
    fn retire(&self, plan: &Arc<Plan>) {
        plan.retired.store(true, Ordering::Relaxed);
        plan.released.notify_one();
        self.inner
            .plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| !Arc::ptr_eq(p, plan));
    }
}

fn finish_slot(slot: &Slot, result: Result<Body, RemoteError>) {
    let mut state = slot.state.lock().unwrap_or_else(|e| e.into_inner());
    *state = match result {
        Ok(data) => SlotState::Ready {
            data,
            unread: slot.wanted,
        },
        Err(e) => SlotState::Failed(e),
    };
    slot.ready.notify_all();
}

/// Marks a slot failed if its fetch task ends without settling it (a panic, a runtime
/// shutting down), so that no reader waits for it forever.
struct SettleOnDrop(Arc<Slot>);

impl Drop for SettleOnDrop {
    fn drop(&mut self) {
        let loading = matches!(
            *self.0.state.lock().unwrap_or_else(|e| e.into_inner()),
            SlotState::Loading
        );
        if loading {
            finish_slot(
                &self.0,
                Err(RemoteError::new(
                    io::ErrorKind::Other,
                    EIO,
                    "internal error: a remote read task stopped before its answer",
                )),
            );
        }
    }
}

/// Bytes per GET for a read of `total` bytes. Up to [`PART_MAX`] it is one request (one
/// tensor = one request); beyond, parts enough to keep every connection busy.
fn part_len(total: u64) -> u64 {
    if total <= PART_MAX {
        return total.max(1);
    }
    (total / (2 * MAX_CONCURRENCY as u64)).clamp(PART_MIN, PART_MAX)
}

fn split_parts(range: Range<u64>, part: u64) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let mut at = range.start;
    while at < range.end {
        let end = (at + part).min(range.end);
        out.push(at..end);
        at = end;
    }
    out
}

/// Slots for the announced `ranges` (those not served by the open request): merged
/// across gaps up to [`MERGE_GAP`], split into parts of [`part_len`].
fn plan_slots(ranges: &[Range<u64>], tail_start: u64) -> Vec<Arc<Slot>> {
    let mut wanted: Vec<Range<u64>> = ranges
        .iter()
        .filter(|r| r.start < r.end && r.start < tail_start)
        .map(|r| r.start..r.end.min(tail_start))
        .collect();
    wanted.sort_by_key(|r| (r.start, r.end));
    let mut merged: Vec<Range<u64>> = Vec::new();
    for r in &wanted {
        match merged.last_mut() {
            Some(last) if r.start <= last.end.saturating_add(MERGE_GAP) => {
                last.end = last.end.max(r.end)
            }
            _ => merged.push(r.clone()),
        }
    }
    let total: u64 = merged.iter().map(|r| r.end - r.start).sum();
    let part = part_len(total);
    let mut slots: Vec<Arc<Slot>> = merged
        .into_iter()
        .flat_map(|r| split_parts(r, part))
        .map(|range| {
            Arc::new(Slot {
                range,
                wanted: 0,
                state: Mutex::new(SlotState::Planned),
                ready: Condvar::new(),
            })
        })
        .collect();
    // Announced bytes per slot (an extent may span several).
    let mut counts = vec![0u64; slots.len()];
    for r in &wanted {
        let first = slots.partition_point(|s| s.range.end <= r.start);
        for (k, s) in slots.iter().enumerate().skip(first) {
            if s.range.start >= r.end {
                break;
            }
            counts[k] += r.end.min(s.range.end) - r.start.max(s.range.start);
        }
    }
    for (slot, n) in slots.iter_mut().zip(counts) {
        Arc::get_mut(slot).expect("not shared yet").wanted = n;
    }
    slots
}

/// Fetches the planned slots in order, [`MAX_CONCURRENCY`] at a time, keeping at most
/// [`PREFETCH_WINDOW`] bytes ahead of the readers; stops when the plan retires.
async fn drive(inner: Arc<Inner>, plan: Arc<Plan>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENCY));
    for slot in &plan.slots {
        loop {
            if plan.retired.load(Ordering::Relaxed) {
                return;
            }
            let buffered = plan.buffered.load(Ordering::Relaxed);
            if buffered == 0 || buffered + slot.wanted <= PREFETCH_WINDOW {
                break;
            }
            // Readers release as they consume; the timeout re-checks for retirement.
            let _ = tokio::time::timeout(Duration::from_millis(50), plan.released.notified()).await;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        {
            let mut state = slot.state.lock().unwrap_or_else(|e| e.into_inner());
            if !matches!(*state, SlotState::Planned) {
                continue; // a reader got there first
            }
            *state = SlotState::Loading;
        }
        plan.buffered.fetch_add(slot.wanted, Ordering::Relaxed);
        let (inner, slot) = (inner.clone(), slot.clone());
        tokio::spawn(async move {
            // Readers wait on the slot: it is settled even if this task ends early.
            let guard = SettleOnDrop(slot.clone());
            let result = inner.fetch(slot.range.clone()).await;
            finish_slot(&slot, result);
            drop(guard);
            drop(permit);
        });
    }
}

/// The open request: a suffix GET, or the fallbacks the module docs describe.
async fn open_tail(
    store: &dyn ObjectStore,
    path: &StorePath,
    tail_bytes: u64,
    label: &str,
    secrets: &[String],
    counters: &Counters,
) -> Result<Opened, RemoteError> {
    let err = |e: &object_store::Error, status| classify(e, status, label, secrets);
    let get = |range: Option<GetRange>, if_match: Option<String>, head: bool| {
        let slot = StatusSlot::default();
        let mut extensions = Extensions::new();
        extensions.insert(slot.clone());
        let options = GetOptions {
            range,
            if_match,
            head,
            extensions,
            ..Default::default()
        };
        (slot, store.get_opts(path, options))
    };
    let count = |n: usize| counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
    let short = |got: usize, want: u64| {
        RemoteError::new(
            io::ErrorKind::UnexpectedEof,
            EIO,
            format!("short body on open: {got} of the {want} bytes announced"),
        )
    };

    let (slot, request) = get(Some(GetRange::Suffix(tail_bytes)), None, false);
    let first = request.await;
    let status = slot.get();
    let result = match first {
        Ok(r) => r,
        Err(e) if is_range_ignored(&e, status) => {
            // Ask for the whole object and use it only if it is small: its length comes
            // with the headers, before the body is read.
            let (slot, request) = get(None, None, false);
            let r = request.await.map_err(|e| err(&e, slot.get()))?;
            let len = r.meta.size;
            if len > WHOLE_BODY_MAX {
                return Err(RemoteError::new(
                    io::ErrorKind::Unsupported,
                    EINVAL,
                    format!(
                        "the server ignores range requests (it answered with the whole \
                         {len}-byte object): bpz reads only the parts of an archive it needs \
                         and refuses to download more than {WHOLE_BODY_MAX} bytes to open \
                         one; use a server that supports ranges, or download the file"
                    ),
                ));
            }
            let (etag, modified) = meta_identity(&r.meta);
            let body = read_body(r).await.map_err(|e| err(&e, slot.get()))?;
            count(body.len());
            if body.len() as u64 != len {
                return Err(short(body.len(), len));
            }
            return Ok(Opened {
                len,
                etag,
                last_modified: modified,
                tail_start: 0,
                tail: body,
            });
        }
        Err(e) if is_suffix_refused(&e, status) => {
            // HEAD for the length and ETag, then a bounded range pinned to that ETag.
            let (slot, request) = get(None, None, true);
            let head = request.await.map_err(|e| err(&e, slot.get()))?;
            let len = head.meta.size;
            let (etag, modified) = meta_identity(&head.meta);
            let start = len.saturating_sub(tail_bytes);
            if len == 0 {
                return Ok(Opened {
                    len,
                    etag,
                    last_modified: modified,
                    tail_start: 0,
                    tail: Body::default(),
                });
            }
            let (slot, request) = get(Some(GetRange::Bounded(start..len)), etag.clone(), false);
            let r = request.await.map_err(|e| err(&e, slot.get()))?;
            if r.meta.size != len {
                return Err(changed("its length changed between two requests"));
            }
            let body = read_body(r).await.map_err(|e| err(&e, slot.get()))?;
            count(body.len());
            if body.len() as u64 != len - start {
                return Err(short(body.len(), len - start));
            }
            return Ok(Opened {
                len,
                etag,
                last_modified: modified,
                tail_start: start,
                tail: body,
            });
        }
        Err(e) => return Err(err(&e, status)),
    };
    let len = result.meta.size;
    let range = result.range.clone();
    let (etag, modified) = meta_identity(&result.meta);
    let body = read_body(result).await.map_err(|e| err(&e, slot.get()))?;
    count(body.len());
    let want = range.end - range.start;
    if body.len() as u64 != want || range.end != len {
        return Err(short(body.len(), want));
    }
    Ok(Opened {
        len,
        etag,
        last_modified: modified,
        tail_start: range.start,
        tail: body,
    })
}

impl Source for RemoteSource {
    fn len(&self) -> u64 {
        self.inner.len
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn held_tail(&self) -> u64 {
        self.inner.len - self.inner.tail_start
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.inner.len);
        if end.is_none() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.read(offset, buf).map_err(RemoteError::into_io)
    }

    fn prefetch(&self, ranges: &[Range<u64>]) {
        let slots = plan_slots(ranges, self.inner.tail_start);
        if slots.is_empty() {
            return;
        }
        let unread = slots.iter().map(|s| s.wanted).sum();
        let plan = Arc::new(Plan {
            slots,
            buffered: AtomicU64::new(0),
            released: tokio::sync::Notify::new(),
            unread: AtomicU64::new(unread),
            retired: Default::default(),
        });
        let dropped = {
            let mut plans = self.inner.plans.lock().unwrap_or_else(|e| e.into_inner());
            plans.push(plan.clone());
            let excess = plans.len().saturating_sub(MAX_PLANS);
            plans.drain(..excess).collect::<Vec<_>>()
        };
        for old in dropped {
            old.retired.store(true, Ordering::Relaxed);
        }
        runtime().spawn(drive(self.inner.clone(), plan));
    }
}

/// Opens the archive at `url` (see [`RemoteSource::open`]); the source gives the request
/// counts.
pub fn open(url: &str, options: &[(String, String)]) -> Result<(Reader, Arc<RemoteSource>)> {
    let source = RemoteSource::open(url, options)?;
    let label = source.label().to_owned();
    let reader = Reader::from_source_labeled(source.clone(), label)?;
    Ok((reader, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_told_from_paths() {
        assert!(is_url("https://example.invalid/a.bpz"));
        assert!(is_url("s3://bucket/key.bpz"));
        assert!(!is_url("/tmp/a.bpz"));
        assert!(!is_url("a.bpz"));
        assert!(!is_url("C:\\x\\a.bpz"));
        assert!(!is_url("://x"));
    }

    #[test]
    fn labels_hide_credentials() {
        assert_eq!(
            redact_url("https://user:pw@host.invalid/a.bpz?X-Amz-Signature=abc#f"),
            "https://host.invalid/a.bpz?<redacted>"
        );
        assert_eq!(redact_url("s3://bucket/a.bpz"), "s3://bucket/a.bpz");
    }

    #[test]
    fn credentials_in_the_url_are_refused_without_being_shown() {
        let e = RemoteSource::open("https://me:hunter2secret@host.invalid/a.bpz", &[]).unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(!text.contains("hunter2secret"), "{text}");
        assert_eq!(e.kind(), "invalid_argument");
    }

    #[test]
    fn unknown_options_are_named_without_their_value() {
        let opts = [("no_such_option".to_string(), "s3cr3t-value".to_string())];
        let e = RemoteSource::open("s3://bucket/a.bpz", &opts).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("no_such_option"), "{text}");
        assert!(!text.contains("s3cr3t-value"), "{text}");
    }

    #[test]
    fn scrub_replaces_every_secret() {
        let s = scrub(
            "key AKIAXXXX secret abc/def+ghi",
            &["abc/def+ghi".into(), "AKIAXXXX".into()],
        );
        assert_eq!(s, "key <redacted> secret <redacted>");
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)]
    fn plans_merge_neighbours_and_split_large_ranges() {
        let slots = plan_slots(&[0..100, 150..300, (1 << 20)..(1 << 20) + 10], u64::MAX);
        let ranges: Vec<_> = slots.iter().map(|s| s.range.clone()).collect();
        assert_eq!(ranges, vec![0..300, (1 << 20)..(1 << 20) + 10]);
        assert_eq!(slots[0].wanted, 250);
        assert_eq!(plan_slots(&[0..(16 << 20)], u64::MAX).len(), 1);
        let big = plan_slots(&[0..(40 << 20)], u64::MAX);
        assert!(big.len() >= 2, "{}", big.len());
        assert_eq!(big.iter().map(|s| s.wanted).sum::<u64>(), 40 << 20);
        // What the open request holds is not planned again.
        assert!(plan_slots(&[1000..2000], 500).is_empty());
        assert_eq!(plan_slots(&[0..2000], 500)[0].range, 0..500);
    }

    #[test]
    fn bodies_read_across_frames() {
        let mut body = Body::default();
        for frame in [&b"abc"[..], b"", b"defg", b"h"] {
            body.push(Bytes::copy_from_slice(frame));
        }
        assert_eq!(body.len(), 8);
        for at in 0..8 {
            for n in 0..=8 - at {
                let mut out = vec![0u8; n];
                body.copy_to(at, &mut out);
                assert_eq!(out, &b"abcdefgh"[at..at + n]);
            }
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(
            parse_duration("x", "k", "500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            parse_duration("x", "k", "2s").unwrap(),
            Duration::from_secs(2)
        );
        assert!(parse_duration("x", "k", "soon").is_err());
    }
}
