//! New versions appended to an existing archive (spec §16.6), and compaction (§16.8).
//!
//! An append writes only past the end of the last committed version, under an exclusive
//! `flock` of the file: first an unfinished tail left by a killed append is cut off
//! (found by the reader's recovery, §16.7), then the new chunks — every chunk equal to
//! one of the previous version is referenced instead — and the index; those are made
//! durable, and only then the trailer that commits the version. A failed append cuts the
//! file back to where it started; if even that fails, the next open or append recovers.
//!
//! Fault injection for crash tests (off unless set): `BPZ_FAULT_APPEND_AFTER=N:error`
//! makes an append's writes fail (as on a full disk) once `N` bytes were written,
//! `BPZ_FAULT_APPEND_AFTER=N:abort` aborts the process there.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::binindex::{VersionRecord, REQUIRED_BINARY_INDEX};
use crate::error::{Error, Result};
use crate::format::{TensorInfo, SUPERBLOCK_LEN};
use crate::read::{Backend, Reader, VersionInfo, VersionSelector};
use crate::write::{
    Compression, Dedup, FormatVersion, Sink, Summary, TensorOptions, VersionPlan, Writer,
    WriterOptions,
};

/// The open end of an archive a version is being appended to. Dropped without
/// [`commit`](AppendFile::commit), it cuts the file back to where the append started.
pub(crate) struct AppendFile {
    out: BufWriter<File>,
    label: String,
    path: PathBuf,
    /// The end of the last committed version: where this append started.
    committed_end: u64,
    sync: bool,
    committed: bool,
    written: u64,
    fault: Option<Fault>,
}

#[derive(Clone, Copy)]
enum Fault {
    Error(u64),
    Abort(u64),
}

fn fault_from_env() -> Option<Fault> {
    let spec = std::env::var("BPZ_FAULT_APPEND_AFTER").ok()?;
    let (n, how) = spec.split_once(':')?;
    let n = n.parse().ok()?;
    match how {
        "error" => Some(Fault::Error(n)),
        "abort" => Some(Fault::Abort(n)),
        _ => None,
    }
}

impl AppendFile {
    pub(crate) fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Some(fault) = self.fault {
            let (Fault::Error(limit) | Fault::Abort(limit)) = fault;
            if self.written + bytes.len() as u64 > limit {
                let fits = limit.saturating_sub(self.written) as usize;
                self.out.write_all(&bytes[..fits])?;
                self.out.flush()?;
                if let Fault::Abort(_) = fault {
                    std::process::abort();
                }
                return Err(io::Error::other(
                    "no space left on device (injected by BPZ_FAULT_APPEND_AFTER)",
                ));
            }
        }
        self.written += bytes.len() as u64;
        self.out.write_all(bytes)
    }

    /// Flushes and (if the save syncs) fsyncs what was written.
    pub(crate) fn make_durable(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| Error::io(&self.label, e))?;
        if self.sync {
            self.out
                .get_ref()
                .sync_data()
                .map_err(|e| Error::io(&self.label, e))?;
        }
        Ok(())
    }

    /// Makes the trailer durable: the version is committed. Returns the path.
    pub(crate) fn commit(mut self) -> Result<PathBuf> {
        self.make_durable()?;
        self.committed = true;
        Ok(std::mem::take(&mut self.path))
    }
}

impl Drop for AppendFile {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: what stays past the committed end is ignored by readers and
            // cut by the next append (§16.7).
            let _ = self.out.flush();
            let file = self.out.get_ref();
            if file.set_len(self.committed_end).is_ok() && self.sync {
                let _ = file.sync_all();
            }
        }
    }
}

/// An archive file opened for a change, under an exclusive lock held until it is dropped.
struct Locked {
    file: File,
    label: String,
}

