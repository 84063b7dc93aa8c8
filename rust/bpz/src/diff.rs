//! What changed between two archives, or two versions of one (`bpz diff`), tensor by tensor.

use crate::error::Result;
use crate::format::TensorInfo;
use crate::read::Reader;

/// Tensors compared by name. Every list is sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diff {
    /// Only in the second archive.
    pub added: Vec<String>,
    /// Only in the first.
    pub removed: Vec<String>,
    /// In both, with another dtype, shape or content.
    pub changed: Vec<String>,
    /// In both, equal.
    pub unchanged: Vec<String>,
    /// How many of the tensors in both were compared by reading their data rather than
    /// their content hashes (see [`diff`]).
    pub compared_by_reading: usize,
}

/// Decoded bytes compared at once when tensors are compared by reading.
const READ_BLOCK: u64 = 16 << 20;

/// Compares the tensors of `a` and `b` by name: dtype, shape, and content. In 1.1
/// archives the content is compared by the chunks' content hashes (spec §16.3), from the
/// indexes alone: no tensor data is read. A 1.0 archive has no hashes, and two tensors
/// split into chunks differently have hashes of different element ranges: those pairs are
/// read (row blocks of about 16 MiB from each) and compared byte for byte.
pub fn diff(a: &Reader, b: &Reader) -> Result<Diff> {
    let mut left: Vec<&TensorInfo> = a.tensors()?.iter().collect();
    let mut right: Vec<&TensorInfo> = b.tensors()?.iter().collect();
    left.sort_unstable_by(|x, y| x.name.cmp(&y.name));
    right.sort_unstable_by(|x, y| x.name.cmp(&y.name));
    let mut d = Diff::default();
    let (mut i, mut j) = (0, 0);
    while i < left.len() || j < right.len() {
        let order = match (left.get(i), right.get(j)) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                d.removed.push(left[i].name.clone());
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                d.added.push(right[j].name.clone());
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (left[i], right[j]);
                let same = if x.dtype != y.dtype || x.shape != y.shape {
                    false
                } else if let Some(same) = same_by_hashes(x, y) {
                    same
                } else {
                    d.compared_by_reading += 1;
                    same_by_reading(a, x, b, y)?
                };
                if same {
                    &mut d.unchanged
                } else {
                    &mut d.changed
                }
                .push(x.name.clone());
                i += 1;
                j += 1;
            }
        }
    }
    Ok(d)
}

/// Equal content, if the hashes tell: both tensors (of one dtype and shape) split the same
/// way, every chunk hashed.
fn same_by_hashes(x: &TensorInfo, y: &TensorInfo) -> Option<bool> {
    if x.chunk_elems != y.chunk_elems || x.chunks.len() != y.chunks.len() {
        return None;
    }
    let mut same = true;
    for (p, q) in x.chunks.iter().zip(&y.chunks) {
        same &= p.hash? == q.hash?;
    }
    Some(same)
}

fn same_by_reading(a: &Reader, x: &TensorInfo, b: &Reader, y: &TensorInfo) -> Result<bool> {
    if x.nbytes() == 0 {
        return Ok(true);
    }
    let row = x.row_elems() * x.dtype.size() as u64;
    let per_read = (READ_BLOCK / row.max(1)).max(1);
    let rows = x.rows();
    let mut at = 0;
    while at < rows {
        let end = rows.min(at + per_read);
        if a.read_rows(&x.name, at..end)? != b.read_rows(&y.name, at..end)? {
            return Ok(false);
        }
        at = end;
    }
    Ok(true)
}
