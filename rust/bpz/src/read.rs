//! Reader: validates superblock, trailer and index on open (O(index)), then
//! reads any tensor or row range by touching only the chunks that overlap it.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;
use rayon::prelude::*;
use serde_json::Value;

use crate::alloc;
pub use crate::alloc::{
    memory_available, try_zeroed_vec, Zeroed, MEMORY_CHECK_MIN, MEMORY_CHECK_VAR,
};
use crate::binindex::REQUIRED_BINARY_INDEX;
use crate::binindex_read::{self, BinIndex, Ctx, Tail};
pub use crate::binindex_read::{Recovery, VersionInfo, VersionSelector};
use crate::codec;
use crate::error::{Error, Result, Version};
use crate::format::*;
use crate::index::{parse_index, Index};

/// One read of [`Reader::read_rows_many_into`]: rows `rows` of tensor `name` into `out`
/// (exactly their byte size).
#[derive(Debug)]
pub struct RowsRead<'a> {
    pub name: &'a str,
    pub rows: Range<u64>,
    pub out: &'a mut [u8],
}

/// Bytes `within` of chunk `i` of a tensor, decoded into a piece of the caller's buffer.
type ChunkJob<'t, 'o> = (&'t TensorInfo, usize, Range<u64>, &'o mut [u8]);

/// Random-access bytes an archive is read from.
pub trait Source: Send + Sync {
    fn len(&self) -> u64;
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// The whole archive, if the source is memory that cannot fault (a buffer, never a
    /// memory map of a file: a map faults with SIGBUS when the file is truncated).
    fn as_slice(&self) -> Option<&[u8]> {
        None
    }
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The length now, if it can change after [`len`](Self::len) was taken (a file).
    fn current_len(&self) -> Option<u64> {
        None
    }
    /// A hint: the reader is about to read these byte ranges, each once, from several
    /// threads. A remote source fetches them together, ahead of the reads.
    fn prefetch(&self, _ranges: &[Range<u64>]) {}
    /// Whether each read is a round trip to another machine (an object store, HTTP): then
    /// opening reads the file's tail first and, for a 1.1 archive whose tail holds the
    /// index head, takes the superblock from its copy there (one read instead of two).
    fn is_remote(&self) -> bool {
        false
    }
    /// Bytes at the end that the source already holds in memory (a remote source's first
    /// read): opening reads that much of the end, up to a bound, instead of 64 KiB, so that
    /// a larger index head is found there without another round trip.
    fn held_tail(&self) -> u64 {
        0
    }
    /// Fills `bufs`, one after the other, with the bytes from `offset` on: a scattered read,
    /// in one system call where the source can.
    fn read_exact_vectored_at(&self, mut offset: u64, bufs: &mut [&mut [u8]]) -> io::Result<()> {
        for buf in bufs {
            self.read_exact_at(offset, buf)?;
            offset += buf.len() as u64;
        }
        Ok(())
    }
}

impl Source for Vec<u8> {
    fn len(&self) -> u64 {
        (**self).len() as u64
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        slice_read(self, offset, buf)
    }
    fn as_slice(&self) -> Option<&[u8]> {
        Some(self)
    }
}

fn slice_read(data: &[u8], offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
    let src = start
        .checked_add(buf.len())
        .and_then(|end| data.get(start..end))
        .ok_or(io::ErrorKind::UnexpectedEof)?;
    buf.copy_from_slice(src);
    Ok(())
}

/// Positioned reads on a file (for network filesystems, or to avoid maps).
pub struct FileSource {
    file: File,
    len: u64,
}

impl FileSource {
    pub fn new(file: File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(FileSource { file, len })
    }
}

impl Source for FileSource {
    fn len(&self) -> u64 {
        self.len
    }
    fn current_len(&self) -> Option<u64> {
        self.file.metadata().ok().map(|m| m.len())
    }
    #[cfg(unix)]
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset)
    }
    #[cfg(target_os = "linux")]
    fn read_exact_vectored_at(&self, mut offset: u64, bufs: &mut [&mut [u8]]) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        /// The most buffers one `preadv` takes (IOV_MAX on Linux).
        const IOV_MAX: usize = 1024;
        let mut iov: Vec<libc::iovec> = bufs
            .iter_mut()
            .filter(|b| !b.is_empty())
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let mut first = 0;
        while first < iov.len() {
            let batch = &iov[first..iov.len().min(first + IOV_MAX)];
            let at = libc::off_t::try_from(offset)
                .map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            // SAFETY: each iovec describes (the unfilled rest of) one of `bufs`, which this
            // call borrows mutably; the kernel writes only within them.
            let got = unsafe {
                libc::preadv(
                    self.file.as_raw_fd(),
                    batch.as_ptr(),
                    batch.len() as libc::c_int,
                    at,
                )
            };
            if got < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if got == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            offset += got as u64;
            // Skip the buffers filled; a short read leaves one partly filled.
            let mut got = got as usize;
            while got > 0 {
                let v = &mut iov[first];
                if got >= v.iov_len {
                    got -= v.iov_len;
                    first += 1;
                } else {
                    // SAFETY: still within the same buffer (got < its remaining length).
                    v.iov_base = unsafe { v.iov_base.cast::<u8>().add(got) }.cast();
                    v.iov_len -= got;
                    got = 0;
                }
            }
        }
        Ok(())
    }
    #[cfg(windows)]
    fn read_exact_at(&self, mut offset: u64, mut buf: &mut [u8]) -> io::Result<()> {
        use std::os::windows::fs::FileExt;
        while !buf.is_empty() {
            match self.file.seek_read(buf, offset)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
            }
        }
        Ok(())
    }
}

fn is_a_directory() -> io::Error {
    #[cfg(unix)]
    return io::Error::from_raw_os_error(21); // EISDIR on Linux and the BSDs
    #[cfg(not(unix))]
    return io::Error::new(io::ErrorKind::Other, "is a directory");
}

/// How [`Reader::open_with`] accesses the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// Memory-map the file: raw tensors are zero-copy views.
    #[default]
    Mmap,
    /// `pread` only what is asked for.
    Pread,
}

/// Zero-copy bytes of a raw tensor ([`Reader::view`]). It shares the archive's map (or
/// its bytes in memory), so it stays valid after the [`Reader`] is dropped: a binding can
/// hand it out as an array that keeps the map alive.
#[derive(Clone)]
pub struct View {
    owner: ViewOwner,
    range: Range<usize>,
}

#[derive(Clone)]
enum ViewOwner {
    Map(Arc<Mmap>),
    /// A source whose [`Source::as_slice`] is `Some`.
    Memory(Arc<dyn Source>),
}

impl View {
    /// The bytes' position in the file.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// The shared map the bytes are in (`None` for an archive in memory).
    pub fn map(&self) -> Option<&Arc<Mmap>> {
        match &self.owner {
            ViewOwner::Map(map) => Some(map),
            ViewOwner::Memory(_) => None,
        }
    }
}

impl std::ops::Deref for View {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let all: &[u8] = match &self.owner {
            ViewOwner::Map(map) => map,
            ViewOwner::Memory(source) => source
                .as_slice()
                .expect("a view is only made of a source in memory"),
        };
        &all[self.range.clone()]
    }
}

impl AsRef<[u8]> for View {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("range", &self.range)
            .field("mapped", &self.map().is_some())
            .finish()
    }
}

impl PartialEq<&[u8]> for View {
    fn eq(&self, other: &&[u8]) -> bool {
        **self == **other
    }
}

/// An open archive — one version of it. Cheap to share between threads (`&Reader` is `Sync`).
pub struct Reader {
    /// Where every copying read and every check reads from: positioned reads of the file
    /// with either backend, so that a file truncated under an open archive gives
    /// [`Error::Truncated`], never SIGBUS. (They are also faster than copying from the map,
    /// which faults on both sides.)
    source: Arc<dyn Source>,
    /// Only for zero-copy views ([`Reader::view`], [`Reader::mapping`]).
    map: Option<Arc<Mmap>>,
    path: String,
    superblock: Superblock,
    /// The opened version's trailer.
    trailer: Trailer,
    catalog: Catalog,
    /// Every version of the file, oldest first.
    versions: Vec<VersionInfo>,
    /// The opened one's place in `versions`.
    selected: usize,
    recovered: Option<Recovery>,
    parallel: bool,
}

/// The opened version's index: a 1.0 JSON index, validated whole on open, or a 1.1
/// binary index, read as it is used.
enum Catalog {
    Json(Index),
    Binary(Box<BinIndex>),
}

/// What [`read_structure`] found.
struct Structure {
    superblock: Superblock,
    trailer: Trailer,
    catalog: Catalog,
    versions: Vec<VersionInfo>,
    selected: usize,
    recovered: Option<Recovery>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("path", &self.path)
            .field("version", &self.version_number())
            .field("tensors", &self.tensor_count())
            .finish()
    }
}

impl Reader {
    /// Opens the latest version of `path` with the mmap backend.
    pub fn open(path: impl AsRef<Path>) -> Result<Reader> {
        Reader::open_with(path, Backend::Mmap)
    }

