//! A "directory" of objects under one URL prefix (`s3://bucket/run1/`): what numbered
//! checkpoints and sharded checkpoints need beyond reading and writing one archive —
//! listing the objects (and sub-prefixes) directly under the prefix, looking one up,
//! reading a few bytes of its head or tail, deleting it.
//!
//! Names are single path segments (no `/`): a checkpoint's files sit directly under its
//! prefix, and a name can never reach outside it. One client serves every operation of a
//! [`RemoteDir`], so its connections are reused.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use object_store::path::{Path as StorePath, PathPart};
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStore};
use url::Url;

use crate::error::{Error, Result};
use crate::remote::{
    block_on, build_store_at, classify, invalid, Built, Counters, RemoteError, RemoteStats,
    StatusSlot, ENOENT, TASK_STATUS,
};

/// One object found under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its name within the prefix (one path segment).
    pub name: String,
    pub size: u64,
    pub etag: Option<String>,
    /// Seconds since the Unix epoch (0 when the store does not say).
    pub last_modified: i64,
}

/// What [`RemoteDir::list`] finds directly under the prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Objects, by name.
    pub objects: Vec<ObjectInfo>,
    /// Names of the sub-prefixes ("directories"), sorted.
    pub prefixes: Vec<String>,
}

/// Which bytes of an object [`RemoteDir::read`] fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// The first `n` bytes (fewer when the object is shorter).
    Head(u64),
    /// The last `n` bytes (the whole object when it is shorter).
    Tail(u64),
    /// Every byte; refused above `max` bytes (never an unbounded download).
    Whole { max: u64 },
}

/// Objects under one URL prefix; see the module docs.
pub struct RemoteDir {
    url: Url,
    label: String,
    store: Arc<dyn ObjectStore>,
    base: StorePath,
    secrets: Vec<String>,
    counters: Arc<Counters>,
    scheme: String,
}

impl std::fmt::Debug for RemoteDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteDir")
            .field("url", &self.label)
            .finish_non_exhaustive()
    }
}

/// Refuses a name that is not one plain path segment.
fn check_name(label: &str, name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\\')
        || name.chars().any(|c| c.is_control());
    if bad {
        return Err(invalid(
            label,
            format!("{name:?} is not a plain object name (one path segment, no '/')"),
        ));
    }
    Ok(())
}

impl RemoteDir {
    /// The objects under `url` (a bucket, or a prefix in it; a trailing `/` is optional),
    /// with store options as for [`crate::remote::open`]. Sends no request.
    pub fn open(url: &str, options: &[(String, String)]) -> Result<RemoteDir> {
        let label = crate::remote::redact_url(url);
        let mut parsed = Url::parse(url).map_err(|e| invalid(&label, e))?;
        // The URL of an object is the prefix's plus one segment: no trailing '/'.
        let trimmed = parsed.path().trim_end_matches('/').to_owned();
        parsed.set_path(&trimmed);
        let counters = Arc::new(Counters::default());
        let Built {
            store,
            path,
            label,
            secrets,
            ..
        } = build_store_at(parsed.as_str(), options, &counters, true)?;
        let scheme = parsed.scheme().to_ascii_lowercase();
        Ok(RemoteDir {
            url: parsed,
            label,
            store,
            base: path,
            secrets,
            counters,
            scheme,
        })
    }

    /// The prefix's URL as shown in messages (no credentials).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Requests sent and body bytes received by this directory's operations.
    pub fn stats(&self) -> RemoteStats {
        RemoteStats {
            requests: self.counters.requests.load(Ordering::Relaxed),
            bytes: self.counters.bytes.load(Ordering::Relaxed),
        }
    }

    /// The URL of the object `name` under the prefix (to open or save it).
    pub fn url(&self, name: &str) -> Result<String> {
        check_name(&self.label, name)?;
        let mut url = self.url.clone();
        url.path_segments_mut()
            .map_err(|_| invalid(&self.label, "this URL cannot hold object names"))?
            .pop_if_empty()
            .push(name);
        Ok(url.to_string())
    }

