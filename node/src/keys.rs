//! The node's keys on disk: the ed25519 identity (`identity.key`) and the
//! X25519 wrap key (`wrap.key`), 32 raw secret bytes each, mode 0600, in a
//! data dir of mode 0700. Created atomically (temp file, fsync, rename) on
//! first start; a key file readable by group or others is refused.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use rendertrust_protocol::identity::NodeKey;
use rendertrust_protocol::seal::WrapSecret;
use zeroize::Zeroizing;

/// Why a key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file is readable by group or others.
    #[error("{path} has mode {mode:o}; a key must be private: run `chmod 600 {path}`")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// The key file is not 32 bytes.
    #[error("{path}: expected 32 bytes of key, found {found}")]
    Length {
        /// The file.
        path: PathBuf,
        /// Its length.
        found: usize,
    },
    /// The OS gave no randomness.
    #[error("no OS randomness: {0}")]
    Random(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A CSPRNG seeded from the OS.
pub fn os_rng() -> Result<ChaCha20Rng, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(ChaCha20Rng::from_seed(seed))
}

fn ensure_dir(dir: &Path) -> Result<(), KeyError> {
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(io(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    Ok(())
}

/// Reads a 32-byte secret, or creates one with `make`.
fn load_or_create(
    dir: &Path,
    name: &str,
    make: impl FnOnce() -> Result<[u8; 32], KeyError>,
) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    ensure_dir(dir)?;
    let path = dir.join(name);
    if path.exists() {
        let meta = fs::metadata(&path).map_err(io(&path))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions { path, mode });
        }
        let bytes = Zeroizing::new(fs::read(&path).map_err(io(&path))?);
        let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| KeyError::Length {
            path: path.clone(),
            found: bytes.len(),
        })?;
        return Ok(Zeroizing::new(arr));
    }
    let secret = Zeroizing::new(make()?);
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(secret.as_ref()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(secret)
}

/// Loads the node's identity key from `<data_dir>/identity.key`, creating it on first use.
pub fn load_or_create_identity(data_dir: &Path) -> Result<NodeKey, KeyError> {
    let secret = load_or_create(data_dir, "identity.key", || {
        let mut rng = os_rng()?;
        Ok(*NodeKey::generate(&mut rng).secret_bytes())
    })?;
    Ok(NodeKey::from_secret_bytes(&secret))
}

/// Loads the node's X25519 wrap key from `<data_dir>/wrap.key`, creating it on first use.
pub fn load_or_create_wrap_key(data_dir: &Path) -> Result<WrapSecret, KeyError> {
    let secret = load_or_create(data_dir, "wrap.key", || {
        let mut rng = os_rng()?;
        Ok(WrapSecret::generate(&mut rng).to_bytes())
    })?;
    Ok(WrapSecret::from_bytes(*secret))
}

fn split_path(path: &Path) -> Result<(&Path, &str), KeyError> {
    let name = path.file_name().and_then(|n| n.to_str());
    match (path.parent(), name) {
        (Some(dir), Some(name)) => Ok((dir, name)),
        _ => Err(KeyError::Io {
            path: path.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "expected a key file path",
            ),
        }),
    }
}

/// Loads an ed25519 key from a file of 32 raw secret bytes, mode 0600 (the
/// format of `identity.key`): e.g. the mint authority's key for `ledger mint`.
pub fn load_key_file(path: &Path) -> Result<NodeKey, KeyError> {
    let (dir, name) = split_path(path)?;
    let secret = load_or_create(dir, name, || {
        Err(KeyError::Io {
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such key file"),
        })
    })?;
    Ok(NodeKey::from_secret_bytes(&secret))
}

/// [`load_key_file`], creating the key first if the file does not exist
/// (e.g. a devnet's mint authority).
pub fn load_or_create_key_file(path: &Path) -> Result<NodeKey, KeyError> {
    let (dir, name) = split_path(path)?;
    let secret = load_or_create(dir, name, || {
        let mut rng = os_rng()?;
        Ok(*NodeKey::generate(&mut rng).secret_bytes())
    })?;
    Ok(NodeKey::from_secret_bytes(&secret))
}

/// `rendertrust keys show`: peer id and public keys, never secrets.
pub fn show(data_dir: &Path, json: bool) -> Result<String, KeyError> {
    let id = load_or_create_identity(data_dir)?;
    let wrap = load_or_create_wrap_key(data_dir)?;
    let peer = id.node_id().to_string();
    let ed = id.node_id().to_hex();
    let x = hex::encode(wrap.public());
    Ok(if json {
        serde_json::json!({ "peer_id": peer, "ed25519_public": ed, "x25519_public": x, "data_dir": data_dir.display().to_string() }).to_string()
    } else {
        format!(
            "peer id:         {peer}\ned25519 public:  {ed}\nx25519 public:   {x}\ndata dir:        {}\n",
            data_dir.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_persists_with_private_mode() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("data");
        let a = load_or_create_identity(&dir).unwrap();
        let b = load_or_create_identity(&dir).unwrap();
        assert_eq!(a.node_id(), b.node_id());
        let mode = fs::metadata(dir.join("identity.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let w1 = load_or_create_wrap_key(&dir).unwrap();
        let w2 = load_or_create_wrap_key(&dir).unwrap();
        assert_eq!(w1.public(), w2.public());
    }

    #[test]
    fn key_files_load_create_and_refuse() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("authority.key");
        assert!(matches!(load_key_file(&p), Err(KeyError::Io { .. })));
        let a = load_or_create_key_file(&p).unwrap();
        assert_eq!(load_key_file(&p).unwrap().node_id(), a.node_id());
        assert_eq!(load_or_create_key_file(&p).unwrap().node_id(), a.node_id());
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            load_key_file(&p),
            Err(KeyError::Permissions { .. })
        ));
    }

    #[test]
    fn refuses_readable_key_and_wrong_length() {
        let d = tempfile::tempdir().unwrap();
        load_or_create_identity(d.path()).unwrap();
        let p = d.path().join("identity.key");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_or_create_identity(d.path()),
            Err(KeyError::Permissions { .. })
        ));
        fs::write(&p, [1u8; 31]).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            load_or_create_identity(d.path()),
            Err(KeyError::Length { found: 31, .. })
        ));
    }
}