    /// Opens the latest version of `path`.
    pub fn open_with(path: impl AsRef<Path>, backend: Backend) -> Result<Reader> {
        Reader::open_version(path, backend, VersionSelector::Latest)
    }

    /// Opens version `which` of `path` (a version not in the file is
    /// [`Error::InvalidArgument`] naming the versions present).
    pub fn open_version(
        path: impl AsRef<Path>,
        backend: Backend,
        which: VersionSelector,
    ) -> Result<Reader> {
        let label = path.as_ref().display().to_string();
        let file = File::open(path.as_ref()).map_err(|e| Error::io(&label, e))?;
        let meta = file.metadata().map_err(|e| Error::io(&label, e))?;
        if meta.is_dir() {
            return Err(Error::io(&label, is_a_directory()));
        }
        let src = Arc::new(FileSource {
            file,
            len: meta.len(),
        });
        // The structure is read with positioned reads, not through the map: touching the
        // map would fault its pages in, and every open would pay for that again when the
        // map is torn down.
        let source: Arc<dyn Source> = src.clone();
        let structure = read_structure(&source, &label, which)?;
        let mut r = Reader::assemble(source, label, structure);
        if backend == Backend::Mmap {
            let len = usize::try_from(meta.len())
                .map_err(|_| Error::io(&r.path, io::ErrorKind::OutOfMemory.into()))?;
            // SAFETY: the map is read-only and only zero-copy views read it. bpz writers
            // never modify committed bytes (a save renames a new file over the old one, an
            // append writes past the end), so the bytes a view shows are stable; a third
            // party truncating the file makes a view fault (documented). The length is
            // known: saves memmap2 another stat.
            let map = unsafe { memmap2::MmapOptions::new().len(len).map(&src.file) }
                .map_err(|e| Error::io(&r.path, e))?;
            r.map = Some(Arc::new(map));
        }
        Ok(r)
    }

