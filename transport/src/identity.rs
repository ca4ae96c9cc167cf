//! A side's own key and self-signed certificate, kept in a state directory.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use crate::{Fingerprint, TransportError};

const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";

/// A private key and its self-signed certificate.
///
/// The key's `Debug` is redacted by rustls' own type; its bytes never leave
/// this struct except into a TLS config.
#[derive(Debug)]
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    fingerprint: Fingerprint,
}

impl Identity {
    /// Generates a fresh ECDSA P-256 identity whose certificate names `name`.
    ///
    /// # Errors
    /// Only if the crypto backend fails.
    pub fn generate(name: &str) -> Result<Self, TransportError> {
        Ok(Self::generate_pem(name)?.0)
    }

    /// Generates an identity and its PEM encodings (certificate, key).
    fn generate_pem(name: &str) -> Result<(Self, String, Zeroizing<String>), TransportError> {
        let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()])?;
        let cert = certified.cert.der().clone();
        let key =
            PrivateKeyDer::try_from(certified.signing_key.serialize_der()).map_err(|reason| {
                TransportError::Pem {
                    path: "<generated>".into(),
                    reason: reason.to_owned(),
                }
            })?;
        let fingerprint = Fingerprint::of(&cert);
        let pems = (
            certified.cert.pem(),
            Zeroizing::new(certified.signing_key.serialize_pem()),
        );
        Ok((
            Self {
                cert,
                key,
                fingerprint,
            },
            pems.0,
            pems.1,
        ))
    }

    /// Loads `cert.pem` and `key.pem` from `dir`, or creates them when both
    /// are absent. Returns whether they were created.
    ///
    /// The key is written `0600` through a temporary file and a rename, so a
    /// crash never leaves half a key. One file without the other is an error:
    /// silently replacing a key would look exactly like an attack to the peer.
    ///
    /// # Errors
    /// I/O, unreadable PEM, or one of the two files missing.
    pub fn load_or_create(dir: &Path, name: &str) -> Result<(Self, bool), TransportError> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Ok((Self::load(&cert_path, &key_path)?, false)),
            (false, false) => {
                let (id, cert_pem, key_pem) = Self::generate_pem(name)?;
                write_private(&key_path, key_pem.as_bytes())?;
                write_private(&cert_path, cert_pem.as_bytes())?;
                Ok((id, true))
            }
            (true, false) | (false, true) => Err(TransportError::Pem {
                path: dir.display().to_string(),
                reason: format!(
                    "only one of {CERT_FILE} and {KEY_FILE} exists; restore the missing one from a backup, \
                     or remove both to create a new identity (every peer must then pair again)"
                ),
            }),
        }
    }

    fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TransportError> {
        let pem_err = |path: &Path| {
            let path = path.display().to_string();
            move |e: rustls_pki_types::pem::Error| TransportError::Pem {
                path,
                reason: e.to_string(),
            }
        };
        let cert = CertificateDer::from_pem_file(cert_path).map_err(pem_err(cert_path))?;
        let key = PrivateKeyDer::from_pem_file(key_path).map_err(pem_err(key_path))?;
        let fingerprint = Fingerprint::of(&cert);
        Ok(Self {
            cert,
            key,
            fingerprint,
        })
    }

    /// The certificate, DER.
    #[must_use]
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// A copy of the private key for a TLS config.
    #[must_use]
    pub fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    /// SHA-256 of the certificate: what the peer pins.
    #[must_use]
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}

/// Writes a file readable by the owner only, atomically.
///
/// # Errors
/// I/O.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TransportError> {
    use std::io::Write;
    let tmp: PathBuf = path.with_extension("tmp");
    let ctx = || format!("writing {}", path.display());
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(TransportError::io(ctx()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(TransportError::io(ctx()))?;
    std::fs::rename(&tmp, path).map_err(TransportError::io(ctx()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_load_is_the_same_identity() {
        let dir = std::env::temp_dir().join(format!("nexus-id-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or(());
        let (a, created) = Identity::load_or_create(&dir, "t").unwrap_or_else(|e| panic!("{e}"));
        assert!(created);
        let (b, created) = Identity::load_or_create(&dir, "t").unwrap_or_else(|e| panic!("{e}"));
        assert!(!created);
        assert_eq!(a.fingerprint(), b.fingerprint());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(KEY_FILE))
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0);
            assert_eq!(mode, 0o600);
        }
        std::fs::remove_file(dir.join(KEY_FILE)).unwrap_or(());
        assert!(
            Identity::load_or_create(&dir, "t").is_err(),
            "half an identity must not be replaced silently"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
