pub mod vectors;

use std::ffi::OsStr;
use std::io::Read;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Runs the `#[ignore]`d test `name` of this test binary in a child process, so that a signal,
/// an abort or a refused allocation there fails this one case instead of the whole run.
///
/// `env` is set in the child (`None` removes a variable), `limit_mib` caps its address space
/// (`ulimit -v`), and a child still running after `timeout` is killed. `Err` carries what went
/// wrong and everything the child printed; `Ok` means its one test passed.
#[allow(dead_code)] // each test binary compiles this module; not all of them start children
pub fn run_ignored_test(
    name: &str,
    env: &[(&str, Option<&OsStr>)],
    limit_mib: Option<u64>,
    timeout: Duration,
) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the test binary: {e}"))?;
    let args = [
        "--exact",
        name,
        "--ignored",
        "--nocapture",
        "--test-threads",
        "1",
    ];
    let mut cmd = match limit_mib {
        Some(mib) => {
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg(format!("ulimit -v {} && exec \"$0\" \"$@\"", mib * 1024))
                .arg(&exe);
            sh
        }
        None => Command::new(&exe),
    };
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (key, value) in env {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    // Read while waiting: a child that fills a pipe would otherwise block until the deadline.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("cannot wait for {name}: {e}")),
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&stdout.join().unwrap_or_default()),
        String::from_utf8_lossy(&stderr.join().unwrap_or_default())
    );
    match status {
        None => Err(format!("{name} hung: killed after {timeout:?}\n{text}")),
        Some(s) if s.success() && text.contains("1 passed") => Ok(()),
        Some(s) => Err(format!("{name}: child {s:?}\n{text}")),
    }
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}