    /// Opens an archive held in memory (its latest version).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Reader> {
        Reader::from_source_labeled(Arc::new(bytes), "<memory>".into())
    }

    /// Opens the latest version of an archive from any [`Source`]; `label` names it in errors.
    pub fn from_source_labeled(source: Arc<dyn Source>, label: String) -> Result<Reader> {
        Reader::from_source_version(source, label, VersionSelector::Latest)
    }

    /// Opens version `which` of an archive from any [`Source`].
    pub fn from_source_version(
        source: Arc<dyn Source>,
        label: String,
        which: VersionSelector,
    ) -> Result<Reader> {
        let structure = read_structure(&source, &label, which)?;
        Ok(Reader::assemble(source, label, structure))
    }

    /// Another version of the same file, as this reader saw it when it was opened (the
    /// same versions, even if the file was appended to since), sharing its source and map.
    pub fn at_version(&self, which: VersionSelector) -> Result<Reader> {
        let k = which.pick(&self.path, &self.versions)?;
        let catalog = match &self.catalog {
            Catalog::Binary(ix) => {
                Catalog::Binary(Box::new(ix.sibling(&self.versions, k, false)?))
            }
            Catalog::Json(_) => {
                // One version: this one, parsed again.
                let again = read_structure(&self.source, &self.path, VersionSelector::Latest)?;
                again.catalog
            }
        };
        let trailer = match &catalog {
            Catalog::Binary(ix) => ix.trailer(),
            Catalog::Json(_) => self.trailer,
        };
        Ok(Reader {
            source: self.source.clone(),
            map: self.map.clone(),
            path: self.path.clone(),
            superblock: self.superblock,
            trailer,
            catalog,
            versions: self.versions.clone(),
            selected: k,
            recovered: self.recovered,
            parallel: self.parallel,
        })
    }

    fn assemble(source: Arc<dyn Source>, path: String, s: Structure) -> Reader {
        Reader {
            source,
            map: None,
            path,
            superblock: s.superblock,
            trailer: s.trailer,
            catalog: s.catalog,
            versions: s.versions,
            selected: s.selected,
            recovered: s.recovered,
            parallel: true,
        }
    }

    /// Decode chunks on all cores (default) or on the calling thread only.
    pub fn set_parallel(&mut self, parallel: bool) {
        self.parallel = parallel;
    }

    pub fn is_parallel(&self) -> bool {
        self.parallel
    }

    pub fn path(&self) -> &str {
        &self.path
    }
    /// The format version in the superblock (1.0, 1.1, …), not a version of the contents:
    /// see [`version_number`](Self::version_number).
    pub fn version(&self) -> Version {
        self.superblock.version
    }
    pub fn superblock(&self) -> &Superblock {
        &self.superblock
    }
    /// The opened version's trailer (where its index is).
    pub fn trailer(&self) -> &Trailer {
        &self.trailer
    }
    /// The file's length when it was opened (an unfinished append included).
    pub fn file_len(&self) -> u64 {
        self.source.len()
    }
    /// Every version of the file, oldest first (a 1.0 file has one, number 1).
    pub fn versions(&self) -> &[VersionInfo] {
        &self.versions
    }
    /// The number of the version this reader reads.
    pub fn version_number(&self) -> u64 {
        self.versions[self.selected].number
    }
    /// The version this reader reads.
    pub fn version_info(&self) -> &VersionInfo {
        &self.versions[self.selected]
    }
    /// `Some` if the file ends in an unfinished append (a writer was killed, or is writing
    /// one now) that opening skipped: the file is not intact, though every committed
    /// version reads correctly. The next append truncates it.
    pub fn recovered(&self) -> Option<Recovery> {
        self.recovered
    }
    /// How many tensors the opened version has (known on open, without a listing).
    pub fn tensor_count(&self) -> usize {
        match &self.catalog {
            Catalog::Json(ix) => ix.tensors.len(),
            Catalog::Binary(ix) => ix.tensor_count(),
        }
    }
    /// Every tensor, in the order they were saved. A 1.1 index is read and checked whole on
    /// the first call (the spec's listing rules), which can fail on a damaged file.
    pub fn tensors(&self) -> Result<&[TensorInfo]> {
        match &self.catalog {
            Catalog::Json(ix) => Ok(&ix.tensors),
            Catalog::Binary(ix) => ix.tensors(),
        }
    }
    /// The pytree skeleton (spec, "Tree") exactly as stored: a JSON object, or `null`.
    /// (In a 1.1 file it is read and checked on the first call.)
    pub fn tree_json(&self) -> Result<&str> {
        match &self.catalog {
            Catalog::Json(ix) => Ok(&ix.tree_json),
            Catalog::Binary(ix) => ix.tree_json(),
        }
    }
    /// The opened version's user metadata exactly as stored (any JSON value; `null` if
    /// none).
    pub fn metadata_json(&self) -> Result<&str> {
        match &self.catalog {
            Catalog::Json(ix) => Ok(&ix.metadata_json),
            Catalog::Binary(ix) => ix.metadata_json(),
        }
    }
    /// The metadata of version `number` of the file, without opening it as a reader.
    pub fn version_metadata_json(&self, number: u64) -> Result<String> {
        let k = VersionSelector::Number(number).pick(&self.path, &self.versions)?;
        if k == self.selected {
            return self.metadata_json().map(str::to_owned);
        }
        match &self.catalog {
            Catalog::Binary(ix) => Ok(ix
                .sibling(&self.versions, k, false)?
                .metadata_json()?
                .to_owned()),
            Catalog::Json(_) => unreachable!("a 1.0 file has one version"),
        }
    }
    /// The pytree skeleton as a JSON value (built on each call).
    pub fn tree(&self) -> Result<Value> {
        self.json_value(self.tree_json()?)
    }
    /// The user metadata as a JSON value (built on each call).
    pub fn metadata(&self) -> Result<Value> {
        self.json_value(self.metadata_json()?)
    }
    fn json_value(&self, text: &str) -> Result<Value> {
        // The text passed the index checks; this can only fail for want of memory.
        let mut de = serde_json::Deserializer::from_str(text);
        de.disable_recursion_limit();
        serde::Deserialize::deserialize(&mut de)
            .map_err(|e| Error::invalid_index(&self.path, e.to_string()))
    }
    /// Who wrote the opened version, if the index says.
    pub fn writer(&self) -> Result<Option<&WriterInfo>> {
        match &self.catalog {
            Catalog::Json(ix) => Ok(ix.writer.as_ref()),
            Catalog::Binary(ix) => ix.writer(),
        }
    }
    /// The memory map, for bindings that hand out views which must outlive the reader.
    pub fn mapping(&self) -> Option<&Arc<Mmap>> {
        self.map.as_ref()
    }

    fn not_found(&self, name: &str) -> Error {
        Error::TensorNotFound {
            path: self.path.clone(),
            name: name.into(),
        }
    }

    /// The tensor `name`. In a 1.1 file, a binary search of the index that reads
    /// O(log n) small blocks of it, each record on the way checked.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        match &self.catalog {
            Catalog::Json(ix) => ix.by_name.get(name).map(|&k| &ix.tensors[k]),
            Catalog::Binary(ix) => ix.lookup(name)?.map(|(_, t)| t),
        }
        .ok_or_else(|| self.not_found(name))
    }

    /// The position of tensor `name` in [`tensors`](Self::tensors): one lookup, after which
    /// the `*_at` methods take the position.
    pub fn position(&self, name: &str) -> Result<usize> {
        match &self.catalog {
            Catalog::Json(ix) => ix.by_name.get(name).copied(),
            Catalog::Binary(ix) => ix.lookup(name)?.map(|(k, _)| k),
        }
        .ok_or_else(|| self.not_found(name))
    }

    /// The tensor at `index` of [`tensors`](Self::tensors), or an error naming the count.
    /// (A tensor found by name before needs no listing of a 1.1 index.)
    pub fn tensor_at(&self, index: usize) -> Result<&TensorInfo> {
        let known = match &self.catalog {
            Catalog::Json(ix) => ix.tensors.get(index),
            Catalog::Binary(ix) if index < ix.tensor_count() => match ix.known_at(index) {
                Some(t) => Some(t),
                None => ix.tensors()?.get(index),
            },
            Catalog::Binary(_) => None,
        };
        known.ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{}: no tensor {index} (the archive has {})",
                self.path,
                self.tensor_count()
            ))
        })
    }

    /// Zero-copy bytes of a raw tensor in the map. Not checksummed: call
    /// [`verify_tensor`](Self::verify_tensor) when the file is not trusted.
    pub fn view(&self, name: &str) -> Result<View> {
        self.view_at(self.position(name)?)
    }

    /// [`view`](Self::view) of the tensor at `index`.
    pub fn view_at(&self, index: usize) -> Result<View> {
        let t = self.tensor_at(index)?;
        let not = |reason: &str| Error::NotZeroCopy {
            path: self.path.clone(),
            name: t.name.clone(),
            reason: reason.into(),
        };
        let range = t
            .raw_range()
            .ok_or_else(|| not("it is stored compressed"))?;
        // Validated on open: the range lies inside the file, whose length fits in memory.
        let range = range.start as usize..range.end as usize;
        let owner = match &self.map {
            Some(map) => ViewOwner::Map(map.clone()),
            None if self.source.as_slice().is_some() => ViewOwner::Memory(self.source.clone()),
            None => return Err(not("the archive was opened without a memory map")),
        };
        Ok(View { owner, range })
    }

    /// Reads a whole tensor into a new buffer, checking every checksum.
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        let t = self.tensor(name)?;
        let mut out = self.alloc(t, t.nbytes())?;
        self.read_tensors_into(vec![(t, &mut out[..])])?;
        Ok(out)
    }

    /// Reads a whole tensor into `out` (exactly its byte size).
    pub fn read_into(&self, name: &str, out: &mut [u8]) -> Result<()> {
        let t = self.tensor(name)?;
        self.check_out_len(t, out.len() as u64, t.nbytes())?;
        self.read_tensors_into(vec![(t, out)])
    }

    /// Reads every tensor, in index order (see [`read_many`](Self::read_many)).
    pub fn read_all(&self) -> Result<Vec<Vec<u8>>> {
        let tensors = self.tensors()?;
        self.read_infos(
            tensors.iter().collect(),
            &format!("its {} tensors", tensors.len()),
            try_zeroed_vec,
        )
    }

    /// Reads the named tensors whole, checking every checksum. Their total size is checked
    /// once against the memory left (each alone may fit where all do not), and neighbouring
    /// small chunks are read from the file together (see [`read_many_into`](Self::read_many_into)).
    pub fn read_many<S: AsRef<str>>(&self, names: &[S]) -> Result<Vec<Vec<u8>>> {
        let tensors = names
            .iter()
            .map(|n| self.tensor(n.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        self.read_infos(tensors, &format!("{} tensors", names.len()), try_zeroed_vec)
    }

    /// [`read_all`](Self::read_all) into [`Zeroed`] buffers: what a binding hands out
    /// without a copy (large ones are huge-page maps, see [`Zeroed::new`]).
    pub fn read_all_zeroed(&self) -> Result<Vec<Zeroed>> {
        let tensors = self.tensors()?;
        self.read_infos(
            tensors.iter().collect(),
            &format!("its {} tensors", tensors.len()),
            Zeroed::new,
        )
    }

    /// [`read_many`](Self::read_many) of the tensors at `indices`, into [`Zeroed`] buffers.
    pub fn read_many_zeroed_at(&self, indices: &[usize]) -> Result<Vec<Zeroed>> {
        let tensors = indices
            .iter()
            .map(|&i| self.tensor_at(i))
            .collect::<Result<Vec<_>>>()?;
        let what = match tensors[..] {
            [t] => format!("tensor {:?}", t.name),
            _ => format!("{} tensors", tensors.len()),
        };
        self.read_infos(tensors, &what, Zeroed::new)
    }

    /// Buffers for `tensors` from `alloc` (zeroed, `None` if refused), after one check of
    /// their total size against the memory left, then filled.
    fn read_infos<B, A>(&self, tensors: Vec<&TensorInfo>, what: &str, alloc: A) -> Result<Vec<B>>
    where
        B: AsMut<[u8]> + Send,
        A: Fn(usize) -> Option<B> + Sync,
    {
        let total = tensors
            .iter()
            .map(|t| t.nbytes())
            .fold(0u64, u64::saturating_add);
        self.ensure_memory(total, what)?;
        let one = |t: &&TensorInfo| {
            usize::try_from(t.nbytes())
                .ok()
                .and_then(&alloc)
                .ok_or_else(|| {
                    Error::out_of_memory(&self.path, t.nbytes(), format!("for tensor {:?}", t.name))
                })
        };
        // Many small buffers: zeroing them is worth spreading over the cores, as the reads are.
        let mut outs = if self.parallel && tensors.len() > 1 {
            tensors.par_iter().map(one).collect::<Result<Vec<_>>>()?
        } else {
            tensors.iter().map(one).collect::<Result<Vec<_>>>()?
        };
        self.read_tensors_into(
            tensors
                .into_iter()
                .zip(outs.iter_mut().map(AsMut::as_mut))
                .collect(),
        )?;
        Ok(outs)
    }

    /// Reads every tensor into `outs` (one buffer per tensor, in index order, each exactly
    /// its byte size): for callers that allocate their own buffers (and check the memory
    /// with [`ensure_memory`](Self::ensure_memory) once for all of them).
    pub fn read_all_into(&self, outs: Vec<&mut [u8]>) -> Result<()> {
        let tensors = self.tensors()?;
        if outs.len() != tensors.len() {
            return Err(Error::InvalidArgument(format!(
                "{}: {} buffers for {} tensors",
                self.path,
                outs.len(),
                tensors.len()
            )));
        }
        let requests: Vec<(&TensorInfo, &mut [u8])> = tensors.iter().zip(outs).collect();
        for (t, out) in &requests {
            self.check_out_len(t, out.len() as u64, t.nbytes())?;
        }
        self.read_tensors_into(requests)
    }

    /// Reads whole tensors into the given buffers (each exactly its tensor's byte size).
    /// Neighbouring small chunks, of one tensor or of several, are read from the file
    /// together: a load of 20,000 tensors of 4 KiB costs a hundred system calls, not 20,000.
    pub fn read_many_into(&self, requests: Vec<(&str, &mut [u8])>) -> Result<()> {
        let mut infos = Vec::with_capacity(requests.len());
        for (name, out) in requests {
            let t = self.tensor(name)?;
            self.check_out_len(t, out.len() as u64, t.nbytes())?;
            infos.push((t, out));
        }
        self.read_tensors_into(infos)
    }

    /// [`read_many_into`](Self::read_many_into) of the tensors at the given positions.
    pub fn read_many_into_at(&self, requests: Vec<(usize, &mut [u8])>) -> Result<()> {
        let mut infos = Vec::with_capacity(requests.len());
        for (index, out) in requests {
            let t = self.tensor_at(index)?;
            self.check_out_len(t, out.len() as u64, t.nbytes())?;
            infos.push((t, out));
        }
        self.read_tensors_into(infos)
    }

    /// [`read_many_into`](Self::read_many_into) of tensors of this reader, lengths checked.
    fn read_tensors_into<'a>(
        &'a self,
        requests: Vec<(&'a TensorInfo, &'a mut [u8])>,
    ) -> Result<()> {
        // In memory there is nothing to gain: every chunk is read in place.
        let coalesce = self.source.as_slice().is_none();
        let mut jobs: Vec<ReadJob<'a>> = Vec::new();
        let mut small: Vec<Option<ChunkDest<'a>>> = Vec::new();
        let mut extents: Vec<Range<u64>> = Vec::new();
        for (t, out) in requests {
            let mut rest = out;
            for (i, c) in t.chunks.iter().enumerate() {
                let (piece, tail) =
                    std::mem::take(&mut rest).split_at_mut(t.chunk_decoded_len(i) as usize);
                rest = tail;
                let dest = ChunkDest { t, i, out: piece };
                if coalesce && c.stored_len < COALESCE_CHUNK_MAX {
                    extents.push(c.offset..c.offset + c.stored_len);
                    small.push(Some(dest));
                } else {
                    jobs.push(ReadJob::Alone(dest));
                }
            }
        }
        for read in plan_ranges(&extents, COALESCE_GAP_MAX, COALESCE_READ_MAX) {
            let dests = read
                .members
                .iter()
                .map(|&k| small[k].take().expect("a chunk is in one read"))
                .collect();
            jobs.push(ReadJob::Together(read.bytes, dests));
        }
        if coalesce && jobs.len() > 1 {
            let ranges: Vec<Range<u64>> = jobs.iter().map(ReadJob::bytes).collect();
            self.source.prefetch(&ranges);
        }
        let run = |job: ReadJob<'a>| match job {
            ReadJob::Alone(d) => self.decode_chunk_part(d.t, d.i, 0..d.out.len() as u64, d.out),
            ReadJob::Together(bytes, dests) => self.read_together(bytes, dests),
        };
        if self.parallel && jobs.len() > 1 {
            jobs.into_par_iter().try_for_each(run)
        } else {
            jobs.into_iter().try_for_each(run)
        }
    }

    /// Reads `bytes` of the file with one scattered read — plain chunks straight into their
    /// destinations, encoded chunks and the gaps into this thread's buffer — then checks
    /// each chunk and decodes the encoded ones.
    fn read_together(&self, bytes: Range<u64>, mut dests: Vec<ChunkDest<'_>>) -> Result<()> {
        let n = (bytes.end - bytes.start) as usize;
        let stored_range = |d: &ChunkDest<'_>| {
            let c = &d.t.chunks[d.i];
            (c.offset - bytes.start) as usize..(c.offset - bytes.start + c.stored_len) as usize
        };
        // Only the same tensor asked for twice (read_many) makes chunks overlap: then all
        // bytes go to the buffer and are copied out.
        let scattered = dests
            .windows(2)
            .all(|w| stored_range(&w[0]).end <= stored_range(&w[1]).start);
        codec::with_scratch(codec::Scratch::Coalesced, n, |buf| {
            if scattered {
                let mut parts: Vec<&mut [u8]> = Vec::with_capacity(2 * dests.len());
                let (mut rest, mut pos): (&mut [u8], usize) = (&mut *buf, 0);
                for d in dests.iter_mut() {
                    let r = stored_range(d);
                    let (gap, tail) = std::mem::take(&mut rest).split_at_mut(r.start - pos);
                    let (stored, tail) = tail.split_at_mut(r.len());
                    rest = tail;
                    pos = r.end;
                    if !gap.is_empty() {
                        parts.push(gap);
                    }
                    parts.push(if d.t.chunks[d.i].encoded {
                        stored
                    } else {
                        &mut *d.out
                    });
                }
                self.source
                    .read_exact_vectored_at(bytes.start, &mut parts)
                    .map_err(|e| Error::io(&self.path, e))?;
            } else {
                self.read_at(bytes.start, buf)?;
            }
            for d in dests {
                let c = &d.t.chunks[d.i];
                let stored = &buf[stored_range(&d)];
                if c.encoded {
                    self.check_crc(d.t, d.i, stored)?;
                    self.decode_stored(d.t, d.i, stored, 0..d.out.len() as u64, d.out)?;
                } else if scattered {
                    self.check_crc(d.t, d.i, d.out)?;
                } else {
                    self.check_crc(d.t, d.i, stored)?;
                    // The index check made a plain chunk's stored and decoded sizes equal.
                    d.out.copy_from_slice(stored);
                }
            }
            Ok(())
        })
        .unwrap_or_else(|| {
            Err(Error::out_of_memory(
                &self.path,
                n as u64,
                format!("to read the chunks at {}..{}", bytes.start, bytes.end),
            ))
        })
    }

    /// Reads rows `rows` of the leading axis (a 0-d tensor has one row).
    pub fn read_rows(&self, name: &str, rows: Range<u64>) -> Result<Vec<u8>> {
        let t = self.tensor(name)?;
        let bytes = self.row_bytes(t, &rows)?;
        let mut out = self.alloc(t, bytes.end - bytes.start)?;
        self.read_chunks_into(t, bytes, &mut out)?;
        Ok(out)
    }

    /// Reads rows `rows` into `out` (exactly their byte size).
    pub fn read_rows_into(&self, name: &str, rows: Range<u64>, out: &mut [u8]) -> Result<()> {
        let t = self.tensor(name)?;
        let bytes = self.row_bytes(t, &rows)?;
        self.check_out_len(t, out.len() as u64, bytes.end - bytes.start)?;
        self.read_chunks_into(t, bytes, out)
    }

    /// Many row reads as one job: the chunks of every read are planned first and announced
    /// together (a remote archive fetches them as merged parallel ranges), then decoded in
    /// parallel across reads and chunks, so many small reads overlap instead of queueing.
    /// Every read is checked (name, rows, `out` length) before any byte is read.
    pub fn read_rows_many_into(&self, reads: Vec<RowsRead<'_>>) -> Result<()> {
        let mut jobs = Vec::new();
        for read in reads {
            let t = self.tensor(read.name)?;
            let bytes = self.row_bytes(t, &read.rows)?;
            self.check_out_len(t, read.out.len() as u64, bytes.end - bytes.start)?;
            Self::plan_chunks(t, bytes, read.out, &mut jobs);
        }
        self.run_chunk_jobs(jobs)
    }

    fn row_bytes(&self, t: &TensorInfo, rows: &Range<u64>) -> Result<Range<u64>> {
        if rows.start > rows.end || rows.end > t.rows() {
            return Err(Error::InvalidArgument(format!(
                "{}: rows {}..{} out of range for tensor {:?} with {} rows",
                self.path,
                rows.start,
                rows.end,
                t.name,
                t.rows()
            )));
        }
        let row = t.row_elems() * t.dtype.size() as u64;
        Ok(rows.start * row..rows.end * row)
    }

    fn check_out_len(&self, t: &TensorInfo, got: u64, want: u64) -> Result<()> {
        if got != want {
            return Err(Error::InvalidArgument(format!(
                "{}: buffer of {got} bytes for {want} bytes of tensor {:?}",
                self.path, t.name
            )));
        }
        Ok(())
    }

    fn alloc(&self, t: &TensorInfo, n: u64) -> Result<Vec<u8>> {
        self.ensure_memory(n, &format!("tensor {:?}", t.name))?;
        self.alloc_unchecked(t, n)
    }

    /// [`alloc`](Self::alloc) for a caller that checked the memory for all its buffers at once.
    fn alloc_unchecked(&self, t: &TensorInfo, n: u64) -> Result<Vec<u8>> {
        usize::try_from(n)
            .ok()
            .and_then(try_zeroed_vec)
            .ok_or_else(|| Error::out_of_memory(&self.path, n, format!("for tensor {:?}", t.name)))
    }

    /// A working buffer whose size comes from the file: refused with an error, never an abort.
    fn alloc_chunk(&self, t: &TensorInfo, i: usize, n: u64) -> Result<Vec<u8>> {
        usize::try_from(n)
            .ok()
            .and_then(try_zeroed_vec)
            .ok_or_else(|| {
                Error::out_of_memory(&self.path, n, format!("to read {}", Self::part(t, i)))
            })
    }

    fn part(t: &TensorInfo, i: usize) -> String {
        format!("tensor {:?} chunk {i}", t.name)
    }

    /// Decodes the chunks overlapping byte range `want` of tensor `t` into `out`.
    fn read_chunks_into(&self, t: &TensorInfo, want: Range<u64>, out: &mut [u8]) -> Result<()> {
        let mut jobs = Vec::new();
        Self::plan_chunks(t, want, out, &mut jobs);
        self.run_chunk_jobs(jobs)
    }

    /// Splits `out` (bytes `want` of `t`) into one job per overlapping chunk.
    fn plan_chunks<'t, 'o>(
        t: &'t TensorInfo,
        want: Range<u64>,
        out: &'o mut [u8],
        jobs: &mut Vec<ChunkJob<'t, 'o>>,
    ) {
        if want.is_empty() {
            return;
        }
        let chunk_bytes = t.chunk_elems * t.dtype.size() as u64;
        let first = (want.start / chunk_bytes) as usize;
        let last = ((want.end - 1) / chunk_bytes) as usize;
        let mut rest = out;
        for i in first..=last {
            let c_start = i as u64 * chunk_bytes;
            let c_end = c_start + t.chunk_decoded_len(i);
            let lo = want.start.max(c_start);
            let hi = want.end.min(c_end);
            let (piece, tail) = std::mem::take(&mut rest).split_at_mut((hi - lo) as usize);
            rest = tail;
            jobs.push((t, i, (lo - c_start)..(hi - c_start), piece));
        }
    }

    /// Announces the jobs' stored ranges to a source that fetches ahead (one remote
    /// request each otherwise), then decodes them, in parallel when the reader is.
    fn run_chunk_jobs(&self, jobs: Vec<ChunkJob<'_, '_>>) -> Result<()> {
        if jobs.len() > 1 && self.source.as_slice().is_none() {
            let mut ranges: Vec<Range<u64>> = jobs
                .iter()
                .map(|(t, i, _, _)| {
                    t.chunks[*i].offset..t.chunks[*i].offset + t.chunks[*i].stored_len
                })
                .collect();
            ranges.sort_by_key(|r| (r.start, r.end));
            ranges.dedup();
            self.source.prefetch(&ranges);
        }
        let run =
            |(t, i, within, piece): ChunkJob<'_, '_>| self.decode_chunk_part(t, i, within, piece);
        if self.parallel && jobs.len() > 1 {
            jobs.into_par_iter().try_for_each(run)
        } else {
            jobs.into_iter().try_for_each(run)
        }
    }

    /// Decodes bytes `within` of chunk `i` into `out`, checking the chunk's crc.
    fn decode_chunk_part(
        &self,
        t: &TensorInfo,
        i: usize,
        within: Range<u64>,
        out: &mut [u8],
    ) -> Result<()> {
        let c = &t.chunks[i];
        let decoded_len = t.chunk_decoded_len(i);
        let whole = within.start == 0 && within.end == decoded_len;
        if !c.encoded && whole {
            // Plain chunk read whole: straight into the caller's buffer.
            self.read_at(c.offset, out)?;
            return self.check_crc(t, i, out);
        }
        self.with_stored(t, i, |stored| {
            self.check_crc(t, i, stored)?;
            if !c.encoded {
                out.copy_from_slice(&stored[within.start as usize..within.end as usize]);
                return Ok(());
            }
            self.decode_stored(t, i, stored, within, out)
        })
    }

    /// Decodes the checked `stored` bytes of encoded chunk `i`, of which bytes `within` go to `out`.
    fn decode_stored(
        &self,
        t: &TensorInfo,
        i: usize,
        stored: &[u8],
        within: Range<u64>,
        out: &mut [u8],
    ) -> Result<()> {
        let decoded_len = t.chunk_decoded_len(i);
        let fail = |e: codec::DecodeError| Error::CorruptData {
            path: self.path.clone(),
            part: Self::part(t, i),
            detail: e.0,
        };
        let no_memory = |n: usize| {
            Error::out_of_memory(
                &self.path,
                n as u64,
                format!("to read {}", Self::part(t, i)),
            )
        };
        // The filter's and a partial read's working buffers are per-thread and
        // reused: fresh ones per chunk cost page faults and zeroing every time.
        let filtered = codec::filtered_len(t.filter, decoded_len as usize);
        let decode = |dst: &mut [u8]| -> Result<()> {
            if t.filter == Filter::None {
                return codec::decode_chunk_into(t.filter, t.dtype, stored, dst, &mut [])
                    .map_err(fail);
            }
            codec::with_scratch(codec::Scratch::Filtered, filtered, |scratch| {
                codec::decode_chunk_into(t.filter, t.dtype, stored, dst, scratch).map_err(fail)
            })
            .unwrap_or_else(|| Err(no_memory(filtered)))
        };
        if within.start == 0 && within.end == decoded_len {
            return decode(out);
        }
        codec::with_scratch(codec::Scratch::Chunk, decoded_len as usize, |full| {
            decode(full)?;
            out.copy_from_slice(&full[within.start as usize..within.end as usize]);
            Ok(())
        })
        .unwrap_or_else(|| Err(no_memory(decoded_len as usize)))
    }

    /// Runs `f` on the stored bytes of chunk `i`: in place for an archive in memory, else
    /// read into this thread's reusable buffer (never through the file's map).
    fn with_stored<R>(
        &self,
        t: &TensorInfo,
        i: usize,
        f: impl FnOnce(&[u8]) -> Result<R>,
    ) -> Result<R> {
        let c = &t.chunks[i];
        if let Some(memory) = self.source.as_slice() {
            return f(&memory[c.offset as usize..(c.offset + c.stored_len) as usize]);
        }
        codec::with_scratch(codec::Scratch::Stored, c.stored_len as usize, |buf| {
            self.read_at(c.offset, buf)?;
            f(buf)
        })
        .unwrap_or_else(|| {
            Err(Error::out_of_memory(
                &self.path,
                c.stored_len,
                format!("to read {}", Self::part(t, i)),
            ))
        })
    }

    /// Exactly `buf.len()` bytes at `offset`; a file cut short since it was opened gives
    /// [`Error::Truncated`].
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.source
            .read_exact_at(offset, buf)
            .map_err(|e| Error::io(&self.path, e))
    }

    fn check_crc(&self, t: &TensorInfo, i: usize, stored: &[u8]) -> Result<()> {
        let expected = t.chunks[i].crc32c;
        let actual = crc32c::crc32c(stored);
        if actual != expected {
            return Err(Error::ChecksumMismatch {
                path: self.path.clone(),
                part: Self::part(t, i),
                expected,
                actual,
            });
        }
        Ok(())
    }

    /// Checks every checksum of one tensor (without decoding: see [`verify_tensor_with`](Self::verify_tensor_with)).
    pub fn verify_tensor(&self, name: &str) -> Result<()> {
        self.verify_tensor_with(name, &VerifyOptions::default())
    }

    /// Checks every checksum of one tensor and, with `opts.decode`, decodes its encoded
    /// chunks (within the decode budget, counted for this tensor alone).
    pub fn verify_tensor_with(&self, name: &str, opts: &VerifyOptions) -> Result<()> {
        let t = self.tensor(name)?;
        if opts.decode {
            self.check_decode_budget(
                opts,
                encoded_decoded_bytes(t),
                &format!("tensor {:?}", t.name),
            )?;
        }
        self.verify_info(t, opts.decode)
    }

    /// Every chunk of `t`: crc32c, and content hashes where the decoded bytes are at hand.
    fn verify_info(&self, t: &TensorInfo, decode: bool) -> Result<()> {
        let check = |i: usize| self.verify_chunk(t, i, decode);
        if self.parallel && t.chunks.len() > 1 {
            (0..t.chunks.len()).into_par_iter().try_for_each(check)
        } else {
            (0..t.chunks.len()).try_for_each(check)
        }
    }

    /// Checks every stored byte of the file against its checksum — superblock, chunks,
    /// index and trailer, read again from the file — and that the padding is zero. Costs
    /// one read of the file; nothing is decoded (see [`verify_with`](Self::verify_with)).
    pub fn verify(&self) -> Result<VerifyReport> {
        self.verify_with(&VerifyOptions::default())
    }

    /// [`verify`](Self::verify), and with `opts.decode` also decodes every encoded chunk,
    /// if their decoded size is within the budget (else [`Error::LimitExceeded`] before
    /// any is decoded): a small valid file can declare terabytes of zeros.
    pub fn verify_with(&self, opts: &VerifyOptions) -> Result<VerifyReport> {
        if self.source.is_remote() {
            // Verify reads every chunk once: announced together, a remote source fetches
            // them in a few parallel requests instead of one round trip per chunk.
            let mut ranges: Vec<Range<u64>> = self
                .tensors()?
                .iter()
                .flat_map(|t| t.chunks.iter().map(|c| c.offset..c.offset + c.stored_len))
                .collect();
            ranges.sort_unstable_by_key(|r| (r.start, r.end));
            ranges.dedup();
            self.source.prefetch(&ranges);
        }
        let tensors = match &self.catalog {
            Catalog::Binary(ix) => return self.verify_versions(ix, opts),
            Catalog::Json(ix) => &ix.tensors,
        };
        let decoded_bytes: u64 = tensors.iter().map(|t| t.nbytes()).sum();
        if opts.decode {
            let encoded: u64 = tensors.iter().map(encoded_decoded_bytes).sum();
            self.check_decode_budget(opts, encoded, "its compressed chunks")?;
        }
        self.verify_structure()?;
        for t in tensors {
            self.verify_info(t, opts.decode)?;
        }
        self.verify_padding()?;
        Ok(VerifyReport {
            tensors: tensors.len(),
            chunks: tensors.iter().map(|t| t.chunks.len()).sum(),
            stored_bytes: tensors.iter().map(|t| t.stored_bytes()).sum(),
            decoded_bytes,
            decoded: opts.decode,
            versions: 1,
            recovered: None,
        })
    }

    /// The decode budget of [`verify_with`](Self::verify_with) for this file when
    /// `max_decoded_bytes` is not given: [`DECODE_BUDGET_RATIO`] times the file size,
    /// and at least [`DECODE_BUDGET_MIN`].
    pub fn default_decode_budget(&self) -> u64 {
        self.file_len()
            .saturating_mul(DECODE_BUDGET_RATIO)
            .max(DECODE_BUDGET_MIN)
    }

    fn check_decode_budget(&self, opts: &VerifyOptions, bytes: u64, what: &str) -> Result<()> {
        let limit = opts
            .max_decoded_bytes
            .unwrap_or_else(|| self.default_decode_budget());
        if bytes > limit {
            return Err(Error::limit(
                &self.path,
                format!("the decoded size in bytes of {what} (the decode budget of verify: raise max_decoded_bytes to allow it)"),
                bytes,
                limit,
            ));
        }
        Ok(())
    }

    /// Reads the superblock, index and trailer again and checks them against what was
    /// validated on open: the file may have been cut or changed since.
    fn verify_structure(&self) -> Result<()> {
        let mut head = [0u8; SUPERBLOCK_LEN];
        self.read_at(0, &mut head)?;
        // Its own crc covers every byte (reserved ones too).
        if Superblock::decode(&self.path, &head, self.file_len())? != self.superblock {
            return Err(Error::CorruptData {
                path: self.path.clone(),
                part: "the superblock".into(),
                detail: "it changed since the archive was opened".into(),
            });
        }
        let mut tail = [0u8; TRAILER_LEN];
        self.read_at(self.file_len() - TRAILER_LEN as u64, &mut tail)?;
        if tail != self.trailer.encode() {
            return Err(Error::ChecksumMismatch {
                path: self.path.clone(),
                part: "the trailer (changed since the archive was opened)".into(),
                expected: crc32c::crc32c(&self.trailer.encode()),
                actual: crc32c::crc32c(&tail),
            });
        }
        // The index was validated (and its size bounded) on open; read it in blocks.
        const BLOCK: u64 = 1 << 20;
        let mut buf = vec![0u8; self.trailer.index_len.min(BLOCK) as usize];
        let (mut at, end, mut crc) = (
            self.trailer.index_offset,
            self.trailer.index_offset + self.trailer.index_len,
            0,
        );
        while at < end {
            let n = (end - at).min(BLOCK) as usize;
            self.read_at(at, &mut buf[..n])?;
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            at += n as u64;
        }
        if crc != self.trailer.index_crc32c {
            return Err(Error::ChecksumMismatch {
                path: self.path.clone(),
                part: "the index".into(),
                expected: self.trailer.index_crc32c,
                actual: crc,
            });
        }
        self.check_not_cut(self.file_len())
    }

    /// Positioned reads past the end would say so too, but a file cut inside padding is
    /// worth naming. (It may have grown: an append.)
    fn check_not_cut(&self, committed_end: u64) -> Result<()> {
        if let Some(now) = self.source.current_len() {
            if now < committed_end {
                return Err(Error::Truncated {
                    path: self.path.clone(),
                    detail: format!(
                        "{now} bytes now, {} when it was opened: it was cut short since",
                        self.file_len()
                    ),
                });
            }
        }
        Ok(())
    }

    /// [`alloc::ensure_memory`] for this archive: refuses `bytes` for `what` past the memory
    /// this process can still use.
    pub fn ensure_memory(&self, bytes: u64, what: &str) -> Result<()> {
        alloc::ensure_memory(&self.path, bytes, what)
    }
}

