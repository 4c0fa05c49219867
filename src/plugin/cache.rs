//! Compiled plugins on disk: each component is compiled once and its
//! native artifact kept in `plugins.cache_dir`, named by the SHA-256 of the
//! component's bytes and the engine's compatibility hash. A later start with
//! the same plugin and the same hookd build maps the artifact instead of
//! compiling again; anything else (another plugin version, another wasmtime,
//! other engine settings) gets another name.
//!
//! Artifacts are native code that wasmtime loads without verification, so
//! the directory is created private to hookd's user (mode 0700); whoever
//! can write there can run code inside hookd. A directory or an artifact
//! that another user owns, or that group or others may write, is not
//! trusted: hookd warns (naming the path and the fix) and compiles without
//! the cache. Artifacts are memory-mapped while in
//! use: deleting the directory or a file is safe at any time (and costs a
//! compilation at the next start), but truncating or rewriting a file in
//! place under a running hookd crashes it (SIGBUS). hookd itself only ever
//! writes a temporary file and renames it into place.

use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

/// Extension of cached artifacts.
const EXTENSION: &str = "cwasm";

/// A compiled component and where it came from.
pub(crate) struct Compiled {
    /// The component, ready to instantiate.
    pub(crate) component: Component,
    /// Hex SHA-256 of the component's bytes.
    pub(crate) digest: String,
    /// The artifact file, if the cache could be used.
    pub(crate) artifact: Option<PathBuf>,
    /// Whether the artifact was loaded rather than compiled now.
    pub(crate) from_cache: bool,
    /// Time spent compiling or loading.
    pub(crate) took: Duration,
}

/// Feeds `Hash` data into SHA-256, so a hash is stable across processes.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        0 // unused: the digest is read with `finalize`
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The artifact's file name for `component` under `engine`.
fn artifact_name(engine: &Engine, digest: &[u8]) -> String {
    let mut hasher = Sha256Hasher(Sha256::new());
    hasher.write(digest);
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{}.{EXTENSION}", hex(&hasher.0.finalize()))
}

/// Compiles `bytes`, or loads its artifact from `cache_dir`. Cache problems
/// (unwritable directory, corrupt artifact) cost a compilation and a
/// warning, never the load; compilation problems are returned.
pub(crate) fn compile(engine: &Engine, bytes: &[u8], cache_dir: &Path) -> Result<Compiled, String> {
    let started = Instant::now();
    let digest = Sha256::digest(bytes);
    let artifact = match ensure_private_dir(cache_dir) {
        Ok(()) => Some(cache_dir.join(artifact_name(engine, &digest))),
        Err(e) => {
            tracing::warn!(cache_dir = %cache_dir.display(), error = %e, "plugin cache unusable; compiling without it");
            None
        }
    };
    let trusted = artifact.as_deref().filter(|p| p.is_file()).filter(|p| match check_private(p) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(artifact = %p.display(), error = %e, "cached plugin artifact not trusted; compiling again");
            false
        }
    });
    if let Some(path) = trusted {
        // SAFETY: the file is an artifact this code wrote, named by the
        // digest of its source and the engine's compatibility hash, in a
        // directory private to hookd (see the module docs).
        match unsafe { Component::deserialize_file(engine, path) } {
            Ok(component) => {
                return Ok(Compiled {
                    component,
                    digest: hex(&digest),
                    artifact,
                    from_cache: true,
                    took: started.elapsed(),
                })
            }
            Err(e) => {
                tracing::warn!(artifact = %path.display(), error = %e, "cached plugin artifact unusable; compiling again");
            }
        }
    }
    let component = Component::new(engine, bytes).map_err(|e| format!("{e:#}"))?;
    if let Some(path) = &artifact {
        if let Err(e) = component
            .serialize()
            .map_err(|e| e.to_string())
            .and_then(|a| write_atomically(path, &a).map_err(|e| e.to_string()))
        {
            tracing::warn!(artifact = %path.display(), error = %e, "cannot cache the compiled plugin");
        }
    }
    Ok(Compiled {
        component,
        digest: hex(&digest),
        artifact: artifact.filter(|p| p.is_file()),
        from_cache: false,
        took: started.elapsed(),
    })
}

