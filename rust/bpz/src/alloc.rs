//! Allocations whose sizes come from files: refused with an error, never an abort, and
//! checked against the memory this process can still use before a load touches it.

use crate::error::{Error, Result};

/// Refuses (with [`Error::LimitExceeded`]) to allocate `bytes` for `what` of the archive
/// `label` when they exceed the memory this process can still use ([`memory_available`]):
/// the sizes come from the file, and touching more would get the process killed, not an
/// error. Small requests are not checked (reading the limits costs a few system calls).
/// `BPZ_MEMORY_CHECK=0` turns the check off (for a system whose limits bpz misreads).
pub fn ensure_memory(label: &str, bytes: u64, what: &str) -> Result<()> {
    if bytes < MEMORY_CHECK_MIN
        || !memory_check_enabled(std::env::var_os(MEMORY_CHECK_VAR).as_deref())
    {
        return Ok(());
    }
    check_memory(label, bytes, what, memory_available())
}

fn check_memory(label: &str, bytes: u64, what: &str, available: Option<u64>) -> Result<()> {
    match available {
        Some(available) if bytes > available => Err(Error::limit(
            label,
            format!(
                "the memory in bytes needed to read {what} (limited by the memory this process can \
                 still use; set {MEMORY_CHECK_VAR}=0 to skip this check)"
            ),
            bytes,
            available,
        )),
        _ => Ok(()),
    }
}

/// The environment variable that turns the memory check of loads off when set to `0`
/// (or `false`, `no`, `off`).
pub const MEMORY_CHECK_VAR: &str = "BPZ_MEMORY_CHECK";

/// Whether loads check the memory left, given the value of [`MEMORY_CHECK_VAR`].
pub(crate) fn memory_check_enabled(value: Option<&std::ffi::OsStr>) -> bool {
    let Some(value) = value.and_then(|v| v.to_str()) else {
        return true;
    };
    !["0", "false", "no", "off"].contains(&value.trim().to_ascii_lowercase().as_str())
}

/// Allocations below this are not checked against [`memory_available`].
pub const MEMORY_CHECK_MIN: u64 = 64 << 20;

/// A zeroed buffer, or `None` if the allocator refuses (never an abort: sizes
/// come from files). Zeroed allocation maps fresh pages lazily, so the pages
/// are touched once, by the read that fills them.
pub fn try_zeroed_vec(n: usize) -> Option<Vec<u8>> {
    if n == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<u8>(n).ok()?;
    // SAFETY: the layout has non-zero size; a non-null result is an allocation
    // of `n` zeroed bytes with u8's alignment, exactly what Vec<u8> expects.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout);
        (!ptr.is_null()).then(|| Vec::from_raw_parts(ptr, n, n))
    }
}

/// Outputs at least this large get their own huge-page-advised map.
const HUGE_PAGE_MIN: usize = 4 << 20;

/// A zeroed, writable buffer for a load's output, owned so that a binding can hand it out
/// without a copy. Large ones are anonymous maps advised to use huge pages (as NumPy does
/// for its own large arrays): a load is bound by page faults on fresh memory, and a 2 MiB
/// page faults once instead of 512 times.
pub struct Zeroed(ZeroedInner);

enum ZeroedInner {
    Heap(Vec<u8>),
    Map(memmap2::MmapMut),
}

impl Zeroed {
    /// `len` zeroed bytes, or `None` if refused (never an abort: sizes come from files).
    pub fn new(len: usize) -> Option<Zeroed> {
        if len < HUGE_PAGE_MIN {
            return try_zeroed_vec(len).map(|v| Zeroed(ZeroedInner::Heap(v)));
        }
        let map = memmap2::MmapMut::map_anon(len).ok()?;
        #[cfg(target_os = "linux")]
        {
            // Advice only: where huge pages are off or unavailable this fails harmlessly.
            let _ = map.advise(memmap2::Advice::HugePage);
        }
        Some(Zeroed(ZeroedInner::Map(map)))
    }
}

impl From<Vec<u8>> for Zeroed {
    fn from(v: Vec<u8>) -> Zeroed {
        Zeroed(ZeroedInner::Heap(v))
    }
}

impl std::ops::Deref for Zeroed {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            ZeroedInner::Heap(v) => v,
            ZeroedInner::Map(m) => m,
        }
    }
}

impl std::ops::DerefMut for Zeroed {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.0 {
            ZeroedInner::Heap(v) => v,
            ZeroedInner::Map(m) => m,
        }
    }
}