/// Chunks stored in fewer bytes than this are read together with their neighbours in the
/// file (one read per [`plan_ranges`] range, then copied out of it); larger ones are read
/// alone, a plain one straight into its destination. Below it, a system call costs more
/// than copying the chunk once more.
pub const COALESCE_CHUNK_MAX: u64 = 64 << 10;
/// Chunks at most this far apart are read together: reading the gap costs about as much
/// as a system call. (Padding between neighbours is below the alignment, 64 bytes by default.)
pub const COALESCE_GAP_MAX: u64 = 4 << 10;
/// Bytes read at once: few enough to stay in the cache until they are copied out, and
/// enough reads for all cores.
pub const COALESCE_READ_MAX: u64 = 1 << 20;

/// Where one whole chunk goes.
struct ChunkDest<'a> {
    t: &'a TensorInfo,
    i: usize,
    out: &'a mut [u8],
}

/// One unit of parallel work of [`Reader::read_many_into`].
enum ReadJob<'a> {
    /// A large chunk, read by itself.
    Alone(ChunkDest<'a>),
    /// Neighbouring small chunks, read with one read of these bytes.
    Together(Range<u64>, Vec<ChunkDest<'a>>),
}

impl ReadJob<'_> {
    /// The bytes of the file it reads.
    fn bytes(&self) -> Range<u64> {
        match self {
            ReadJob::Alone(d) => {
                let c = &d.t.chunks[d.i];
                c.offset..c.offset + c.stored_len
            }
            ReadJob::Together(bytes, _) => bytes.clone(),
        }
    }
}

