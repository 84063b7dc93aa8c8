//! Issue 11, item 12: a million small tensors. The writer's cost per tensor must not
//! include copies of its table: `finish` streams the index from what the writer holds,
//! adding a tensor stores its name once, and a tree given as compact JSON text is kept
//! as it is. The bytes written stay those of the reference serialisation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bpz::format::{MAX_INDEX_BYTES, MAX_JSON_DEPTH};
use bpz::{Compression, DType, FormatVersion, Reader, TensorOptions, Writer, WriterOptions};
use serde_json::Value;

/// Counts the allocations of the current thread (tests run on several threads).
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATIONS.with(Cell::get);
    let out = f();
    (out, ALLOCATIONS.with(Cell::get) - before)
}

fn scalars(n: usize) -> Writer<Vec<u8>> {
    let mut w = Writer::new(Vec::with_capacity(n * 64 + 4096), WriterOptions::default()).unwrap();
    for i in 0..n {
        w.add_tensor(&format!("k{i}"), DType::F32, &[], &(i as f32).to_le_bytes())
            .unwrap();
    }
    w
}

/// Before: `finish` copied every tensor's entry (name, strings, shape, chunk table:
/// six allocations a tensor) and built the whole index in memory.
#[test]
fn finish_allocates_nothing_per_tensor() {
    for n in [2_000, 40_000] {
        let w = scalars(n);
        let ((_, bytes), count) = allocations(|| w.finish().unwrap());
        let bytes = bytes.unwrap();
        assert!(count < 40, "{n} tensors: finish made {count} allocations");
        assert_eq!(
            Reader::from_bytes(bytes).unwrap().tensors().unwrap().len(),
            n
        );
    }
}

/// Before: four allocations a 0-d tensor (a second copy of its name for the set of
/// names, and a checksum list besides its chunk table). Now its name and its table.
#[test]
fn adding_a_scalar_allocates_its_name_and_chunk_table_only() {
    let n = 40_000;
    let names: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
    let mut w = Writer::new(Vec::with_capacity(n * 64 + 4096), WriterOptions::default()).unwrap();
    w.reserve(n);
    let (_, count) = allocations(|| {
        for (i, name) in names.iter().enumerate() {
            w.add_tensor(name, DType::F32, &[], &(i as f32).to_le_bytes())
                .unwrap();
        }
    });
    assert!(count <= 2 * n + 16, "{count} allocations for {n} tensors");
    // Repeats are still refused, whichever tensor they repeat.
    for name in ["k0", "k39999", "k20000"] {
        let err = w.add_tensor(name, DType::F32, &[], &[0; 4]).unwrap_err();
        assert!(err.to_string().contains("already added"), "{err}");
    }
    w.add_tensor("k40000", DType::F32, &[], &[0; 4]).unwrap();
}

#[test]
fn repeated_names_are_refused_as_the_table_grows() {
    let mut w = Writer::new(Vec::new(), WriterOptions::default()).unwrap();
    let name = |i: usize| format!("{}/{i}", "x".repeat(i % 7));
    for i in 0..5_000 {
        w.add_tensor(&name(i), DType::U8, &[1], &[1]).unwrap();
        // Every earlier name, at every size the table passes through, now and then.
        if i % 499 == 0 {
            for j in 0..=i {
                assert!(
                    w.add_tensor(&name(j), DType::U8, &[1], &[1]).is_err(),
                    "{j} accepted twice"
                );
            }
        }
    }
    assert_eq!(w.tensors().len(), 5_000);
}

fn tree_of(n: usize) -> Value {
    let items: Vec<Value> = (0..n)
        .map(|i| serde_json::json!([format!("k{i}"), {"tensor": format!("k{i}"), "py": "numpy_scalar", "x": [i, -0.5, null, true, "é\"\u{1}"]}]))
        .collect();
    serde_json::json!({"dict": items, "big": 18446744073709551615u64, "f": 1e300})
}

fn archive(tree: impl FnOnce(&mut Writer<Vec<u8>>)) -> Vec<u8> {
    let opts = WriterOptions {
        time_ns: Some(0),
        ..WriterOptions::default()
    };
    let mut w = Writer::new(Vec::new(), opts).unwrap();
    for i in 0..300 {
        w.add_tensor(&format!("k{i}"), DType::F32, &[], &(i as f32).to_le_bytes())
            .unwrap();
    }
    let zeros = vec![0u8; 3 << 20];
    let chunked = TensorOptions {
        compression: Some(Compression::Zstd),
        ..Default::default()
    };
    w.add_tensor_with("zeros \"/~\n", DType::I16, &[3, 1 << 19], &zeros, &chunked)
        .unwrap();
    w.set_metadata(serde_json::json!({"lr": 1.5e-3}));
    tree(&mut w);
    w.finish().unwrap().1.unwrap()
}

