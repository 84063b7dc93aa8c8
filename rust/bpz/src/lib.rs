//! # bpz
//!
//! A seekable, compressed, checksummed archive format for named tensors.
//!
//! An archive is a 64-byte superblock, tensor data, a JSON index and a 32-byte
//! trailer that locates the index. Raw tensors are aligned and can be
//! memory-mapped without a copy; compressed tensors are split into independent
//! zstd chunks of whole rows, so any row range is read by decoding only the
//! chunks it overlaps. Every stored byte is covered by a crc32c. The byte-level
//! specification is `spec/FORMAT.md` in the repository.
//!
//! ```
//! use bpz::{DType, Reader, Writer, WriterOptions};
//! let mut w = Writer::new(Vec::new(), WriterOptions::default())?;
//! let data: Vec<u8> = (0..6u32).flat_map(|v| (v as f32).to_le_bytes()).collect();
//! w.add_tensor("net/w", DType::F32, &[2, 3], &data)?;
//! let (_, bytes) = w.finish()?;
//! let r = Reader::from_bytes(bytes.unwrap())?;
//! assert_eq!(r.read("net/w")?, data);
//! assert_eq!(r.read_rows("net/w", 1..2)?, data[12..]);
//! # Ok::<(), bpz::Error>(())
//! ```

pub mod alloc;
mod append;
pub mod binindex;
mod binindex_read;
mod binindex_write;
pub mod codec;
pub mod diff;
pub mod error;
pub mod filter_choice;
pub mod format;
mod index;
mod json;
pub mod persist;
pub mod read;
#[cfg(feature = "remote")]
pub mod remote;
#[cfg(feature = "remote")]
pub mod remote_dir;
#[cfg(feature = "remote")]
pub mod remote_write;
pub mod write;

pub use alloc::Zeroed;
pub use append::{compact, compact_to, Keep};
pub use diff::{diff, Diff};
pub use error::{Error, Result, Version};
pub use format::{
    ChunkInfo, DType, Filter, Storage, Superblock, TensorInfo, Trailer, WriterInfo, FORMAT_VERSION,
};
pub use read::{
    Backend, FileSource, Reader, Recovery, RowsRead, Source, VerifyOptions, VerifyReport,
    VersionInfo, VersionSelector, View,
};
pub use write::{
    Compression, FormatVersion, Prepared, Summary, TensorOptions, Writer, WriterOptions,
};
