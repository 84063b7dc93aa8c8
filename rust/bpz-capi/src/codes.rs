//! The numbers of the C ABI: status codes, backends, storage kinds, dtypes.
//! `include/bpz.h` repeats them; `tests/header.rs` checks that it does exactly.

use std::ffi::c_int;

use bpz_core::{DType, Filter};

/// Defines `c_int` constants and a list of them all (for the header check).
macro_rules! c_constants {
    ($list:ident: $($name:ident = $value:expr;)*) => {
        $(pub const $name: c_int = $value;)*
        /// Every constant of this group, by its C name.
        #[doc(hidden)]
        pub const $list: &[(&str, c_int)] = &[$((stringify!($name), $value)),*];
    };
}

c_constants! { STATUS_CODES:
    BPZ_OK = 0;
    BPZ_ERR_IO = -1;
    BPZ_ERR_BAD_MAGIC = -2;
    BPZ_ERR_TRUNCATED = -3;
    BPZ_ERR_UNSUPPORTED_VERSION = -4;
    BPZ_ERR_UNSUPPORTED_FEATURE = -5;
    BPZ_ERR_CHECKSUM_MISMATCH = -6;
    BPZ_ERR_INVALID_INDEX = -7;
    BPZ_ERR_LIMIT_EXCEEDED = -8;
    BPZ_ERR_CORRUPT_DATA = -9;
    BPZ_ERR_TENSOR_NOT_FOUND = -10;
    BPZ_ERR_NOT_ZERO_COPY = -11;
    BPZ_ERR_INVALID_ARGUMENT = -12;
    BPZ_ERR_NULL_ARGUMENT = -13;
    BPZ_ERR_PANIC = -14;
    BPZ_ERR_UNKNOWN = -15;
    BPZ_ERR_OUT_OF_MEMORY = -16;
}

c_constants! { BACKENDS:
    BPZ_BACKEND_MMAP = 0;
    BPZ_BACKEND_PREAD = 1;
}

c_constants! { STORAGES:
    BPZ_STORAGE_RAW = 0;
    BPZ_STORAGE_CHUNKED = 1;
}

c_constants! { DTYPES:
    BPZ_DTYPE_BOOL = 0;
    BPZ_DTYPE_U8 = 1;
    BPZ_DTYPE_U16 = 2;
    BPZ_DTYPE_U32 = 3;
    BPZ_DTYPE_U64 = 4;
    BPZ_DTYPE_I8 = 5;
    BPZ_DTYPE_I16 = 6;
    BPZ_DTYPE_I32 = 7;
    BPZ_DTYPE_I64 = 8;
    BPZ_DTYPE_F16 = 9;
    BPZ_DTYPE_BF16 = 10;
    BPZ_DTYPE_F32 = 11;
    BPZ_DTYPE_F64 = 12;
    BPZ_DTYPE_C64 = 13;
    BPZ_DTYPE_C128 = 14;
    BPZ_DTYPE_F8_E4M3 = 15;
    BPZ_DTYPE_F8_E5M2 = 16;
    BPZ_DTYPE_F8_E4M3FNUZ = 17;
    BPZ_DTYPE_F8_E5M2FNUZ = 18;
    BPZ_DTYPE_F8_E8M0 = 19;
}

/// Each status code and its name (NUL-terminated for C): the core's
/// `Error::kind()` names (spec/FORMAT.md §10), then this binding's own.
pub const KIND_NAMES: [(c_int, &str); 17] = [
    (BPZ_OK, "ok\0"),
    (BPZ_ERR_IO, "io\0"),
    (BPZ_ERR_BAD_MAGIC, "bad_magic\0"),
    (BPZ_ERR_TRUNCATED, "truncated\0"),
    (BPZ_ERR_UNSUPPORTED_VERSION, "unsupported_version\0"),
    (BPZ_ERR_UNSUPPORTED_FEATURE, "unsupported_feature\0"),
    (BPZ_ERR_CHECKSUM_MISMATCH, "checksum_mismatch\0"),
    (BPZ_ERR_INVALID_INDEX, "invalid_index\0"),
    (BPZ_ERR_LIMIT_EXCEEDED, "limit_exceeded\0"),
    (BPZ_ERR_CORRUPT_DATA, "corrupt_data\0"),
    (BPZ_ERR_TENSOR_NOT_FOUND, "tensor_not_found\0"),
    (BPZ_ERR_NOT_ZERO_COPY, "not_zero_copy\0"),
    (BPZ_ERR_INVALID_ARGUMENT, "invalid_argument\0"),
    (BPZ_ERR_NULL_ARGUMENT, "null_argument\0"),
    (BPZ_ERR_PANIC, "panic\0"),
    (BPZ_ERR_UNKNOWN, "unknown\0"),
    // A core kind added after the binding's own: codes are never renumbered.
    (BPZ_ERR_OUT_OF_MEMORY, "out_of_memory\0"),
];

/// The name of a status code, NUL-terminated; `None` for a number that is none.
pub fn kind_name(code: c_int) -> Option<&'static str> {
    KIND_NAMES
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, name)| *name)
}

