//! What a save does with whatever already sits at its destination (issue 11, items 5 and
//! 14): a regular file is replaced keeping its permissions and owner; anything else is
//! refused before any data is written; a symlink is saved through; any legal file name
//! can be saved, and errors say which step failed for which destination.
#![cfg(target_os = "linux")]

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use bpz::*;

fn save(path: &Path, value: u8) -> Result<()> {
    let mut w = Writer::create(path, WriterOptions::default())?;
    w.add_tensor("x", DType::U8, &[3], &[value; 3])?;
    w.finish().map(drop)
}

fn value_at(path: &Path) -> u8 {
    Reader::open(path).unwrap().read("x").unwrap()[0]
}

fn temporaries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".bpz-tmp"))
        .collect()
}

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path that outlives the call.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o644) },
        0,
        "mkfifo {path:?}"
    );
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().mode() & 0o7777
}

/// The process umask, read without changing it (a umask(2) round trip would race with
/// the other tests' file creations).
fn umask() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("Umask:"))
        .expect("Linux 4.7+");
    u32::from_str_radix(line[6..].trim(), 8).unwrap()
}

#[test]
fn a_fifo_is_refused_before_any_data_is_written() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("m.bpz");
    mkfifo(&p);
    // Opening a FIFO for writing would block until a reader comes: the refusal must not.
    let err = Writer::create(&p, WriterOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.kind(), "io", "{msg}");
    assert!(
        msg.contains(&*p.to_string_lossy()) && msg.contains("FIFO") && msg.contains("refus"),
        "{msg}"
    );
    assert!(fs::symlink_metadata(&p).unwrap().file_type().is_fifo());
    assert_eq!(temporaries(d.path()), Vec::<String>::new());
}

#[test]
fn a_device_node_is_refused_and_stays() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("null.bpz");
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path that outlives the call. (1, 3) is /dev/null.
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) } != 0 {
        eprintln!("skipped: mknod not permitted here");
        return;
    }
    let err = save(&p, 1).unwrap_err();
    assert!(err.to_string().contains("character device"), "{err}");
    assert!(fs::symlink_metadata(&p)
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!(temporaries(d.path()), Vec::<String>::new());
}

#[test]
fn a_socket_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("s.bpz");
    let _listener = std::os::unix::net::UnixListener::bind(&p).unwrap();
    let err = save(&p, 1).unwrap_err();
    assert!(err.to_string().contains("socket"), "{err}");
    assert!(fs::symlink_metadata(&p).unwrap().file_type().is_socket());
}

#[test]
fn a_fifo_that_appears_while_saving_is_not_replaced() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("m.bpz");
    let mut w = Writer::create(&p, WriterOptions::default()).unwrap();
    w.add_tensor("x", DType::U8, &[3], &[1; 3]).unwrap();
    mkfifo(&p);
    let err = w.finish().unwrap_err();
    assert!(err.to_string().contains("FIFO"), "{err}");
    assert!(fs::symlink_metadata(&p).unwrap().file_type().is_fifo());
    assert_eq!(temporaries(d.path()), Vec::<String>::new());
}

#[test]
fn a_replaced_file_keeps_its_permission_bits() {
    let d = tempfile::tempdir().unwrap();
    for perm in [0o600, 0o640, 0o400, 0o664, 0o755] {
        let p = d.path().join(format!("m{perm:o}.bpz"));
        save(&p, 1).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(perm)).unwrap();
        save(&p, 2).unwrap();
        assert_eq!(mode(&p), perm, "mode {perm:o}");
        assert_eq!(value_at(&p), 2);
    }
}

#[test]
fn setuid_setgid_and_sticky_bits_are_dropped() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("m.bpz");
    save(&p, 1).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o7750)).unwrap();
    save(&p, 2).unwrap();
    assert_eq!(mode(&p), 0o750);
}

#[test]
fn a_new_file_gets_the_umask_default() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("m.bpz");
    save(&p, 1).unwrap();
    assert_eq!(mode(&p), 0o666 & !umask());
}

#[test]
fn a_replaced_file_keeps_its_owner_where_permitted() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root may give a file away");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("m.bpz");
    save(&p, 1).unwrap();
    std::os::unix::fs::chown(&p, Some(4321), Some(8765)).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
    save(&p, 2).unwrap();
    let m = fs::metadata(&p).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (4321, 8765, 0o640));
}

#[test]
fn a_symlink_to_a_file_is_saved_through() {
    let d = tempfile::tempdir().unwrap();
    let sub = d.path().join("real");
    fs::create_dir(&sub).unwrap();
    let target = sub.join("target.bpz");
    save(&target, 1).unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
    let link = d.path().join("latest.bpz");
    std::os::unix::fs::symlink("real/target.bpz", &link).unwrap();
    save(&link, 2).unwrap();
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link is kept"
    );
    assert_eq!(fs::read_link(&link).unwrap(), Path::new("real/target.bpz"));
    assert_eq!(value_at(&target), 2);
    assert_eq!(mode(&target), 0o600);
    assert_eq!(temporaries(d.path()), Vec::<String>::new());
    assert_eq!(temporaries(&sub), Vec::<String>::new());
}