/// The three ways of giving a tree write the same bytes when the text is compact.
#[test]
fn a_verbatim_tree_writes_the_bytes_of_a_parsed_one() {
    let tree = tree_of(300);
    let compact = serde_json::to_string(&tree).unwrap();
    let pretty = serde_json::to_string_pretty(&tree).unwrap();
    let a = archive(|w| w.set_tree(tree.clone()));
    let b = archive(|w| w.set_tree_json(&pretty).unwrap());
    let c = archive(|w| w.set_tree_json_verbatim(compact.clone()).unwrap());
    assert!(a == b && b == c);
    // Other text is stored as given, and read back as given.
    let d = archive(|w| w.set_tree_json_verbatim(pretty.clone()).unwrap());
    let r = Reader::from_bytes(d).unwrap();
    assert_eq!(r.tree_json().unwrap(), pretty);
    assert_eq!(r.tree().unwrap(), tree);
}

#[test]
fn a_verbatim_tree_is_checked() {
    let mut w = Writer::new(Vec::new(), WriterOptions::default()).unwrap();
    for bad in [
        "",
        "{",
        "{\"a\":1,}",
        "[1] [2]",
        "{\"a\":1,\"a\":2}",
        "NaN",
        "1e400",
        "\"\u{1}\"",
        "{\"tensor\": 'x'}",
    ] {
        let err = w.set_tree_json_verbatim(bad.into()).unwrap_err();
        assert_eq!(err.kind(), "invalid_argument", "{bad:?}: {err}");
        assert!(
            err.to_string().contains("tree is not valid JSON"),
            "{bad:?}: {err}"
        );
    }
    let nest = |n: usize| "[".repeat(n) + &"]".repeat(n);
    // (A reader wants an object: the last one set below is one.)
    let deepest = format!("{{\"a\":{}}}", nest(MAX_JSON_DEPTH - 2));
    w.set_tree_json_verbatim(nest(MAX_JSON_DEPTH - 1)).unwrap();
    for depth in [MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, 100_000] {
        let err = w.set_tree_json_verbatim(nest(depth)).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.kind(), "limit_exceeded", "{msg}");
        assert!(
            msg.contains(&format!(
                "is {depth}, over the limit of {}",
                MAX_JSON_DEPTH - 1
            )),
            "{msg}"
        );
    }
    // A refused tree leaves the one set before.
    w.set_tree_json_verbatim(deepest.clone()).unwrap();
    assert!(w.set_tree_json_verbatim("[1,]".into()).is_err());
    w.add_tensor("x", DType::U8, &[1], &[1]).unwrap();
    let bytes = w.finish().unwrap().1.unwrap();
    assert_eq!(
        Reader::from_bytes(bytes).unwrap().tree_json().unwrap(),
        deepest
    );
}

/// The index is streamed; one over the limit is still refused, with its exact size,
/// and the destination is left as it was.
#[test]
fn an_index_over_the_limit_is_refused_with_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("a.bpz");
    std::fs::write(&dest, b"previous").unwrap();
    let text = format!("{{\"x\":\"{}\"}}", "a".repeat(MAX_INDEX_BYTES as usize));
    // The 1.0 JSON index, measured as it streams (a 1.1 index is sized before it is written).
    let opts = WriterOptions {
        sync: false,
        format: FormatVersion::V1_0,
        ..WriterOptions::default()
    };
    let mut w = Writer::create(&dest, opts.clone()).unwrap();
    w.add_tensor("x", DType::U8, &[1], &[1]).unwrap();
    w.set_tree_json_verbatim(text.clone()).unwrap();
    let err = w.finish().unwrap_err().to_string();
    // The same index with a tree of `null`, made in memory, gives the size around the tree.
    let mut reference = Writer::new(Vec::new(), opts).unwrap();
    reference.add_tensor("x", DType::U8, &[1], &[1]).unwrap();
    let bytes = reference.finish().unwrap().1.unwrap();
    let start = bytes
        .windows(11)
        .position(|w| w == b"{\"tensors\":")
        .unwrap();
    let index = std::str::from_utf8(&bytes[start..bytes.len() - 32]).unwrap();
    assert_eq!(index.matches("\"tree\":null").count(), 1, "{index}");
    let expected = index.len() - "null".len() + text.len();
    assert!(
        err.contains(&format!(
            "index of {expected} bytes is over the limit of {MAX_INDEX_BYTES}"
        )),
        "{err}"
    );
    assert_eq!(std::fs::read(&dest).unwrap(), b"previous");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}