/// One read that covers several extents (see [`plan_ranges`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoalescedRead {
    /// The bytes to read: from the first member's start to the last one's end.
    pub bytes: Range<u64>,
    /// Indices of the extents inside it (into the slice given to [`plan_ranges`]), by offset.
    pub members: Vec<usize>,
}

/// Groups byte extents (chunks of a file, or of an object read by HTTP ranges) into few
/// reads: by offset, an extent starting at most `max_gap` bytes after the current read's
/// end joins it, as long as the read stays within `max_len` bytes; an extent longer than
/// `max_len` gets a read of its own. Every extent is in exactly one read, the reads are
/// sorted by offset, and they do not overlap unless the extents do. The bytes read beyond
/// the extents are at most `max_gap` per read joined.
pub fn plan_ranges(extents: &[Range<u64>], max_gap: u64, max_len: u64) -> Vec<CoalescedRead> {
    let mut order: Vec<usize> = (0..extents.len()).collect();
    order.sort_unstable_by_key(|&k| (extents[k].start, extents[k].end, k));
    let mut reads: Vec<CoalescedRead> = Vec::new();
    for k in order {
        let (start, end) = (extents[k].start, extents[k].end.max(extents[k].start));
        if let Some(last) = reads.last_mut() {
            let joined_end = last.bytes.end.max(end);
            if start <= last.bytes.end.saturating_add(max_gap)
                && joined_end - last.bytes.start <= max_len
            {
                last.bytes.end = joined_end;
                last.members.push(k);
                continue;
            }
        }
        reads.push(CoalescedRead {
            bytes: start..end,
            members: vec![k],
        });
    }
    reads
}