#[test]
fn a_chain_of_symlinks_is_followed_and_a_loop_refused() {
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("t.bpz");
    save(&target, 1).unwrap();
    std::os::unix::fs::symlink(&target, d.path().join("a")).unwrap();
    std::os::unix::fs::symlink("a", d.path().join("b")).unwrap();
    save(&d.path().join("b"), 3).unwrap();
    assert_eq!(value_at(&target), 3);
    std::os::unix::fs::symlink("loop2", d.path().join("loop1")).unwrap();
    std::os::unix::fs::symlink("loop1", d.path().join("loop2")).unwrap();
    let err = save(&d.path().join("loop1"), 1).unwrap_err();
    assert!(err.to_string().contains("symbolic links"), "{err}");
}

#[test]
fn a_symlink_to_a_directory_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("dir");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("inside"), b"keep").unwrap();
    let link = d.path().join("m.bpz");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    let err = save(&link, 1).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("symbolic link") && msg.contains("directory"),
        "{msg}"
    );
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read(dir.join("inside")).unwrap(), b"keep");
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
}

#[test]
fn a_dangling_symlink_creates_its_target() {
    let d = tempfile::tempdir().unwrap();
    let link = d.path().join("m.bpz");
    std::os::unix::fs::symlink("new.bpz", &link).unwrap();
    save(&link, 4).unwrap();
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(value_at(&d.path().join("new.bpz")), 4);
}

#[test]
fn a_symlink_into_a_missing_directory_is_an_error_naming_both() {
    let d = tempfile::tempdir().unwrap();
    let link = d.path().join("m.bpz");
    std::os::unix::fs::symlink("gone/new.bpz", &link).unwrap();
    let err = save(&link, 4).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&*link.to_string_lossy()) && msg.contains("gone"),
        "{msg}"
    );
    assert!(
        matches!(&err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );
}

#[test]
fn a_missing_directory_is_an_error_that_says_what_failed() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("missing").join("m.bpz");
    let err = save(&p, 1).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&*p.to_string_lossy()) && msg.contains("temporary file"),
        "{msg}"
    );
    match &err {
        Error::Io { source, .. } => assert_eq!(source.kind(), std::io::ErrorKind::NotFound),
        other => panic!("{other:?}"),
    }
}

/// File names of up to 255 bytes (NAME_MAX) are legal: their temporary's name must fit too.
#[test]
fn names_of_254_and_255_bytes_are_saved_and_their_stale_temporaries_cleaned() {
    let d = tempfile::tempdir().unwrap();
    for name in [
        "a".repeat(250) + ".bpz",
        "b".repeat(251) + ".bpz",
        "é".repeat(125) + ".bpz", // two-byte characters: a shortened name must not split one
        "é".repeat(125) + "z.bpz",
    ] {
        assert!(name.len() >= 254, "{}", name.len());
        let p = d.path().join(&name);
        save(&p, 1).unwrap();
        save(&p, 2).unwrap();
        assert_eq!(value_at(&p), 2);
        // A save killed after creating its temporary (forget skips the cleanup)...
        let mut w = Writer::create(&p, WriterOptions::default()).unwrap();
        w.add_tensor("x", DType::U8, &[1], &[0]).unwrap();
        std::mem::forget(w);
        let left = temporaries(d.path());
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(left[0].len() <= 255);
        let f = fs::OpenOptions::new()
            .write(true)
            .open(d.path().join(&left[0]))
            .unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        // ...is cleaned up by the next successful save of the same name.
        save(&p, 3).unwrap();
        assert_eq!(temporaries(d.path()), Vec::<String>::new(), "{name}");
        fs::remove_file(&p).unwrap();
    }
}

/// Two long names that differ only at their end get temporaries of their own: one save's
/// cleanup never takes the other's temporary.
#[test]
fn long_names_sharing_a_prefix_keep_separate_temporaries() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (
        d.path().join("p".repeat(240) + "-a.bpz"),
        d.path().join("p".repeat(240) + "-b.bpz"),
    );
    let mut w = Writer::create(&a, WriterOptions::default()).unwrap();
    w.add_tensor("x", DType::U8, &[1], &[0]).unwrap();
    std::mem::forget(w);
    let left = temporaries(d.path());
    let f = fs::OpenOptions::new()
        .write(true)
        .open(d.path().join(&left[0]))
        .unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    save(&b, 1).unwrap();
    assert_eq!(
        temporaries(d.path()),
        left,
        "b's save must not remove a's temporary"
    );
    save(&a, 1).unwrap();
    assert_eq!(temporaries(d.path()), Vec::<String>::new());
}

#[test]
fn a_non_utf8_name_is_saved() {
    let d = tempfile::tempdir().unwrap();
    let name = std::ffi::OsStr::from_bytes(b"m\xff\xfe.bpz");
    let p = d.path().join(name);
    save(&p, 5).unwrap();
    save(&p, 6).unwrap();
    assert_eq!(value_at(&p), 6);
    assert_eq!(temporaries(d.path()), Vec::<String>::new());
}
