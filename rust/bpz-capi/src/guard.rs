//! The boundary machinery: error codes, the thread-local last-error message,
//! the panic guard every exported function runs in, and checked conversions
//! of the pointers C hands in.

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::codes::*;

/// A failure on its way to C: a `BPZ_ERR_*` code and the message
/// `bpz_last_error_message` will return.
#[derive(Debug)]
pub(crate) struct Failure {
    pub code: c_int,
    pub message: String,
}

impl Failure {
    pub fn new(code: c_int, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    pub fn null(func: &str, arg: &str) -> Self {
        Failure::new(
            BPZ_ERR_NULL_ARGUMENT,
            format!("{func}: argument `{arg}` is NULL"),
        )
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Failure::new(BPZ_ERR_INVALID_ARGUMENT, message)
    }
}

impl From<bpz_core::Error> for Failure {
    fn from(e: bpz_core::Error) -> Self {
        Failure::new(code_of_kind(e.kind()), e.to_string())
    }
}

pub(crate) type Result<T> = std::result::Result<T, Failure>;

const EMPTY: &[u8] = b"\0";

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // A message never contains NUL in practice (paths and names can't), but a
    // C string must not: replace rather than lose the message.
    let text = CString::new(message.replace('\0', "\u{fffd}")).unwrap_or_default();
    // `try_with` fails only while the thread is being torn down.
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = text);
}

/// The current thread's last message ("" if nothing failed yet). Stays valid
/// until the next failure on this thread replaces the string.
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR
        .try_with(|slot| slot.borrow().as_ptr())
        .unwrap_or(EMPTY.as_ptr().cast())
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Runs `body`; an error or a panic becomes its code, with the message stored
/// for `bpz_last_error_message`. Nothing unwinds past this.
fn run<T>(body: impl FnOnce() -> Result<T>) -> std::result::Result<T, c_int> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(failure)) => {
            set_last_error(&failure.message);
            Err(failure.code)
        }
        Err(payload) => {
            let message = format!(
                "bpz: internal error (a Rust panic): {}; please report it",
                panic_message(&*payload)
            );
            // A payload's destructor could itself panic: drop it under a guard too.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            set_last_error(&message);
            Err(BPZ_ERR_PANIC)
        }
    }
}

/// For functions that return a value: `on_error` when `body` fails or panics.
pub(crate) fn guard<T>(on_error: T, body: impl FnOnce() -> Result<T>) -> T {
    run(body).unwrap_or(on_error)
}

/// For functions that return a status: `BPZ_OK` or the failure's code.
pub(crate) fn status(body: impl FnOnce() -> Result<()>) -> c_int {
    match run(body) {
        Ok(()) => BPZ_OK,
        Err(code) => code,
    }
}

/// For functions that return a non-negative answer or a status: the answer, or the
/// failure's (negative) code.
pub(crate) fn answer(body: impl FnOnce() -> Result<c_int>) -> c_int {
    match run(body) {
        Ok(value) => value,
        Err(code) => code,
    }
}

// ------------------------------------------------------------ pointers from C

/// A shared reference from a C pointer: NULL is an error.
///
/// # Safety
/// A non-NULL `p` must point to a live `T` for `'a`.
pub(crate) unsafe fn deref<'a, T>(p: *const T, func: &str, arg: &str) -> Result<&'a T> {
    // SAFETY: the caller's contract.
    unsafe { p.as_ref() }.ok_or_else(|| Failure::null(func, arg))
}

/// Checks an out-pointer: not NULL, aligned for `T`.
pub(crate) fn out_ptr<T>(p: *mut T, func: &str, arg: &str) -> Result<*mut T> {
    if p.is_null() {
        return Err(Failure::null(func, arg));
    }
    if (p as usize) % std::mem::align_of::<T>() != 0 {
        return Err(Failure::invalid(format!(
            "{func}: argument `{arg}` ({p:p}) is not aligned to {} bytes",
            std::mem::align_of::<T>()
        )));
    }
    Ok(p)
}