impl AsMut<[u8]> for Zeroed {
    fn as_mut(&mut self) -> &mut [u8] {
        self
    }
}

impl std::fmt::Debug for Zeroed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Zeroed({} bytes)", self.len())
    }
}

/// Bytes this process can still allocate and use without being killed: the least of
/// free memory (with reclaimable cache) plus free swap, what its cgroup's memory limit
/// leaves, and what its address-space limit leaves. `None` where that is not known.
pub fn memory_available() -> Option<u64> {
    #[cfg(test)]
    MEMORY_QUERIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    memory::available()
}

#[cfg(target_os = "linux")]
mod memory {
    use std::fs;

    /// A `Key:   123 kB` field of /proc/meminfo or a `key 123` field of memory.stat, in bytes.
    fn field(text: &str, key: &str, scale: u64) -> Option<u64> {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(key)?;
            let rest = rest.strip_prefix(':').unwrap_or(rest);
            rest.split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
                .map(|v| v.saturating_mul(scale))
        })
    }

    fn number(path: &str) -> Option<u64> {
        fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    fn system() -> Option<u64> {
        let info = fs::read_to_string("/proc/meminfo").ok()?;
        let available = field(&info, "MemAvailable", 1024)?;
        Some(available.saturating_add(field(&info, "SwapFree", 1024).unwrap_or(0)))
    }

    /// What the tightest cgroup (v2, else v1) limit leaves; page cache counts as free.
    fn cgroup() -> Option<u64> {
        let own = fs::read_to_string("/proc/self/cgroup").ok()?;
        let mut least: Option<u64> = None;
        if let Some(path) = own.lines().find_map(|l| l.strip_prefix("0::")) {
            let mut dir = format!("/sys/fs/cgroup{}", path.trim_end_matches('/'));
            loop {
                if let (Some(max), Some(current)) = (
                    number(&format!("{dir}/memory.max")),
                    number(&format!("{dir}/memory.current")),
                ) {
                    let cache = fs::read_to_string(format!("{dir}/memory.stat"))
                        .ok()
                        .and_then(|s| field(&s, "file ", 1))
                        .unwrap_or(0);
                    let left = max.saturating_sub(current.saturating_sub(cache));
                    least = Some(least.map_or(left, |l| l.min(left)));
                }
                match dir.rfind('/') {
                    Some(i) if dir.len() > "/sys/fs/cgroup".len() => dir.truncate(i),
                    _ => break,
                }
            }
            return least;
        }
        let base = "/sys/fs/cgroup/memory";
        let max = number(&format!("{base}/memory.limit_in_bytes"))?;
        let usage = number(&format!("{base}/memory.usage_in_bytes"))?;
        let cache = fs::read_to_string(format!("{base}/memory.stat"))
            .ok()
            .and_then(|s| field(&s, "cache ", 1))
            .unwrap_or(0);
        Some(max.saturating_sub(usage.saturating_sub(cache)))
    }

    fn address_space() -> Option<u64> {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } != 0
            || lim.rlim_cur == libc::RLIM_INFINITY
        {
            return None;
        }
        let pages: u64 = fs::read_to_string("/proc/self/statm")
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
        Some(lim.rlim_cur.saturating_sub(pages.saturating_mul(page)))
    }

    pub fn available() -> Option<u64> {
        [system(), cgroup(), address_space()]
            .into_iter()
            .flatten()
            .min()
    }
}

#[cfg(not(target_os = "linux"))]
mod memory {
    pub fn available() -> Option<u64> {
        None
    }
}

/// Calls of [`memory_available`] (each reads /proc and /sys files).
#[cfg(test)]
pub(crate) static MEMORY_QUERIES: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_check_can_be_turned_off() {
        let on = |v: &str| memory_check_enabled(Some(std::ffi::OsStr::new(v)));
        assert!(memory_check_enabled(None));
        assert!(on("1") && on("") && on("yes"));
        assert!(!on("0") && !on(" 0 ") && !on("false") && !on("OFF") && !on("no"));
        let e = check_memory("<memory>", 100 << 20, "x", Some(10 << 20)).unwrap_err();
        assert_eq!(e.kind(), "limit_exceeded");
        assert!(
            e.to_string()
                .contains("set BPZ_MEMORY_CHECK=0 to skip this check"),
            "{e}"
        );
        check_memory("<memory>", 100 << 20, "x", Some(200 << 20)).unwrap();
        check_memory("<memory>", 100 << 20, "x", None).unwrap();
    }
}