/// The status code of a core error kind. A kind newer than this binding (the
/// core's `Error` is non-exhaustive) gets `BPZ_ERR_UNKNOWN`, never `BPZ_OK`.
pub fn code_of_kind(kind: &str) -> c_int {
    KIND_NAMES
        .iter()
        .find(|(c, name)| *c < 0 && name.strip_suffix('\0') == Some(kind))
        .map_or(BPZ_ERR_UNKNOWN, |(c, _)| *c)
}

/// A dtype's code and its name (NUL-terminated). Exhaustive: a dtype added to
/// the core doesn't compile until it has a code here.
pub fn dtype_code_name(dtype: DType) -> (c_int, &'static str) {
    match dtype {
        DType::Bool => (BPZ_DTYPE_BOOL, "BOOL\0"),
        DType::U8 => (BPZ_DTYPE_U8, "U8\0"),
        DType::U16 => (BPZ_DTYPE_U16, "U16\0"),
        DType::U32 => (BPZ_DTYPE_U32, "U32\0"),
        DType::U64 => (BPZ_DTYPE_U64, "U64\0"),
        DType::I8 => (BPZ_DTYPE_I8, "I8\0"),
        DType::I16 => (BPZ_DTYPE_I16, "I16\0"),
        DType::I32 => (BPZ_DTYPE_I32, "I32\0"),
        DType::I64 => (BPZ_DTYPE_I64, "I64\0"),
        DType::F16 => (BPZ_DTYPE_F16, "F16\0"),
        DType::BF16 => (BPZ_DTYPE_BF16, "BF16\0"),
        DType::F32 => (BPZ_DTYPE_F32, "F32\0"),
        DType::F64 => (BPZ_DTYPE_F64, "F64\0"),
        DType::C64 => (BPZ_DTYPE_C64, "C64\0"),
        DType::C128 => (BPZ_DTYPE_C128, "C128\0"),
        DType::F8E4M3 => (BPZ_DTYPE_F8_E4M3, "F8_E4M3\0"),
        DType::F8E5M2 => (BPZ_DTYPE_F8_E5M2, "F8_E5M2\0"),
        DType::F8E4M3Fnuz => (BPZ_DTYPE_F8_E4M3FNUZ, "F8_E4M3FNUZ\0"),
        DType::F8E5M2Fnuz => (BPZ_DTYPE_F8_E5M2FNUZ, "F8_E5M2FNUZ\0"),
        DType::F8E8M0 => (BPZ_DTYPE_F8_E8M0, "F8_E8M0\0"),
    }
}

pub fn dtype_from_code(code: c_int) -> Option<DType> {
    DType::ALL
        .into_iter()
        .find(|&d| dtype_code_name(d).0 == code)
}

/// A filter's name, NUL-terminated.
pub fn filter_name(filter: Filter) -> &'static str {
    match filter {
        Filter::None => "none\0",
        Filter::Shuffle => "shuffle\0",
        Filter::DeltaShuffle => "delta_shuffle\0",
        Filter::BitPack => "bitpack\0",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_codes_follow_the_spec_order_and_names() {
        for (i, d) in DType::ALL.into_iter().enumerate() {
            let (code, name) = dtype_code_name(d);
            assert_eq!(code as usize, i, "{d}");
            assert_eq!(name.strip_suffix('\0'), Some(d.name()));
            assert_eq!(dtype_from_code(code), Some(d));
            let constant = format!("BPZ_DTYPE_{}", d.name());
            assert!(DTYPES.contains(&(constant.as_str(), code)), "{constant}");
        }
        assert_eq!(DTYPES.len(), DType::ALL.len());
        assert_eq!(dtype_from_code(-1), None);
        assert_eq!(dtype_from_code(DType::ALL.len() as c_int), None);
    }

    #[test]
    fn filter_names_are_the_core_names() {
        for f in [
            Filter::None,
            Filter::Shuffle,
            Filter::DeltaShuffle,
            Filter::BitPack,
        ] {
            assert_eq!(filter_name(f).strip_suffix('\0'), Some(f.name()));
        }
    }

    #[test]
    fn every_status_code_has_one_name() {
        assert_eq!(KIND_NAMES.len(), STATUS_CODES.len());
        for &(name, code) in STATUS_CODES {
            let kind = kind_name(code).unwrap();
            assert!(kind.ends_with('\0') && !kind[..kind.len() - 1].contains('\0'));
            let suffix = name
                .strip_prefix("BPZ_ERR_")
                .or(name.strip_prefix("BPZ_"))
                .unwrap();
            assert_eq!(
                kind.strip_suffix('\0').unwrap(),
                suffix.to_ascii_lowercase(),
                "{name}"
            );
        }
        assert_eq!(code_of_kind("checksum_mismatch"), BPZ_ERR_CHECKSUM_MISMATCH);
        assert_eq!(code_of_kind("ok"), BPZ_ERR_UNKNOWN);
        assert_eq!(code_of_kind("something_new"), BPZ_ERR_UNKNOWN);
    }

    #[test]
    fn every_core_error_kind_has_a_code() {
        for kind in bpz_core::Error::KINDS {
            assert_ne!(code_of_kind(kind), BPZ_ERR_UNKNOWN, "{kind}");
        }
    }
}