impl Locked {
    /// Opens and locks `path`; `None` if it does not exist. Retries if the file was
    /// replaced (by a compaction, or a 1.0 file's rewrite) while waiting for the lock.
    fn open(path: &Path) -> Result<Option<Locked>> {
        let label = path.display().to_string();
        loop {
            let file = match OpenOptions::new().read(true).write(true).open(path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(Error::io(&label, e)),
            };
            let meta = file.metadata().map_err(|e| Error::io(&label, e))?;
            if !meta.is_file() {
                return Err(Error::InvalidArgument(format!(
                    "{label}: not a regular file; only an archive file can be appended to"
                )));
            }
            lock(&file).map_err(|e| Error::io(&label, e))?;
            if still_named(&file, path) {
                return Ok(Some(Locked { file, label }));
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn lock(file: &File) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    loop {
        // SAFETY: flock on a descriptor this function borrows; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Elsewhere appenders are not locked against each other (one appender at a time).
#[cfg(not(target_os = "linux"))]
fn lock(_file: &File) -> io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn still_named(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

#[cfg(not(unix))]
fn still_named(_file: &File, _path: &Path) -> bool {
    true
}

/// Options for rewriting stored tensors as they are: raw stays raw, chunked stays chunked
/// with its filter.
fn same_storage(t: &TensorInfo) -> TensorOptions {
    if t.is_raw() {
        TensorOptions {
            compression: Some(Compression::None),
            ..TensorOptions::default()
        }
    } else {
        TensorOptions {
            compression: Some(Compression::Zstd),
            filter: Some(t.filter),
            level: None,
        }
    }
}

/// Adds every tensor of `r`'s version to `w` (decoded, one at a time, and stored as it
/// was), with its tree and metadata.
fn copy_version<W: Write>(w: &mut Writer<W>, r: &Reader) -> Result<()> {
    let tensors = r.tensors()?;
    w.reserve(tensors.len());
    for t in tensors {
        let data = r.read(&t.name)?;
        w.add_tensor_with(&t.name, t.dtype, &t.shape, &data, &same_storage(t))?;
    }
    w.set_tree_json_verbatim(r.tree_json()?.to_owned())?;
    w.set_metadata_json_verbatim(r.metadata_json()?.to_owned())?;
    Ok(())
}

impl Writer<io::Sink> {
    /// Starts a new version of the archive at `path` (spec §16.6), finished (committed)
    /// by [`finish`](Writer::finish). A missing file is created with version 1; a 1.0
    /// file is first rewritten as a 1.1 file of one version (replaced atomically, like a
    /// save). Chunks equal to the previous version's are referenced, not stored again
    /// ([`Summary::chunks_shared`]). The file keeps its alignment; `opts.format` and
    /// `opts.overwrite` do not apply. Other appenders wait for this one (an exclusive
    /// lock until the writer is finished or dropped); readers are never blocked and see
    /// the previous latest version until the new one is committed. Dropped unfinished,
    /// or failing, the writer cuts the file back to its last committed version.
    pub fn append(path: impl AsRef<Path>, opts: WriterOptions) -> Result<Self> {
        let path = path.as_ref();
        opts.check()?;
        let opts = WriterOptions {
            format: FormatVersion::V1_1,
            ..opts
        };
        let missing = || {
            // Created as version 1; a file that appears meanwhile is not replaced.
            let create = WriterOptions {
                overwrite: false,
                ..opts.clone()
            };
            Writer::create(path, create)
        };
        let Some(mut locked) = Locked::open(path)? else {
            return missing();
        };
        let mut reader = Reader::open_version(path, Backend::Pread, VersionSelector::Latest)?;
        if reader.superblock().required_features & REQUIRED_BINARY_INDEX == 0 {
            upgrade(path, &reader, &opts)?;
            drop((reader, locked));
            let Some(relocked) = Locked::open(path)? else {
                return missing();
            };
            locked = relocked;
            reader = Reader::open_version(path, Backend::Pread, VersionSelector::Latest)?;
        }
        let label = locked.label.clone();
        let committed_end = match reader.recovered() {
            Some(rec) => rec.committed_end,
            None => reader.file_len(),
        };
        let mut superblock = [0u8; SUPERBLOCK_LEN];
        {
            use std::io::Read;
            let f = &mut locked.file;
            f.seek(SeekFrom::Start(0))
                .and_then(|_| f.read_exact(&mut superblock))
                .map_err(|e| Error::io(&label, e))?;
        }
        let versions = reader.versions();
        let latest = reader.version_info();
        let plan = VersionPlan {
            number: latest.number + 1,
            data_start: committed_end,
            previous: versions
                .iter()
                .map(|v| VersionRecord {
                    version: v.number,
                    time_ns: v.time_ns,
                    data_start: v.data_start,
                    index_offset: v.index_offset,
                    index_length: v.index_length,
                    index_crc: v.index_crc,
                    reserved: 0,
                })
                .collect(),
        };
        let dedup = Dedup::of(reader.tensors()?.to_vec());
        let opts = WriterOptions {
            alignment: reader.superblock().alignment,
            ..opts
        };
        drop(reader);
        let file = locked.file;
        // An unfinished append's bytes go first (§16.6 step 2).
        if file.metadata().map_err(|e| Error::io(&label, e))?.len() != committed_end {
            file.set_len(committed_end)
                .and_then(|()| file.sync_all())
                .map_err(|e| Error::io(&label, e))?;
        }
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.seek(SeekFrom::Start(committed_end))
            .map_err(|e| Error::io(&label, e))?;
        let sink = Sink::Append(AppendFile {
            out,
            label: label.clone(),
            path: path.to_path_buf(),
            committed_end,
            sync: opts.sync,
            committed: false,
            written: 0,
            fault: fault_from_env(),
        });
        Ok(Writer::resume(
            sink,
            label,
            opts,
            committed_end,
            superblock,
            plan,
            Some(Arc::new(dedup)),
        ))
    }
}

/// Rewrites the 1.0 archive `path` (open in `r`) as a 1.1 archive of one version,
/// replacing it atomically.
fn upgrade(path: &Path, r: &Reader, opts: &WriterOptions) -> Result<()> {
    let mut w = Writer::create(
        path,
        WriterOptions {
            alignment: r.superblock().alignment,
            overwrite: true,
            // A 1.0 file does not say when it was written.
            time_ns: Some(0),
            ..opts.clone()
        },
    )?;
    copy_version(&mut w, r)?;
    w.finish().map(drop)
}

/// Rewrites the archive at `path` keeping only its last `keep_last` versions (spec
/// §16.8): each keeps its number, time, tree and metadata; chunks equal to the previous
/// kept version's are stored once. The new file replaces the old one atomically, as a
/// save does, so a failed compaction leaves the old file. Appenders wait for it (the
/// same lock as [`Writer::append`]). Returns the summary of the latest version, with
/// the new file's size.
pub fn compact(path: impl AsRef<Path>, keep_last: usize, opts: WriterOptions) -> Result<Summary> {
    if keep_last == 0 {
        return Err(Error::InvalidArgument(
            "keep_last must be at least 1 (compaction keeps the latest version)".into(),
        ));
    }
    compact_to(path, Keep::Last(keep_last), opts)
}

/// Which versions a compaction keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keep {
    /// The last `n` versions.
    Last(usize),
    /// These version numbers, and every version newer than the newest of them: a caller
    /// that chose them from an earlier look at the file never drops a version another
    /// process appended since. Numbers not in the file are ignored.
    Versions(Vec<u64>),
}

/// [`compact`] with any [`Keep`] rule; the versions are chosen under the append lock.
pub fn compact_to(path: impl AsRef<Path>, keep: Keep, opts: WriterOptions) -> Result<Summary> {
    let path = path.as_ref();
    opts.check()?;
    let label = path.display().to_string();
    let _locked =
        Locked::open(path)?.ok_or_else(|| Error::io(&label, io::ErrorKind::NotFound.into()))?;
    let reader = Reader::open_version(path, Backend::Pread, VersionSelector::Latest)?;
    let versions = reader.versions().to_vec();
    let kept: Vec<VersionInfo> = match &keep {
        Keep::Last(n) => versions[versions.len().saturating_sub(*n)..].to_vec(),
        Keep::Versions(numbers) => {
            let newest_named = numbers.iter().copied().max().unwrap_or(0);
            versions
                .iter()
                .filter(|v| numbers.contains(&v.number) || v.number > newest_named)
                .cloned()
                .collect()
        }
    };
    if kept.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{label}: compaction would keep no version (the archive holds versions {})",
            versions
                .iter()
                .map(|v| v.number.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let kept = &kept[..];
    let opts = WriterOptions {
        format: FormatVersion::V1_1,
        alignment: reader.superblock().alignment,
        overwrite: true,
        time_ns: Some(kept[0].time_ns),
        ..opts
    };
    let mut w = Writer::create(path, opts)?;
    let mut summary = None;
    for (k, v) in kept.iter().enumerate() {
        let r = reader.at_version(VersionSelector::Number(v.number))?;
        if k == 0 {
            w.set_version_number(v.number);
        }
        copy_version(&mut w, &r)?;
        let (s, record, tensors) = w.seal()?;
        summary = Some(s);
        if let Some(next) = kept.get(k + 1) {
            let dedup = Dedup::of(tensors);
            w.next_version(
                record,
                next.number,
                Some(next.time_ns),
                Some(Arc::new(dedup)),
            );
        }
    }
    let summary = summary.expect("at least one version is kept");
    let path = w.commit_sealed()?;
    Ok(Summary {
        path: Some(path),
        ..summary
    })
}
