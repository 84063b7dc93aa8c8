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
        "{path}: checksum mismatch in {part} (stored crc32c {expected:08x}, computed {actual:08x}): \
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
}

impl Error {
    /// A stable, machine-readable name of the failure, shared with `spec/FORMAT.md`,
    /// the test vectors and every binding.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::BadMagic { .. } => "bad_magic",
            Error::Truncated { .. } => "truncated",
            Error::UnsupportedVersion { .. } => "unsupported_version",
            Error::UnsupportedFeature { .. } => "unsupported_feature",
            Error::ChecksumMismatch { .. } => "checksum_mismatch",
            Error::InvalidIndex { .. } => "invalid_index",
            Error::LimitExceeded { .. } => "limit_exceeded",
            Error::CorruptData { .. } => "corrupt_data",
            Error::TensorNotFound { .. } => "tensor_not_found",
            Error::NotZeroCopy { .. } => "not_zero_copy",
            Error::InvalidArgument(_) => "invalid_argument",
        }
    }

    pub(crate) fn io(path: &str, source: io::Error) -> Self {
        // Reads are bounds-checked against the length seen at open, so running
        // out of bytes means the file was cut short under us.
        if source.kind() == io::ErrorKind::UnexpectedEof {
            return Error::Truncated {
                path: path.to_owned(),
                detail: "the file ended early while reading (was it truncated after opening?)".into(),
            };
        }
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Every value [`Error::kind`] can return.
    pub const KINDS: [&'static str; 12] = [
        "io",
        "bad_magic",
        "truncated",
        "unsupported_version",
        "unsupported_feature",
        "checksum_mismatch",
        "invalid_index",
        "limit_exceeded",
        "corrupt_data",
        "tensor_not_found",
        "not_zero_copy",
        "invalid_argument",
    ];

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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