    /// The sub-prefix `name` as a directory of its own.
    pub fn child(&self, name: &str, options: &[(String, String)]) -> Result<RemoteDir> {
        RemoteDir::open(&self.url(name)?, options)
    }

    fn path(&self, name: &str) -> Result<StorePath> {
        check_name(&self.label, name)?;
        let part = PathPart::from(name);
        Ok(if self.base.as_ref().is_empty() {
            StorePath::from_iter([part])
        } else {
            self.base.child(part)
        })
    }

    fn name_label(&self, name: &str) -> String {
        format!("{}/{}", self.label, name)
    }

    fn err(&self, e: &object_store::Error, status: Option<u16>, name: Option<&str>) -> Error {
        let label = name.map_or_else(|| self.label.clone(), |n| self.name_label(n));
        classify(e, status, &label, &self.secrets).into_error(&label)
    }

    /// Runs one operation; `Ok(Err(NotFound))` is left to the caller, other store errors
    /// become typed errors (the response status, noted by the client, says 403 from 404).
    fn run_raw<T: Send + 'static>(
        &self,
        name: Option<&str>,
        future: impl std::future::Future<Output = object_store::Result<T>> + Send + 'static,
    ) -> Result<std::result::Result<T, (object_store::Error, Option<u16>)>> {
        let label = name.map_or_else(|| self.label.clone(), |n| self.name_label(n));
        let slot = StatusSlot::default();
        let task_slot = slot.clone();
        let got =
            block_on(TASK_STATUS.scope(task_slot, future)).map_err(|e| e.into_error(&label))?;
        Ok(got.map_err(|e| (e, slot.get())))
    }

    fn info(&self, meta: &ObjectMeta) -> Option<ObjectInfo> {
        let name = meta.location.filename()?.to_owned();
        Some(ObjectInfo {
            name,
            size: meta.size,
            etag: meta.e_tag.clone(),
            last_modified: meta.last_modified.timestamp(),
        })
    }

    /// The objects and sub-prefixes directly under the prefix (every page of the
    /// listing). An empty or missing prefix lists nothing. Plain HTTP servers cannot
    /// list: that is an `UnsupportedFeature` error naming the URL.
    pub fn list(&self) -> Result<Listing> {
        if matches!(self.scheme.as_str(), "http" | "https") {
            return Err(Error::UnsupportedFeature {
                path: self.label.clone(),
                detail: "an http(s) server cannot list the objects under a prefix; name the \
                         object (or use the s3://, gs:// or az:// URL of the same bucket)"
                    .into(),
            });
        }
        let (store, base) = (self.store.clone(), self.base.clone());
        let prefix = (!base.as_ref().is_empty()).then_some(base);
        let found = match self.run_raw(None, async move {
            store.list_with_delimiter(prefix.as_ref()).await
        })? {
            Ok(found) => found,
            // A listing finds no prefix as an empty one: its 404 is the bucket's.
            Err((object_store::Error::NotFound { .. }, _)) | Err((_, Some(404))) => {
                return Err(RemoteError::new(
                    io::ErrorKind::NotFound,
                    ENOENT,
                    format!("no such bucket or container (HTTP 404) at {}", self.label),
                )
                .into_error(&self.label))
            }
            Err((e, status)) => return Err(self.err(&e, status, None)),
        };
        let mut objects: Vec<ObjectInfo> =
            found.objects.iter().filter_map(|m| self.info(m)).collect();
        objects.sort_by(|a, b| a.name.cmp(&b.name));
        let mut prefixes: Vec<String> = found
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect();
        prefixes.sort();
        Ok(Listing { objects, prefixes })
    }

    /// The object `name`, or `None` when there is none.
    pub fn head(&self, name: &str) -> Result<Option<ObjectInfo>> {
        let (store, path) = (self.store.clone(), self.path(name)?);
        match self.run_raw(Some(name), async move { store.head(&path).await })? {
            Ok(meta) => Ok(self.info(&meta).map(|mut i| {
                i.name = name.to_owned();
                i
            })),
            Err((object_store::Error::NotFound { .. }, _)) => Ok(None),
            Err((e, status)) => Err(self.err(&e, status, Some(name))),
        }
    }

    /// Bytes of the object `name` (see [`Span`]) and the object's size. A missing object
    /// is a `NotFound` error.
    pub fn read(&self, name: &str, span: Span) -> Result<(Vec<u8>, u64)> {
        let (store, path) = (self.store.clone(), self.path(name)?);
        let range = match span {
            Span::Head(0) | Span::Tail(0) => {
                let size = self.head(name)?.map(|i| i.size).ok_or_else(|| {
                    let label = self.name_label(name);
                    RemoteError::new(
                        io::ErrorKind::NotFound,
                        ENOENT,
                        format!("no such object at {label}"),
                    )
                    .into_error(&label)
                })?;
                return Ok((Vec::new(), size));
            }
            Span::Head(n) => Some(GetRange::Bounded(0..n)),
            Span::Tail(n) => Some(GetRange::Suffix(n)),
            Span::Whole { .. } => None,
        };
        let max = match span {
            Span::Whole { max } => Some(max),
            _ => None,
        };
        let counters = self.counters.clone();
        let got = self.run_raw(Some(name), async move {
            let got = store
                .get_opts(
                    &path,
                    GetOptions {
                        range,
                        ..Default::default()
                    },
                )
                .await?;
            let size = got.meta.size;
            if let Some(max) = max {
                if size > max {
                    return Ok((None, size));
                }
            }
            let bytes = got.bytes().await?;
            counters
                .bytes
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            Ok((Some(bytes.to_vec()), size))
        })?;
        let (data, size) = match got {
            Ok(found) => found,
            // No range of an empty object is satisfiable: servers answer 416, or 200 with
            // the (empty) object, where the caller asked for "at most n bytes": none here.
            Err((_, Some(200 | 416))) if matches!(span, Span::Head(_) | Span::Tail(_)) => {
                match self.head(name)? {
                    Some(info) if info.size == 0 => (Some(Vec::new()), 0),
                    _ => {
                        return Err(invalid(
                            &self.name_label(name),
                            "the server refused or ignored a byte range of a non-empty object",
                        ))
                    }
                }
            }
            Err((e, status)) => return Err(self.err(&e, status, Some(name))),
        };
        match data {
            Some(data) => Ok((data, size)),
            None => Err(invalid(
                &self.name_label(name),
                format!(
                    "the object holds {size} bytes, more than the {} expected",
                    max.unwrap_or(0)
                ),
            )),
        }
    }

    /// Deletes the object `name`; a missing one is not an error.
    pub fn delete(&self, name: &str) -> Result<()> {
        let (store, path) = (self.store.clone(), self.path(name)?);
        match self.run_raw(Some(name), async move { store.delete(&path).await })? {
            Ok(()) | Err((object_store::Error::NotFound { .. }, _)) => Ok(()),
            Err((e, status)) => Err(self.err(&e, status, Some(name))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_segment() {
        for bad in ["", ".", "..", "a/b", "a\\b", "x\ny"] {
            assert!(check_name("s3://b/p", bad).is_err(), "{bad:?}");
        }
        assert!(check_name("s3://b/p", "checkpoint_1.5e3").is_ok());
    }

    #[test]
    fn object_urls_join_one_segment() {
        let opts = vec![
            ("region".to_owned(), "us-east-1".to_owned()),
            ("skip_signature".to_owned(), "true".to_owned()),
        ];
        for base in ["s3://bucket/run", "s3://bucket/run/", "s3://bucket/run//"] {
            let d = RemoteDir::open(base, &opts).unwrap();
            assert_eq!(d.url("ckpt_1").unwrap(), "s3://bucket/run/ckpt_1");
            assert_eq!(d.path("ckpt_1").unwrap().as_ref(), "run/ckpt_1");
        }
        let root = RemoteDir::open("s3://bucket", &opts).unwrap();
        assert_eq!(root.url("a b").unwrap(), "s3://bucket/a%20b");
        assert_eq!(root.path("a b").unwrap().as_ref(), "a b");
        let http = RemoteDir::open("http://127.0.0.1:9/data/", &[]).unwrap();
        assert!(matches!(http.list(), Err(Error::UnsupportedFeature { .. })));
    }
}
