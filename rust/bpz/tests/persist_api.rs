//! `persist::TempFile` as other writers use it (the Python package's .npz/.h5/.bp writers):
//! bytes written through the open file or its name get the same destination rules as
//! archives — permissions and owner kept, symlinks followed, non-regular files refused —
//! and a temporary replaced by its writer is refused at commit.
#![cfg(target_os = "linux")]

use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use bpz::persist::TempFile;

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn bytes_written_through_the_file_replace_a_private_file_keeping_its_mode() {
    let d = tempfile::tempdir().unwrap();
    let dest = d.path().join("private.npz");
    fs::write(&dest, b"old").unwrap();
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o600)).unwrap();
    let tmp = TempFile::create(&dest, true, true).unwrap();
    assert_eq!(mode(tmp.temp_path()), 0o600);
    tmp.file().write_all(b"new").unwrap();
    tmp.commit().unwrap();
    assert_eq!(
        (fs::read(&dest).unwrap(), mode(&dest)),
        (b"new".to_vec(), 0o600)
    );
    assert_eq!(names(d.path()), ["private.npz"]);
}

#[test]
fn a_writer_opening_the_temporary_by_name_saves_through_a_symlink() {
    let d = tempfile::tempdir().unwrap();
    let real = d.path().join("real.h5");
    fs::write(&real, b"old").unwrap();
    fs::set_permissions(&real, fs::Permissions::from_mode(0o640)).unwrap();
    let link = d.path().join("link.h5");
    symlink("real.h5", &link).unwrap();
    let tmp = TempFile::create(&link, false, true).unwrap();
    assert_eq!(tmp.target(), real.as_path());
    fs::write(tmp.temp_path(), b"new").unwrap(); // open(O_TRUNC): the same file
    tmp.commit().unwrap();
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        (fs::read(&real).unwrap(), mode(&real)),
        (b"new".to_vec(), 0o640)
    );
}

#[test]
fn a_temporary_replaced_by_its_writer_is_refused_and_removed() {
    let d = tempfile::tempdir().unwrap();
    let dest = d.path().join("s.pkl");
    fs::write(&dest, b"old").unwrap();
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o600)).unwrap();
    let tmp = TempFile::create(&dest, true, true).unwrap();
    // A writer that writes elsewhere and renames over the name: the new file is 0644
    // and not the one whose permissions were set.
    let other = d.path().join("other");
    fs::write(&other, b"new").unwrap();
    fs::rename(&other, tmp.temp_path()).unwrap();
    let err = tmp.commit().unwrap_err().to_string();
    assert!(err.contains("s.pkl") && err.contains("replaced"), "{err}");
    assert_eq!(fs::read(&dest).unwrap(), b"old");
    assert_eq!(names(d.path()), ["s.pkl"]);
}

#[test]
fn abort_and_drop_remove_the_temporary_and_keep_the_old_file() {
    let d = tempfile::tempdir().unwrap();
    let dest = d.path().join("m.bp");
    fs::write(&dest, b"old").unwrap();
    let tmp = TempFile::create(&dest, true, true).unwrap();
    fs::write(tmp.temp_path(), b"partial").unwrap();
    tmp.abort();
    drop(TempFile::create(&dest, true, true).unwrap());
    assert_eq!(fs::read(&dest).unwrap(), b"old");
    assert_eq!(names(d.path()), ["m.bp"]);
}

#[test]
fn a_fifo_destination_is_refused_before_a_temporary_exists() {
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("pipe.npz");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let err = TempFile::create(&fifo, true, true)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("pipe.npz") && err.contains("FIFO"), "{err}");
    assert_eq!(names(d.path()), ["pipe.npz"]);
}
