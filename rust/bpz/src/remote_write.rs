//! Saving an archive straight to object storage (`s3://`, `gs://`, `az://`).
//!
//! The writer streams into an [`Upload`]: bytes gather into a part of `part_size`; a full
//! part is handed to the runtime as one multipart-upload request while the writer goes on,
//! with at most [`MAX_PARTS_IN_FLIGHT`] parts in flight (the writer waits for the oldest
//! beyond that), so memory stays bounded by `(MAX_PARTS_IN_FLIGHT + 1) * part_size`
//! whatever the archive's size. The object appears only when the upload is completed at
//! [`Upload::complete`]: until then the store shows the previous object, if any. A failed
//! or dropped upload is aborted (its parts deleted) and never completed. An archive no
//! larger than one part is sent as one plain PUT, which the store applies atomically too.
//!
//! Plain HTTP servers take no multipart uploads (and most take no PUT at all): `http(s)://`
//! URLs are refused for writing with a clear error before any request.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path as StorePath;
use object_store::{MultipartUpload, ObjectStore, PutMode, PutOptions, PutPayload};

use crate::error::{Error, Result};
use crate::remote::{block_on, build_store, classify, runtime, Built, Counters, RemoteError};
use crate::write::{Sink, Writer, WriterOptions};

/// Bytes per part at the start (S3 wants ≥ 5 MiB for every part but the last).
pub const PART_SIZE: usize = 8 << 20;
/// Parts uploading at once; the writer waits when this many are in flight.
pub const MAX_PARTS_IN_FLIGHT: usize = 4;
/// The part size doubles after every this many parts: S3 allows 10,000 parts, so a
/// fixed 8 MiB would cap an archive at 80 GiB; doubling keeps any realistic size
/// under the limit while small and medium saves keep small parts (and small memory).
const PARTS_PER_SIZE: usize = 2000;
/// How long a drop waits for the abort of an unfinished upload.
const ABORT_WAIT: Duration = Duration::from_secs(10);

type PartResult = std::result::Result<(), RemoteError>;

/// A multipart upload being written; see the module docs.
pub struct Upload {
    label: String,
    store: Arc<dyn ObjectStore>,
    path: StorePath,
    secrets: Vec<String>,
    counters: Arc<Counters>,
    overwrite: bool,
    part_size: usize,
    buf: Vec<u8>,
    /// Started at the first full part (a small archive is one PUT instead). In a
    /// mutex only to make the writer `Sync` (bindings share it); always used by `&mut`.
    upload: Mutex<Option<Box<dyn MultipartUpload>>>,
    parts: usize,
    in_flight: Mutex<VecDeque<Receiver<PartResult>>>,
    /// The first failure: every later write fails with it (nothing is completed).
    failed: Option<RemoteError>,
    done: bool,
    bytes: u64,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("url", &self.label)
            .field("bytes", &self.bytes)
            .field("parts", &self.parts)
            .finish()
    }
}

fn scheme_of(url: &str) -> Option<String> {
    url.split_once("://").map(|(s, _)| s.to_ascii_lowercase())
}

impl Upload {
    /// Prepares an upload to `url` (no request yet, except a HEAD when `overwrite` is
    /// false, to refuse an existing object before any work).
    pub fn new(url: &str, options: &[(String, String)], overwrite: bool) -> Result<Upload> {
        let label = crate::remote::redact_url(url);
        if matches!(scheme_of(url).as_deref(), Some("http" | "https")) {
            return Err(Error::InvalidArgument(format!(
                "{label}: cannot save to an http(s):// URL: plain HTTP servers take no \
                 streaming (multipart) uploads; save to s3://, gs:// or az:// instead, or \
                 save locally and upload the file"
            )));
        }
        let counters = Arc::new(Counters::default());
        let Built {
            store,
            path,
            label,
            secrets,
            ..
        } = build_store(url, options, &counters)?;
        let up = Upload {
            label,
            store,
            path,
            secrets,
            counters,
            overwrite,
            part_size: PART_SIZE,
            buf: Vec::new(),
            upload: Mutex::new(None),
            parts: 0,
            in_flight: Mutex::new(VecDeque::new()),
            failed: None,
            done: false,
            bytes: 0,
        };
        if !overwrite {
            let (store, path) = (up.store.clone(), up.path.clone());
            match block_on(async move { store.head(&path).await }).map_err(|e| up.fail_error(e))? {
                Ok(_) => return Err(up.exists_error()),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(up.error(&e).into_error(&up.label)),
            }
        }
        Ok(up)
    }

