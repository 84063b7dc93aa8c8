//! The one error type of the crate. Every variant that concerns a file names it,
//! and every variant that concerns a tensor names the tensor, so a message alone
//! tells the user what to look at.

use std::fmt;
use std::io;

/// A format version, `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u16,
    pub minor: u16,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Everything that can go wrong while writing or reading an archive.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a bpz archive ({detail})")]
    BadMagic { path: String, detail: String },
    #[error("{path}: truncated file: {detail}")]
    Truncated { path: String, detail: String },
    #[error(
        "{path}: written with bpz format version {found}; this reader supports {supported} \
         (major version {}) — upgrade bpz to read it", supported.major
    )]
    UnsupportedVersion {
        path: String,
        found: Version,
        supported: Version,
    },
    #[error("{path}: uses a feature this reader does not support: {detail}")]
    UnsupportedFeature { path: String, detail: String },
    #[error(
        "{path}: checksum mismatch in {part} (stored {expected:08x}, computed {actual:08x}): \
         the file is corrupt"
    )]
    ChecksumMismatch {
        path: String,
        part: String,
        expected: u32,
        actual: u32,
    },
    #[error("{path}: invalid index: {detail}")]
    InvalidIndex { path: String, detail: String },
    #[error("{path}: {what} is {value}, over the limit of {limit}")]
    LimitExceeded {
        path: String,
        what: String,
        value: u64,
        limit: u64,
    },
    #[error("{path}: corrupt data in {part}: {detail}")]
    CorruptData {
        path: String,
        part: String,
        detail: String,
    },
    #[error("{path}: no tensor named {name:?}")]
    TensorNotFound { path: String, name: String },
    #[error("{path}: tensor {name:?} can't be viewed without a copy: {reason}")]
    NotZeroCopy {
        path: String,
        name: String,
        reason: String,
    },
    #[error("{0}")]
    InvalidArgument(String),
    /// A buffer could not be allocated: the process is short of memory, not the file
    /// at fault (a size a file declares over the format's limits is `LimitExceeded`).
    #[error("{path}: cannot allocate {bytes} bytes {purpose}")]
    OutOfMemory {
        path: String,
        bytes: u64,
        /// What the buffer was for: "for tensor \"w\"", "to read tensor \"w\" chunk 3"...
        purpose: String,
    },
}

/// Defines [`Error::kind`] and [`Error::KINDS`] from one list, so that they cannot
/// disagree; the match is exhaustive, so a new variant doesn't compile without a kind.
macro_rules! error_kinds {
    ($($variant:ident => $kind:literal,)*) => {
        impl Error {
            /// A stable, machine-readable name of the failure, shared with `spec/FORMAT.md`,
            /// the test vectors and every binding.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Error::$variant { .. } => $kind,)*
                }
            }

            /// Every value [`Error::kind`] can return, in the order of the variants.
            pub const KINDS: &'static [&'static str] = &[$($kind),*];
        }
    };
}

error_kinds! {
    Io => "io",
    BadMagic => "bad_magic",
    Truncated => "truncated",
    UnsupportedVersion => "unsupported_version",
    UnsupportedFeature => "unsupported_feature",
    ChecksumMismatch => "checksum_mismatch",
    InvalidIndex => "invalid_index",
    LimitExceeded => "limit_exceeded",
    CorruptData => "corrupt_data",
    TensorNotFound => "tensor_not_found",
    NotZeroCopy => "not_zero_copy",
    InvalidArgument => "invalid_argument",
    OutOfMemory => "out_of_memory",
}

impl Error {
    pub(crate) fn io(path: &str, source: io::Error) -> Self {
        // Reads are bounds-checked against the length seen at open, so running
        // out of bytes means the file was cut short under us.
        if source.kind() == io::ErrorKind::UnexpectedEof {
            return Error::Truncated {
                path: path.to_owned(),
                detail: "the file ended early while reading (was it truncated after opening?)"
                    .into(),
            };
        }
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }

    pub(crate) fn invalid_index(path: &str, detail: impl Into<String>) -> Self {
        Error::InvalidIndex {
            path: path.to_owned(),
            detail: detail.into(),
        }
    }

    pub(crate) fn limit(path: &str, what: impl Into<String>, value: u64, limit: u64) -> Self {
        Error::LimitExceeded {
            path: path.to_owned(),
            what: what.into(),
            value,
            limit,
        }
    }

    /// A refused allocation of `bytes` bytes (`purpose` says what for).
    pub fn out_of_memory(path: &str, bytes: u64, purpose: impl Into<String>) -> Self {
        Error::OutOfMemory {
            path: path.to_owned(),
            bytes,
            purpose: purpose.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_one_kind_in_kinds() {
        let path = String::from("f");
        let samples = [
            Error::io(&path, io::Error::from(io::ErrorKind::NotFound)),
            Error::BadMagic {
                path: path.clone(),
                detail: String::new(),
            },
            Error::Truncated {
                path: path.clone(),
                detail: String::new(),
            },
            Error::UnsupportedVersion {
                path: path.clone(),
                found: Version { major: 2, minor: 0 },
                supported: Version { major: 1, minor: 0 },
            },
            Error::UnsupportedFeature {
                path: path.clone(),
                detail: String::new(),
            },
            Error::ChecksumMismatch {
                path: path.clone(),
                part: String::new(),
                expected: 0,
                actual: 1,
            },
            Error::invalid_index(&path, ""),
            Error::limit(&path, "x", 2, 1),
            Error::CorruptData {
                path: path.clone(),
                part: String::new(),
                detail: String::new(),
            },
            Error::TensorNotFound {
                path: path.clone(),
                name: String::new(),
            },
            Error::NotZeroCopy {
                path: path.clone(),
                name: String::new(),
                reason: String::new(),
            },
            Error::InvalidArgument(String::new()),
            Error::out_of_memory(&path, 1 << 40, "for tensor \"w\""),
        ];
        let kinds: Vec<&str> = samples.iter().map(Error::kind).collect();
        assert_eq!(
            kinds,
            Error::KINDS,
            "one sample per variant, in the order of KINDS"
        );
        let mut unique = kinds.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), kinds.len(), "kinds are distinct");
        for kind in kinds {
            assert!(
                kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{kind}"
            );
        }
    }

    #[test]
    fn out_of_memory_names_the_file_and_the_size() {
        let e = Error::out_of_memory("a.bpz", 1 << 40, "for tensor \"w\"");
        assert_eq!(
            e.to_string(),
            "a.bpz: cannot allocate 1099511627776 bytes for tensor \"w\""
        );
    }
}
