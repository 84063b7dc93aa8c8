//! What both targets do with an archive that opened: every read path, with sizes bounded
//! so that one input cannot take the fuzzer's whole memory or time budget.

use bpz::{Reader, VerifyOptions};

/// Largest decoded tensor read whole (the reader itself accepts up to 2^53 bytes).
const MAX_READ: u64 = 16 << 20;
/// Largest total decoded size verified.
const MAX_VERIFY: u64 = 64 << 20;

pub fn exercise(r: &Reader) {
    // A 1.0 index was checked whole on open: its tree and metadata must parse. A 1.1 index
    // is checked as it is read: they may fail, with a typed error.
    let checked_on_open =
        r.superblock().required_features & bpz::binindex::REQUIRED_BINARY_INDEX == 0;
    for part in [r.tree().map(drop), r.metadata().map(drop)] {
        if checked_on_open {
            part.expect("a checked tree and metadata parse");
        }
    }
    let Ok(tensors) = r.tensors() else {
        let _ = r.verify();
        return;
    };
    let mut total = 0u64;
    for t in tensors {
        assert!(t.chunks.len() as u64 <= t.num_elements().max(1));
        total = total.saturating_add(t.nbytes());
        if let Ok(v) = r.view(&t.name) {
            assert_eq!(v.len() as u64, t.nbytes());
        }
        if t.nbytes() <= MAX_READ {
            if let Ok(v) = r.read(&t.name) {
                assert_eq!(v.len() as u64, t.nbytes());
                // A row range must equal the same bytes of the whole read.
                let rows = t.rows();
                if rows > 0 {
                    let (a, b) = (rows / 3, rows - rows / 3);
                    if a <= b {
                        let part = r.read_rows(&t.name, a..b).expect("rows of a readable tensor");
                        let row = (t.row_elems() * t.dtype.size() as u64) as usize;
                        assert_eq!(part, v[a as usize * row..b as usize * row]);
                    }
                }
            }
        }
        if t.chunks.first().map_or(0, |_| t.chunk_elems.min(t.num_elements()) * t.dtype.size() as u64) <= MAX_READ {
            let _ = r.read_rows(&t.name, 0..t.rows().min(1));
        }
    }
    // verify() checks stored bytes only; it never decodes, so it runs whatever the sizes.
    let stored_ok = r.verify().is_ok();
    if total <= MAX_VERIFY {
        let opts = VerifyOptions { decode: true, max_decoded_bytes: Some(MAX_VERIFY) };
        // A decoding verify that passes means every tensor reads back, and implies the
        // checksum-only verify passes too.
        if r.verify_with(&opts).is_ok() {
            assert!(stored_ok, "verify_with(decode) passed where verify() failed");
            for t in tensors {
                if t.nbytes() <= MAX_READ {
                    r.read(&t.name).expect("a verified tensor must read");
                }
            }
        }
    }
}