/// Default decode budget of [`Reader::verify_with`]: decoded bytes per byte of file...
pub const DECODE_BUDGET_RATIO: u64 = 256;
/// ...and at least this many bytes (4 GiB: a few seconds of decoding).
pub const DECODE_BUDGET_MIN: u64 = 4 << 30;

/// Decoded bytes of the encoded chunks of `t` (what decoding it costs).
fn encoded_decoded_bytes(t: &TensorInfo) -> u64 {
    (0..t.chunks.len())
        .filter(|&i| t.chunks[i].encoded)
        .map(|i| t.chunk_decoded_len(i))
        .sum()
}

/// What [`Reader::verify_with`] does beyond checking every checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VerifyOptions {
    /// Also decode every encoded chunk (finds frames that match their checksum but do
    /// not decode to their declared size: a file written that way, not damaged later).
    pub decode: bool,
    /// Refuse to decode more than this many bytes in all (default:
    /// [`Reader::default_decode_budget`]).
    pub max_decoded_bytes: Option<u64>,
}

/// Reads and checks the superblock, the trailer and the index of version `which` (the
/// spec's validation on open): a 1.0 JSON index whole, a 1.1 binary index's head.
fn read_structure(
    source: &Arc<dyn Source>,
    path: &str,
    which: VersionSelector,
) -> Result<Structure> {
    let len = source.len();
    let mut tail: Option<Arc<Tail>> = None;
    if source.is_remote() && len > TRAILER_LEN as u64 {
        // One round trip: the tail holds the trailer, and in a 1.1 file the index head
        // with its copy of the superblock.
        let t = Arc::new(Tail::read(&**source, path)?);
        if let Some((superblock, copy)) = binindex_read::superblock_copy_in_tail(path, &t, len) {
            // The copy is compared with the file's first bytes on verification.
            let _ = copy;
            return open_binary(source, path, superblock, None, t, which);
        }
        tail = Some(t);
    }
    let head_len = len.min(SUPERBLOCK_LEN as u64) as usize;
    let mut head = [0u8; SUPERBLOCK_LEN];
    match tail.as_ref().and_then(|t| t.get(0, head_len as u64)) {
        Some(b) => head[..head_len].copy_from_slice(b),
        None => source
            .read_exact_at(0, &mut head[..head_len])
            .map_err(|e| Error::io(path, e))?,
    }
    let superblock = Superblock::decode(path, &head[..head_len], len)?;
    let min_len = (SUPERBLOCK_LEN + TRAILER_LEN) as u64;
    if len < min_len {
        return Err(Error::Truncated {
            path: path.into(),
            detail: format!(
                "{len} bytes, shorter than the {min_len} bytes of superblock and trailer"
            ),
        });
    }
    // One read for the trailer and, usually, the index before it: on a cold cache every
    // read is a disk round trip.
    let tail = match tail {
        Some(t) => t,
        None => Arc::new(Tail::read(&**source, path)?),
    };
    if superblock.required_features & REQUIRED_BINARY_INDEX != 0 {
        return open_binary(source, path, superblock, Some(head), tail, which);
    }
    let trailer_bytes: &[u8; TRAILER_LEN] = tail.bytes[tail.bytes.len() - TRAILER_LEN..]
        .try_into()
        .expect("TRAILER_LEN bytes");
    let trailer = Trailer::decode(path, trailer_bytes, len)?;
    let owned_index;
    let index: &[u8] = match source.as_slice() {
        // An index in memory is parsed in place.
        Some(memory) => {
            &memory
                [trailer.index_offset as usize..(trailer.index_offset + trailer.index_len) as usize]
        }
        // The trailer check placed the index right before the trailer.
        None => match tail.get(trailer.index_offset, trailer.index_len) {
            Some(b) => b,
            None => {
                let mut buf = usize::try_from(trailer.index_len)
                    .ok()
                    .and_then(try_zeroed_vec)
                    .ok_or_else(|| {
                        Error::out_of_memory(path, trailer.index_len, "for the index")
                    })?;
                source
                    .read_exact_at(trailer.index_offset, &mut buf)
                    .map_err(|e| Error::io(path, e))?;
                owned_index = buf;
                &owned_index
            }
        },
    };
    let actual = crc32c::crc32c(index);
    if actual != trailer.index_crc32c {
        return Err(Error::ChecksumMismatch {
            path: path.into(),
            part: "the index".into(),
            expected: trailer.index_crc32c,
            actual,
        });
    }
    let index = parse_index(path, index, superblock.alignment, trailer.index_offset)?;
    let versions = vec![VersionInfo {
        number: 1,
        time_ns: 0,
        data_start: SUPERBLOCK_LEN as u64,
        index_offset: trailer.index_offset,
        index_length: trailer.index_len,
        index_crc: trailer.index_crc32c,
        bytes_added: len - SUPERBLOCK_LEN as u64,
    }];
    let selected = which.pick(path, &versions)?;
    Ok(Structure {
        superblock,
        trailer,
        catalog: Catalog::Json(index),
        versions,
        selected,
        recovered: None,
    })
}

