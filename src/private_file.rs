//! Files only their owner may read (keys, the recorded NATS URL, nats-server's config): written
//! whole at mode 0600, and made private again when found open to others.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// Writes `bytes` to `path`, mode 0600, through a temporary file next to it
/// (`.<name>.tmp-<pid>`) that is synced, then renamed over `path`, or with `create_new`
/// hard-linked to `path` (failing if `path` exists): no reader ever sees a partial file.
///
/// # Errors
/// The temporary file cannot be written or moved into place (with `create_new`: `path`
/// exists, [`std::io::ErrorKind::AlreadyExists`]).
pub fn write(path: &Path, bytes: &[u8], create_new: bool) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        // A temp file left by a crash of a process with this pid.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        if create_new {
            std::fs::hard_link(&tmp, path)
        } else {
            std::fs::rename(&tmp, path)
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    written
}

/// Makes `path` mode 0600 if group or others may use it; returns the mode it had then
/// (`None`: it was private already).
///
/// # Errors
/// Its mode cannot be read or changed.
pub fn restrict(path: &Path) -> std::io::Result<Option<u32>> {
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(Some(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn private_files_are_whole_and_mode_600() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.conf");
        write(&file, b"one", false).unwrap();
        write(&file, b"two", false).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "two");
        assert_eq!(mode(&file), 0o600);
        let err = write(&file, b"three", true).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "two");
        // No temporary file left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_open_file_is_made_private_and_says_what_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k");
        write(&file, b"k", false).unwrap();
        assert_eq!(restrict(&file).unwrap(), None);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(restrict(&file).unwrap(), Some(0o644));
        assert_eq!(mode(&file), 0o600);
    }
}
