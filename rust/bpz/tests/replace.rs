//! Saving over an existing path: the destination is always a whole archive, old or new,
//! and no temporary file is left behind, whatever already sits at that path.

use std::fs;
use std::path::Path;

use bpz::*;

fn save(path: &Path, value: u8) -> Result<()> {
    let opts = WriterOptions {
        compression: Compression::None,
        ..Default::default()
    };
    let mut w = Writer::create(path, opts)?;
    w.add_tensor("x", DType::U8, &[3 << 20], &vec![value; 3 << 20])?;
    w.finish().map(drop)
}

fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".bpz-tmp"))
        .collect()
}

#[test]
fn replacing_a_file_leaves_the_new_archive_and_no_temporary() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("m.bpz");
    save(&p, 1).unwrap(); // a new path
    let old = Reader::open(&p).unwrap();
    for v in 2..5 {
        save(&p, v).unwrap(); // over an existing archive
        assert_eq!(Reader::open(&p).unwrap().read("x").unwrap()[0], v);
        assert_eq!(leftovers(d.path()), Vec::<String>::new());
    }
    // A reader of the replaced file still sees its own (old) bytes.
    assert_eq!(old.view("x").unwrap()[0], 1);
}

#[test]
fn a_directory_at_the_destination_is_an_error_and_stays_where_it_is() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("m.bpz");
    fs::create_dir(&p).unwrap();
    fs::write(p.join("inside"), b"keep").unwrap();
    let err = save(&p, 1).unwrap_err();
    assert_eq!(err.kind(), "io", "{err}");
    assert!(
        err.to_string()
            .contains("is a directory, not a regular file; refusing"),
        "{err}"
    );
    assert_eq!(fs::read(p.join("inside")).unwrap(), b"keep");
    assert_eq!(leftovers(d.path()), Vec::<String>::new());
}

/// A symlink is saved through (as editors do): the file it leads to is replaced in its own
/// directory, and the link stays. (Until issue 11 the link itself was replaced.)
#[cfg(unix)]
#[test]
fn a_symlink_at_the_destination_is_followed_and_kept() {
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("target.bin");
    fs::write(&target, b"not an archive").unwrap();
    let p = d.path().join("m.bpz");
    std::os::unix::fs::symlink(&target, &p).unwrap();
    save(&p, 7).unwrap();
    assert!(fs::symlink_metadata(&p).unwrap().file_type().is_symlink());
    assert_eq!(Reader::open(&target).unwrap().read("x").unwrap()[0], 7);
    assert_eq!(Reader::open(&p).unwrap().read("x").unwrap()[0], 7);
    assert_eq!(leftovers(d.path()), Vec::<String>::new());
}