/// Creates `dir` (and missing parents) private to this user (mode 0700),
/// or checks that the existing one is.
fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if !dir.is_dir() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    check_private(dir)
}

/// Whether only this process's user may write `path`: it owns it, and
/// neither group nor others may write it. An error says what to do.
fn check_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let meta = std::fs::metadata(path)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let shown = path.display();
    let fix = if meta.is_dir() {
        "hookd loads native code from it"
    } else {
        "hookd would load it as native code"
    };
    if meta.uid() != me {
        return Err(std::io::Error::other(format!(
            "{shown} is owned by uid {}, not by hookd's user (uid {me}); {fix}: `chown {me} {shown}`, or set plugins.cache_dir to a directory of hookd's own",
            meta.uid()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(std::io::Error::other(format!(
            "{shown} may be written by group or others (mode {mode:03o}); {fix}: `chmod go-w {shown}`, or set plugins.cache_dir to a directory of hookd's own",
        )));
    }
    Ok(())
}

/// Writes `bytes` to a temporary file beside `path`, then renames it into
/// place, so a concurrent reader never maps half an artifact.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("{EXTENSION}.{}.tmp", std::process::id()));
    let result = (|| {
        use std::os::unix::fs::OpenOptionsExt as _;
        // Private whatever the umask, so a later start trusts it.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// The smallest component there is, `(component)` in binary: the
    /// magic number, then version 0xd of layer 1 (components).
    const EMPTY: &[u8] = b"\0asm\x0d\x00\x01\x00";

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn artifacts_are_reused_only_from_a_private_directory_of_ours() {
        let engine = Engine::default();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");

        let first = compile(&engine, EMPTY, &dir).unwrap();
        assert!(!first.from_cache);
        let artifact = first.artifact.expect("written to the cache");
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert!(compile(&engine, EMPTY, &dir).unwrap().from_cache, "reused");

        // A directory others may write is not used at all.
        set_mode(&dir, 0o777);
        let open = compile(&engine, EMPTY, &dir).unwrap();
        assert!(!open.from_cache && open.artifact.is_none(), "not trusted");
        let err = check_private(&dir).unwrap_err().to_string();
        assert!(err.contains("chmod go-w"), "{err}");
        set_mode(&dir, 0o700);

        // An artifact others may write is compiled again, and replaced by
        // one of ours.
        set_mode(&artifact, 0o666);
        assert!(!compile(&engine, EMPTY, &dir).unwrap().from_cache);
        assert_eq!(
            std::fs::metadata(&artifact).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(compile(&engine, EMPTY, &dir).unwrap().from_cache);
    }

    #[test]
    fn what_another_user_owns_is_not_trusted() {
        use std::os::unix::fs::MetadataExt as _;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if me != 0 {
            // Not root: a root-owned path shows the same check.
            let err = check_private(Path::new("/")).unwrap_err().to_string();
            assert!(err.contains("is owned by uid 0"), "{err}");
            return;
        }
        // Root (as CI runs): give the artifact and then the directory to
        // `nobody`; root may write either, but hookd trusts neither.
        let engine = Engine::default();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        let artifact = compile(&engine, EMPTY, &dir).unwrap().artifact.unwrap();
        std::os::unix::fs::chown(&artifact, Some(65534), None).unwrap();
        let err = check_private(&artifact).unwrap_err().to_string();
        assert!(
            err.contains("is owned by uid 65534") && err.contains("chown 0"),
            "{err}"
        );
        assert!(!compile(&engine, EMPTY, &dir).unwrap().from_cache, "compiled again");
        assert_eq!(
            std::fs::metadata(&artifact).unwrap().uid(),
            0,
            "replaced by one of ours"
        );

        std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
        let untrusted = compile(&engine, EMPTY, &dir).unwrap();
        assert!(!untrusted.from_cache && untrusted.artifact.is_none());
    }
}
