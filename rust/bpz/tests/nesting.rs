//! Issue 11, item 15a: tree or metadata nested deeper than the format allows is valid
//! JSON, only too deep. Writer and reader say so with `limit_exceeded`, never "not JSON".

use bpz::format::{Superblock, Trailer, MAX_JSON_DEPTH};
use bpz::{DType, Reader, Writer, WriterOptions};
use serde_json::Value;

fn nested(levels: usize) -> Value {
    (0..levels).fold(Value::from(1), |v, _| Value::Array(vec![v]))
}

fn writer() -> Writer<Vec<u8>> {
    let mut w = Writer::new(Vec::new(), WriterOptions::default()).unwrap();
    w.add_tensor("x", DType::U8, &[1], &[1]).unwrap();
    w
}

fn assert_too_deep(err: &bpz::Error, what: &str, depth: usize) {
    let msg = err.to_string();
    assert_eq!(err.kind(), "limit_exceeded", "{msg}");
    assert!(
        msg.contains(what)
            && msg.contains("nested deeper than")
            && msg.contains(&format!("{MAX_JSON_DEPTH} levels")),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "is {depth}, over the limit of {}",
            MAX_JSON_DEPTH - 1
        )),
        "{msg}"
    );
    assert!(!msg.contains("not valid JSON"), "{msg}");
}

#[test]
fn metadata_nested_200_deep_is_too_deep_not_invalid() {
    let mut w = writer();
    w.set_metadata(nested(200));
    assert_too_deep(&w.finish().unwrap_err(), "metadata", 200);

    let mut w = writer();
    let text = "[".repeat(200) + &"]".repeat(200);
    assert_too_deep(&w.set_metadata_json(&text).unwrap_err(), "metadata", 200);
}

#[test]
fn a_tree_nested_too_deep_is_named() {
    let mut w = writer();
    let mut tree = serde_json::json!({"tensor": "x"});
    for _ in 0..150 {
        tree = serde_json::json!({ "list": [tree] });
    }
    w.set_tree(tree);
    assert_too_deep(&w.finish().unwrap_err(), "tree", 301);
    let mut w = writer();
    assert_too_deep(
        &w.set_tree_json(&("[".repeat(130) + &"]".repeat(130)))
            .unwrap_err(),
        "tree",
        130,
    );
}

#[test]
fn the_limit_is_exact_and_invalid_text_is_still_invalid() {
    let mut w = writer();
    w.set_metadata(nested(MAX_JSON_DEPTH - 1));
    let (_, bytes) = w.finish().unwrap();
    let r = Reader::from_bytes(bytes.unwrap()).unwrap();
    assert_eq!(r.read("x").unwrap(), [1]);

    let mut w = writer();
    w.set_metadata(nested(MAX_JSON_DEPTH));
    assert_too_deep(&w.finish().unwrap_err(), "metadata", MAX_JSON_DEPTH);

    let mut w = writer();
    let err = w.set_metadata_json("[1, 2").unwrap_err();
    assert_eq!(err.kind(), "invalid_argument");
    assert!(
        err.to_string().contains("metadata is not valid JSON"),
        "{err}"
    );
    w.set_metadata_json(r#"{"lr": [0.1, [2]]}"#).unwrap();
}

/// An archive written by something else with an index nested 200 deep.
#[test]
fn a_reader_reports_a_too_deep_index_as_a_limit() {
    let index = format!(
        r#"{{"tensors":[],"tree":null,"metadata":{}}}"#,
        "[".repeat(199) + &"]".repeat(199)
    );
    let mut bytes = Superblock::new(64).encode().to_vec();
    let trailer = Trailer {
        index_offset: 64,
        index_len: index.len() as u64,
        index_crc32c: crc32c::crc32c(index.as_bytes()),
    };
    bytes.extend_from_slice(index.as_bytes());
    bytes.extend_from_slice(&trailer.encode());
    let err = Reader::from_bytes(bytes).unwrap_err();
    assert_eq!(err.kind(), "limit_exceeded", "{err}");
    assert!(
        err.to_string().contains("200, over the limit of 128"),
        "{err}"
    );
}