/// [`read_structure`] of a file with a binary index (spec §16).
fn open_binary(
    source: &Arc<dyn Source>,
    path: &str,
    superblock: Superblock,
    first_bytes: Option<[u8; SUPERBLOCK_LEN]>,
    tail: Arc<Tail>,
    which: VersionSelector,
) -> Result<Structure> {
    let ctx = Ctx {
        source,
        path,
        alignment: superblock.alignment,
        superblock: first_bytes,
        tail: &tail,
    };
    let opened = binindex_read::open(&ctx, which)?;
    Ok(Structure {
        superblock,
        trailer: opened.index.trailer(),
        catalog: Catalog::Binary(Box::new(opened.index)),
        versions: opened.versions,
        selected: opened.selected,
        recovered: opened.recovered,
    })
}

impl Reader {
    /// Bytes of the data region outside every chunk (alignment padding) must
    /// be zero, so that no byte of the file can change unnoticed. In a 1.1 file, the data
    /// region of every version (spec §16.5, "Verify").
    pub fn verify_padding(&self) -> Result<()> {
        match &self.catalog {
            Catalog::Json(ix) => self.check_zero_gaps(
                SUPERBLOCK_LEN as u64..self.trailer.index_offset,
                ix.tensors.iter().flat_map(|t| t.chunks.iter()),
            ),
            Catalog::Binary(ix) => {
                let indexes = self.reopen_versions(ix)?;
                self.check_versions_padding(&indexes)
            }
        }
    }

    /// The bytes of `region` outside every chunk among `chunks` must be zero.
    fn check_zero_gaps<'a>(
        &self,
        region: Range<u64>,
        chunks: impl Iterator<Item = &'a ChunkInfo>,
    ) -> Result<()> {
        let mut extents: Vec<(u64, u64)> = chunks
            .map(|c| (c.offset, c.offset + c.stored_len))
            .filter(|&(start, end)| start < region.end && end > region.start)
            .collect();
        extents.sort_unstable();
        let mut pos = region.start;
        // A gap can be as long as the file (a hostile, sparse one): check it in blocks.
        const BLOCK: u64 = 1 << 20;
        let mut buf = Vec::new();
        for (start, end) in extents.into_iter().chain([(region.end, region.end)]) {
            let mut at = pos;
            while at < start {
                let n = (start - at).min(BLOCK);
                let bytes: &[u8] = match self.source.as_slice() {
                    Some(memory) => &memory[at as usize..(at + n) as usize],
                    None => {
                        buf.resize(n as usize, 0);
                        self.read_at(at, &mut buf)?;
                        &buf
                    }
                };
                if let Some(i) = bytes.iter().position(|&b| b != 0) {
                    return Err(Error::CorruptData {
                        path: self.path.clone(),
                        part: format!("the padding at offset {}", at + i as u64),
                        detail: "padding bytes must be zero".into(),
                    });
                }
                at += n;
            }
            pos = pos.max(end);
        }
        Ok(())
    }

    /// Every version's index, read again from the file and checked whole (each version's
    /// trailer, head, sections, listing rules, tree, metadata and writer).
    fn reopen_versions(&self, ix: &BinIndex) -> Result<Vec<BinIndex>> {
        let mut indexes = Vec::with_capacity(self.versions.len());
        for (k, v) in self.versions.iter().enumerate() {
            let expected = Trailer {
                index_offset: v.index_offset,
                index_len: v.index_length,
                index_crc32c: v.index_crc,
            }
            .encode();
            let mut tail = [0u8; TRAILER_LEN];
            self.read_at(v.end() - TRAILER_LEN as u64, &mut tail)?;
            if tail != expected {
                return Err(Error::ChecksumMismatch {
                    path: self.path.clone(),
                    part: format!(
                        "the trailer of version {} (it differs from what the latest index \
                         records, or changed since the archive was opened)",
                        v.number
                    ),
                    expected: crc32c::crc32c(&expected),
                    actual: crc32c::crc32c(&tail),
                });
            }
            let index = ix.sibling(&self.versions, k, true)?;
            index.tensors()?;
            index.metadata_json()?;
            index.writer()?;
            index.check_unused_bytes_zero()?;
            indexes.push(index);
        }
        Ok(indexes)
    }

    /// The padding rule per version, and nothing between one version's trailer and the
    /// next one's data.
    fn check_versions_padding(&self, indexes: &[BinIndex]) -> Result<()> {
        let mut previous_end = SUPERBLOCK_LEN as u64;
        for (index, v) in indexes.iter().zip(&self.versions) {
            self.check_zero_gaps(previous_end..v.data_start, std::iter::empty())?;
            let tensors = index.tensors()?;
            self.check_zero_gaps(
                index.data_range(),
                tensors.iter().flat_map(|t| t.chunks.iter()),
            )?;
            previous_end = v.end();
        }
        Ok(())
    }

    /// [`verify_with`](Self::verify_with) of a 1.1 file: every version.
    fn verify_versions(&self, ix: &BinIndex, opts: &VerifyOptions) -> Result<VerifyReport> {
        let mut first = [0u8; SUPERBLOCK_LEN];
        self.read_at(0, &mut first)?;
        if Superblock::decode(&self.path, &first, self.file_len())? != self.superblock {
            return Err(Error::CorruptData {
                path: self.path.clone(),
                part: "the superblock".into(),
                detail: "it changed since the archive was opened".into(),
            });
        }
        if first != ix.head.superblock {
            return Err(Error::invalid_index(
                &self.path,
                "the superblock copy in the index head differs from the file's first 64 bytes",
            ));
        }
        let indexes = self.reopen_versions(ix)?;
        // Each stored chunk once, however many tensors and versions share it (and once per
        // way of reading it, should two records disagree).
        let mut claims: Vec<(&TensorInfo, usize)> = Vec::new();
        for index in &indexes {
            for t in index.tensors()? {
                claims.extend((0..t.chunks.len()).map(|i| (t, i)));
            }
        }
        let key = |&(t, i): &(&TensorInfo, usize)| {
            let c = &t.chunks[i];
            (
                c.offset,
                c.stored_len,
                c.crc32c,
                c.encoded,
                c.hash,
                t.filter.code(),
                t.dtype.size(),
                t.chunk_decoded_len(i),
            )
        };
        claims.sort_unstable_by_key(key);
        claims.dedup_by(|b, a| key(a) == key(b));
        if opts.decode {
            let encoded: u64 = claims
                .iter()
                .filter(|(t, i)| t.chunks[*i].encoded)
                .map(|(t, i)| t.chunk_decoded_len(*i))
                .sum();
            self.check_decode_budget(opts, encoded, "its compressed chunks")?;
        }
        let check = |&(t, i): &(&TensorInfo, usize)| self.verify_chunk(t, i, opts.decode);
        if self.parallel && claims.len() > 1 {
            claims.par_iter().try_for_each(check)?;
        } else {
            claims.iter().try_for_each(check)?;
        }
        self.check_versions_padding(&indexes)?;
        self.check_not_cut(self.versions.last().map_or(0, VersionInfo::end))?;
        let tensors = self.tensors()?;
        Ok(VerifyReport {
            tensors: tensors.len(),
            chunks: claims.len(),
            stored_bytes: claims.iter().map(|(t, i)| t.chunks[*i].stored_len).sum(),
            decoded_bytes: tensors.iter().map(|t| t.nbytes()).sum(),
            decoded: opts.decode,
            versions: self.versions.len(),
            recovered: self.recovered,
        })
    }

    /// One chunk: its crc32c, and the content hash of its decoded bytes where they are at
    /// hand (a plain chunk, or an encoded one decoded on request).
    fn verify_chunk(&self, t: &TensorInfo, i: usize, decode: bool) -> Result<()> {
        let c = &t.chunks[i];
        self.with_stored(t, i, |stored| {
            self.check_crc(t, i, stored)?;
            if !c.encoded {
                return self.check_hash(t, i, stored);
            }
            if !decode {
                return Ok(());
            }
            let decoded = t.chunk_decoded_len(i);
            codec::with_scratch(codec::Scratch::Chunk, decoded as usize, |sink| {
                self.decode_stored(t, i, stored, 0..decoded, sink)?;
                self.check_hash(t, i, sink)
            })
            .unwrap_or_else(|| {
                let mut sink = self.alloc_chunk(t, i, decoded)?;
                self.decode_stored(t, i, stored, 0..decoded, &mut sink)?;
                self.check_hash(t, i, &sink)
            })
        })
    }

    fn check_hash(&self, t: &TensorInfo, i: usize, decoded: &[u8]) -> Result<()> {
        let Some(expected) = t.chunks[i].hash else {
            return Ok(());
        };
        let actual = crate::binindex::content_hash(decoded);
        if actual != expected {
            let hex = |h: &[u8; 16]| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
            let first = |h: &[u8; 16]| u32::from_be_bytes(h[..4].try_into().unwrap());
            return Err(Error::ChecksumMismatch {
                path: self.path.clone(),
                part: format!(
                    "the content hash (BLAKE3) of {}: stored {}, computed {}",
                    Self::part(t, i),
                    hex(&expected),
                    hex(&actual)
                ),
                expected: first(&expected),
                actual: first(&actual),
            });
        }
        Ok(())
    }
}

