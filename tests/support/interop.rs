//! Another implementation checks hookd's signatures: Python's
//! `cryptography` verifies `v1a` (Ed25519) signatures through
//! `tests/support/verify_v1a.py`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// The Python that has `cryptography`: Debian's (`python3-cryptography`)
/// lives under /usr/bin, which another `python3` earlier in PATH may shadow.
fn python() -> &'static str {
    let debian = "/usr/bin/python3";
    let has_cryptography = |python: &str| {
        Command::new(python)
            .args(["-c", "import cryptography.hazmat.primitives.asymmetric.ed25519"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if Path::new(debian).exists() && has_cryptography(debian) {
        debian
    } else if has_cryptography("python3") {
        "python3"
    } else {
        panic!("the interop test needs Python's cryptography: apt-get install python3-cryptography (tests/run.sh does)")
    }
}

/// Whether Python's `cryptography` verifies a `v1a` entry of `signature`
/// (a whole `webhook-signature` value) over `{id}.{timestamp}.{body}` with
/// the `whpk_` key `public`.
pub fn python_verifies_v1a(public: &str, id: &str, timestamp: &str, signature: &str, body: &[u8]) -> bool {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/verify_v1a.py");
    let mut child = Command::new(python())
        .arg(script)
        .args([public, id, timestamp, signature])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!("verify_v1a.py failed: {said}{}", String::from_utf8_lossy(&out.stderr)),
    }
}