/// A NUL-terminated string from C.
///
/// # Safety
/// A non-NULL `p` must point to a NUL-terminated string that lives for `'a`.
pub(crate) unsafe fn c_str<'a>(p: *const c_char, func: &str, arg: &str) -> Result<&'a CStr> {
    if p.is_null() {
        return Err(Failure::null(func, arg));
    }
    // SAFETY: the caller's contract.
    Ok(unsafe { CStr::from_ptr(p) })
}

/// The caller's output buffer as a slice. NULL is accepted for an empty buffer
/// (what `malloc(0)` may return); a length no Rust slice can have is refused.
///
/// # Safety
/// A non-NULL `p` must point to `len` writable bytes, not otherwise borrowed,
/// for `'a`.
pub(crate) unsafe fn out_buffer<'a>(
    p: *mut c_void,
    len: usize,
    func: &str,
) -> Result<&'a mut [u8]> {
    if len == 0 {
        return Ok(&mut []);
    }
    if p.is_null() {
        return Err(Failure::null(func, "buf"));
    }
    if len > isize::MAX as usize {
        return Err(Failure::invalid(format!(
            "{func}: buffer length {len} is impossibly large"
        )));
    }
    // SAFETY: non-NULL, length bounded as slices require; the caller
    // guarantees the memory.
    Ok(unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), len) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last() -> String {
        // SAFETY: the pointer is to this thread's current message.
        unsafe { CStr::from_ptr(last_error_ptr()) }
            .to_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn a_panic_becomes_a_code_and_a_message() {
        let quiet = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        assert_eq!(status(|| panic!("boom {}", 42)), BPZ_ERR_PANIC);
        let message = last();
        assert_eq!(guard(7u8, || std::panic::panic_any(3.5f64)), 7);
        let opaque = last();
        std::panic::set_hook(quiet);
        assert!(
            message.contains("panic") && message.contains("boom 42"),
            "{message}"
        );
        assert!(opaque.contains("(no message)"), "{opaque}");
    }

    #[test]
    fn failures_set_the_message_and_successes_keep_it() {
        assert_eq!(
            status(|| Err(Failure::invalid("first\0problem"))),
            BPZ_ERR_INVALID_ARGUMENT
        );
        assert_eq!(last(), "first\u{fffd}problem");
        assert_eq!(status(|| Ok(())), BPZ_OK);
        assert_eq!(last(), "first\u{fffd}problem");
        assert_eq!(guard(0usize, || Err(Failure::null("f", "x"))), 0);
        assert_eq!(last(), "f: argument `x` is NULL");
    }

    #[test]
    fn pointers_are_checked() {
        assert_eq!(
            out_ptr(std::ptr::null_mut::<u64>(), "f", "p")
                .unwrap_err()
                .code,
            BPZ_ERR_NULL_ARGUMENT
        );
        let mut words = [0u64; 2];
        let odd = (words.as_mut_ptr() as *mut u8).wrapping_add(1) as *mut u64;
        assert_eq!(
            out_ptr(odd, "f", "p").unwrap_err().code,
            BPZ_ERR_INVALID_ARGUMENT
        );
        assert!(out_ptr(words.as_mut_ptr(), "f", "p").is_ok());
        // SAFETY: NULL and empty, or a real buffer of the given length.
        unsafe {
            assert!(out_buffer(std::ptr::null_mut(), 0, "f").unwrap().is_empty());
            assert_eq!(
                out_buffer(std::ptr::null_mut(), 1, "f").unwrap_err().code,
                BPZ_ERR_NULL_ARGUMENT
            );
            let p = words.as_mut_ptr().cast();
            assert_eq!(
                out_buffer(p, usize::MAX, "f").unwrap_err().code,
                BPZ_ERR_INVALID_ARGUMENT
            );
            assert_eq!(out_buffer(p, 16, "f").unwrap().len(), 16);
            assert_eq!(
                c_str(std::ptr::null(), "f", "s").unwrap_err().code,
                BPZ_ERR_NULL_ARGUMENT
            );
        }
    }
}