/// What [`Reader::verify`] checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub tensors: usize,
    pub chunks: usize,
    pub stored_bytes: u64,
    /// The tensors' decoded size (what a load produces).
    pub decoded_bytes: u64,
    /// Whether the encoded chunks were decoded ([`VerifyOptions::decode`]).
    pub decoded: bool,
    /// Versions checked: every version of the file (1 for a 1.0 file). `tensors` and
    /// `decoded_bytes` are the opened version's; `chunks` and `stored_bytes` count every
    /// stored chunk of every version once.
    pub versions: usize,
    /// The unfinished append opening skipped, if any: the committed versions are intact,
    /// the file is not.
    pub recovered: Option<Recovery>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::{memory_check_enabled, MEMORY_QUERIES};
    use std::sync::atomic::Ordering;

    fn check_plan(extents: &[Range<u64>], max_gap: u64, max_len: u64) {
        let reads = plan_ranges(extents, max_gap, max_len);
        let mut seen = vec![0; extents.len()];
        for (j, r) in reads.iter().enumerate() {
            assert!(!r.members.is_empty());
            let span = r.bytes.end - r.bytes.start;
            let widest = r
                .members
                .iter()
                .map(|&k| extents[k].end - extents[k].start)
                .max()
                .unwrap();
            assert!(
                span <= max_len || (r.members.len() == 1 && span == widest),
                "{r:?} over {max_len}"
            );
            for &k in &r.members {
                seen[k] += 1;
                assert!(
                    r.bytes.start <= extents[k].start && extents[k].end <= r.bytes.end,
                    "{k} outside {r:?}"
                );
            }
            assert_eq!(
                r.bytes.start,
                r.members.iter().map(|&k| extents[k].start).min().unwrap()
            );
            assert_eq!(
                r.bytes.end,
                r.members.iter().map(|&k| extents[k].end).max().unwrap()
            );
            if j > 0 {
                assert!(reads[j - 1].bytes.start <= r.bytes.start, "unsorted");
            }
            for w in r.members.windows(2) {
                assert!(extents[w[0]].start <= extents[w[1]].start);
            }
        }
        assert!(
            seen.iter().all(|&n| n == 1),
            "each extent in exactly one read: {seen:?}"
        );
    }

    #[test]
    fn plan_ranges_joins_neighbours_within_the_gap_and_length() {
        let e = [120..200, 0..50, 60..90, 5000..5010, 205..2000, 2000..2000];
        let reads = plan_ranges(&e, 10, 1 << 20);
        let spans: Vec<_> = reads
            .iter()
            .map(|r| (r.bytes.clone(), r.members.clone()))
            .collect();
        assert_eq!(
            spans,
            vec![
                (0..90, vec![1, 2]),
                (120..2000, vec![0, 4, 5]),
                (5000..5010, vec![3])
            ]
        );
        // Bounded length: an extent longer than max_len is read alone.
        let reads = plan_ranges(&[0..10, 10..20, 20..100, 100..105], 0, 20);
        let spans: Vec<_> = reads
            .iter()
            .map(|r| (r.bytes.clone(), r.members.clone()))
            .collect();
        assert_eq!(
            spans,
            vec![(0..20, vec![0, 1]), (20..100, vec![2]), (100..105, vec![3])]
        );
        assert!(plan_ranges(&[], 10, 10).is_empty());
        for (gap, len) in [(0, 0), (0, 1), (4096, 1 << 20), (u64::MAX, u64::MAX)] {
            check_plan(&e, gap, len);
        }
        check_plan(&[u64::MAX - 5..u64::MAX, 0..1], u64::MAX, u64::MAX);
    }

    proptest::proptest! {
        #[test]
        fn plan_ranges_covers_every_extent_once_within_bounds(
            raw in proptest::collection::vec((0u64..1 << 20, 0u64..1 << 14), 0..200),
            max_gap in 0u64..1 << 16,
            max_len in 0u64..1 << 20,
        ) {
            let extents: Vec<Range<u64>> = raw.iter().map(|&(s, n)| s..s + n).collect();
            check_plan(&extents, max_gap, max_len);
        }

        #[test]
        fn plan_ranges_of_disjoint_extents_gives_disjoint_reads(
            gaps in proptest::collection::vec((0u64..10_000, 1u64..70_000), 1..300),
            max_gap in 0u64..8192,
        ) {
            let mut at = 0;
            let mut extents = Vec::new();
            for (gap, n) in gaps {
                extents.push(at + gap..at + gap + n);
                at += gap + n;
            }
            extents.reverse();
            check_plan(&extents, max_gap, 1 << 20);
            let reads = plan_ranges(&extents, max_gap, 1 << 20);
            for w in reads.windows(2) {
                proptest::prop_assert!(w[0].bytes.end <= w[1].bytes.start);
            }
            let over: u64 = reads.iter().map(|r| r.bytes.end - r.bytes.start).sum::<u64>()
                - extents.iter().map(|e| e.end - e.start).sum::<u64>();
            proptest::prop_assert!(over <= max_gap * (extents.len() - reads.len()) as u64);
        }
    }

    /// The memory left is read once per load, not once per tensor.
    #[test]
    fn a_load_checks_the_memory_once() {
        // By hand (the writer is slow in debug builds): 3 tensors, each one zstd frame of
        // MEMORY_CHECK_MIN zero bytes.
        let n = MEMORY_CHECK_MIN;
        let frame = zstd::bulk::compress(&vec![0u8; n as usize], 3).unwrap();
        let crc = crc32c::crc32c(&frame);
        let mut file = Superblock::new(64).encode().to_vec();
        let mut entries = Vec::new();
        for i in 0..3 {
            entries.push(format!(
                r#"{{"name":"t{i}","dtype":"U8","shape":[{n}],"storage":"chunked","filter":"none","chunk_elems":{n},"chunks":[[{},{},{crc},1]]}}"#,
                file.len(),
                frame.len()
            ));
            file.extend_from_slice(&frame);
        }
        let index = format!(r#"{{"tensors":[{}]}}"#, entries.join(","));
        let trailer = Trailer {
            index_offset: file.len() as u64,
            index_len: index.len() as u64,
            index_crc32c: crc32c::crc32c(index.as_bytes()),
        };
        file.extend_from_slice(index.as_bytes());
        file.extend_from_slice(&trailer.encode());
        let r = Reader::from_bytes(file).unwrap();
        let enabled = memory_check_enabled(std::env::var_os(MEMORY_CHECK_VAR).as_deref());
        let before = MEMORY_QUERIES.load(Ordering::Relaxed);
        let all = r.read_all().unwrap();
        assert_eq!(all.len(), 3);
        assert!(all
            .iter()
            .all(|t| t.len() == MEMORY_CHECK_MIN as usize && t.iter().all(|&b| b == 0)));
        drop(all);
        let many = r.read_many(&["t2", "t0"]).unwrap();
        assert_eq!(many.len(), 2);
        drop(many);
        assert_eq!(
            MEMORY_QUERIES.load(Ordering::Relaxed) - before,
            if enabled { 2 } else { 0 }
        );
    }
}