    /// The URL as shown in messages (no credentials).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// HTTP requests sent so far (retries included).
    pub fn requests(&self) -> u64 {
        self.counters
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn upload(&mut self) -> &mut Option<Box<dyn MultipartUpload>> {
        self.upload.get_mut().unwrap_or_else(|e| e.into_inner())
    }

    fn in_flight(&mut self) -> &mut VecDeque<Receiver<PartResult>> {
        self.in_flight.get_mut().unwrap_or_else(|e| e.into_inner())
    }

    fn error(&self, e: &object_store::Error) -> RemoteError {
        classify(e, None, &self.label, &self.secrets)
    }

    fn fail_error(&self, e: RemoteError) -> Error {
        e.into_error(&self.label)
    }

    fn exists_error(&self) -> Error {
        Error::Io {
            path: self.label.clone(),
            source: io::Error::from_raw_os_error(17), // EEXIST: FileExistsError in Python
        }
    }

    /// Sends the buffered part; waits first while too many are in flight.
    fn send_part(&mut self) -> std::result::Result<(), RemoteError> {
        while self.in_flight().len() >= MAX_PARTS_IN_FLIGHT {
            self.wait_oldest()?;
        }
        if self.upload().is_none() {
            let (store, path) = (self.store.clone(), self.path.clone());
            let started = block_on(async move { store.put_multipart(&path).await })?;
            let started = started.map_err(|e| self.error(&e))?;
            *self.upload() = Some(started);
        }
        self.parts += 1;
        let next_size = PART_SIZE << (self.parts / PARTS_PER_SIZE).min(6);
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(next_size));
        self.part_size = next_size;
        let request = self
            .upload()
            .as_mut()
            .expect("started above")
            .put_part(PutPayload::from(Bytes::from(data)));
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (label, secrets) = (self.label.clone(), self.secrets.clone());
        runtime().spawn(async move {
            let result = request
                .await
                .map_err(|e| classify(&e, None, &label, &secrets));
            let _ = tx.send(result);
        });
        self.in_flight().push_back(rx);
        Ok(())
    }

    fn wait_oldest(&mut self) -> std::result::Result<(), RemoteError> {
        let Some(rx) = self.in_flight().pop_front() else {
            return Ok(());
        };
        rx.recv().unwrap_or_else(|_| {
            Err(RemoteError::new(
                io::ErrorKind::Other,
                crate::remote::EIO,
                "internal error: an upload task stopped without an answer",
            ))
        })
    }

    fn checked(&self) -> io::Result<()> {
        match &self.failed {
            Some(e) => Err(e.clone().into_io()),
            None if self.done => Err(io::Error::other("the upload is already finished")),
            None => Ok(()),
        }
    }

    /// Sends what is left and completes the upload: the object appears now, whole.
    /// Returns the bytes uploaded. On failure the upload is aborted.
    pub fn complete(mut self) -> Result<u64> {
        self.checked().map_err(|e| Error::io(&self.label, e))?;
        let result = self.finish_inner();
        self.done = true;
        match result {
            Ok(()) => Ok(self.bytes),
            Err(e) => {
                self.abort_now();
                Err(e.into_error(&self.label))
            }
        }
    }

    fn finish_inner(&mut self) -> std::result::Result<(), RemoteError> {
        if self.upload().is_none() {
            let data = PutPayload::from(Bytes::from(std::mem::take(&mut self.buf)));
            let mode = if self.overwrite {
                PutMode::Overwrite
            } else {
                PutMode::Create
            };
            let (store, path) = (self.store.clone(), self.path.clone());
            let opts = PutOptions::from(mode);
            let put = block_on(async move { store.put_opts(&path, data, opts).await })?;
            return match put {
                Ok(_) => Ok(()),
                Err(object_store::Error::AlreadyExists { .. }) => Err(RemoteError::new(
                    io::ErrorKind::AlreadyExists,
                    17,
                    "an object already exists there (overwrite is off)",
                )),
                Err(e) => Err(self.error(&e)),
            };
        }
        if !self.buf.is_empty() {
            self.send_part()?;
        }
        while !self.in_flight().is_empty() {
            self.wait_oldest()?;
        }
        let mut upload = self.upload().take().expect("started");
        let done = block_on(async move {
            let r = upload.complete().await;
            (r, upload)
        })?;
        let (result, upload) = done;
        match result {
            Ok(_) => Ok(()),
            Err(e) => {
                *self.upload() = Some(upload);
                Err(self.error(&e))
            }
        }
    }

    /// Deletes the parts of an unfinished upload (best effort, bounded in time): the
    /// object itself was never touched.
    fn abort_now(&mut self) {
        // Parts still in flight would land after the abort: let them finish (or fail) first.
        while !self.in_flight().is_empty() {
            let _ = self.wait_oldest();
        }
        if let Some(mut upload) = self.upload().take() {
            let _ = block_on(async move {
                let _ = tokio::time::timeout(ABORT_WAIT, upload.abort()).await;
            });
        }
    }
}

impl Write for Upload {
    fn write(&mut self, mut bytes: &[u8]) -> io::Result<usize> {
        self.checked()?;
        let n = bytes.len();
        while !bytes.is_empty() {
            let room = self.part_size - self.buf.len();
            if self.buf.capacity() == 0 {
                self.buf.reserve_exact(self.part_size);
            }
            let take = room.min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() == self.part_size {
                if let Err(e) = self.send_part() {
                    self.failed = Some(e.clone());
                    return Err(e.into_io());
                }
            }
        }
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.checked()
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.done {
            self.abort_now();
        }
    }
}

impl Writer<io::Sink> {
    /// Starts an archive that will be uploaded to `url` (`s3://bucket/key`, `gs://...`,
    /// `az://...`) and appear there whole at [`finish`](Self::finish); options as for
    /// [`crate::remote::open`]. `opts.overwrite == false` refuses an existing object.
    /// Dropping the writer unfinished aborts the upload: the previous object stays.
    pub fn create_remote(
        url: &str,
        options: &[(String, String)],
        opts: WriterOptions,
    ) -> Result<Self> {
        opts.check()?;
        let upload = Upload::new(url, options, opts.overwrite)?;
        let label = upload.label().to_owned();
        Writer::start(Sink::Upload(upload), label, opts)
    }
}
