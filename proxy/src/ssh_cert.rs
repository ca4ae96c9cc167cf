//! OpenSSH certificates (`PROTOCOL.certkeys`), read by hand.
//!
//! ssh-key 0.6 refuses a certificate valid forever (`valid_before` =
//! 2^64-1, what `ssh-keygen -s` writes without `-V`), and one such
//! certificate in the laptop agent would fail its whole identity list. We
//! read the fields the policy needs: the certified key (what `keys`
//! fingerprints name), the type, the principals, the validity and the CA.

use signature::Verifier;
use ssh_encoding::Decode;
use ssh_key::public::{
    DsaPublicKey, EcdsaPublicKey, Ed25519PublicKey, KeyData, RsaPublicKey, SkEcdsaSha2NistP256,
    SkEd25519,
};
use ssh_key::{Algorithm, Signature};
use thiserror::Error;

/// The suffix of every certificate algorithm name.
const CERT_SUFFIX: &str = "-cert-v01@openssh.com";
/// Most principals read from one certificate.
const MAX_PRINCIPALS: usize = 256;

/// A certificate's type field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertType {
    /// `SSH2_CERT_TYPE_USER`: certifies a user's key.
    User,
    /// `SSH2_CERT_TYPE_HOST`: certifies a host's key.
    Host,
}

/// Why a key blob is not a key or certificate we can use.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CertError {
    /// Not a well-formed key or certificate blob.
    #[error("malformed key or certificate: {0}")]
    Malformed(String),
    /// The CA's signature over the certificate does not verify.
    #[error("the certificate's CA signature does not verify")]
    Signature,
}

fn bad(what: impl std::fmt::Display) -> CertError {
    CertError::Malformed(what.to_string())
}

/// A parsed OpenSSH certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// The certified public key.
    pub key: KeyData,
    /// User or host certificate.
    pub cert_type: CertType,
    /// The principals (user or host names); empty means any.
    pub principals: Vec<String>,
    /// Valid from this Unix time on.
    pub valid_after: u64,
    /// Valid before this Unix time (`u64::MAX`: forever).
    pub valid_before: u64,
    /// The CA key that signed it.
    pub ca: KeyData,
    /// The bytes the CA signed (the blob up to the signature).
    signed: Vec<u8>,
    signature: Signature,
}

impl Certificate {
    /// Whether the CA's signature verifies.
    ///
    /// # Errors
    /// [`CertError::Signature`] when it does not.
    pub fn verify(&self) -> Result<(), CertError> {
        self.ca
            .verify(&self.signed, &self.signature)
            .map_err(|_| CertError::Signature)
    }

    /// Whether `now` (Unix seconds) lies in the validity interval.
    #[must_use]
    pub fn valid_at(&self, now: u64) -> bool {
        self.valid_after <= now && now < self.valid_before
    }
}

/// A public credential as agents list it and sign with it: a plain key, or
/// a certificate of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The plain key (the certified key of a certificate).
    pub key: KeyData,
    /// The certificate, if this is one.
    pub cert: Option<Certificate>,
}

/// Parses a key or certificate blob, strictly (no trailing bytes).
///
/// # Errors
/// [`CertError::Malformed`] for anything else.
pub fn parse_credential(blob: &[u8]) -> Result<Credential, CertError> {
    let name = String::decode(&mut &blob[..]).map_err(bad)?;
    let credential = if name.ends_with(CERT_SUFFIX) {
        let cert = parse_cert(blob)?;
        Credential {
            key: cert.key.clone(),
            cert: Some(cert),
        }
    } else {
        Credential {
            key: plain_key(blob)?,
            cert: None,
        }
    };
    Ok(credential)
}

/// A plain public key blob, strictly; a certificate is refused by its name
/// before any of it is read, so that a CA field never nests a parse (a
/// chain of certificates each naming the next as its CA would otherwise
/// recurse as deep as a request frame allows).
fn plain_key(blob: &[u8]) -> Result<KeyData, CertError> {
    let name = String::decode(&mut &blob[..]).map_err(bad)?;
    if name.ends_with(CERT_SUFFIX) {
        return Err(bad("a certificate where a plain key belongs"));
    }
    let r = &mut &blob[..];
    let key = KeyData::decode(r).map_err(bad)?;
    if !r.is_empty() {
        return Err(bad("trailing bytes in a key blob"));
    }
    Ok(key)
}

fn string(r: &mut &[u8]) -> Result<Vec<u8>, CertError> {
    Vec::<u8>::decode(r).map_err(bad)
}

fn parse_cert(blob: &[u8]) -> Result<Certificate, CertError> {
    let r = &mut &blob[..];
    let name = String::decode(r).map_err(bad)?;
    let algorithm = Algorithm::new_certificate(&name).map_err(bad)?;
    let _nonce = string(r)?;
    let key = certified_key(r, &algorithm)?;
    let _serial = u64::decode(r).map_err(bad)?;
    let cert_type = match u32::decode(r).map_err(bad)? {
        1 => CertType::User,
        2 => CertType::Host,
        n => return Err(bad(format!("certificate type {n}"))),
    };
    let _key_id = string(r)?;
    let principals = principals(&string(r)?)?;
    let valid_after = u64::decode(r).map_err(bad)?;
    let valid_before = u64::decode(r).map_err(bad)?;
    let critical_options = string(r)?;
    // As OpenSSH: a host certificate carries no critical options.
    if cert_type == CertType::Host && !critical_options.is_empty() {
        return Err(bad("a host certificate with critical options"));
    }
    let _extensions = string(r)?;
    let _reserved = string(r)?;
    let ca_blob = string(r)?;
    let ca = plain_key(&ca_blob).map_err(|e| match e {
        CertError::Malformed(why) => bad(format!("the certificate's CA: {why}")),
        other => other,
    })?;
    let signed = blob[..blob.len() - r.len()].to_vec();
    let sig_blob = string(r)?;
    if !r.is_empty() {
        return Err(bad("trailing bytes after the certificate"));
    }
    let s = &mut &sig_blob[..];
    let signature = Signature::decode(s).map_err(bad)?;
    if !s.is_empty() {
        return Err(bad("trailing bytes in the certificate's signature"));
    }
    Ok(Certificate {
        key,
        cert_type,
        principals,
        valid_after,
        valid_before,
        ca,
        signed,
        signature,
    })
}

/// The key fields of a certificate, which follow the nonce in the same
/// layout as the plain key's.
fn certified_key(r: &mut &[u8], algorithm: &Algorithm) -> Result<KeyData, CertError> {
    let key = match algorithm {
        Algorithm::Ed25519 => Ed25519PublicKey::decode(r).map(KeyData::Ed25519),
        Algorithm::Ecdsa { curve } => EcdsaPublicKey::decode(r).and_then(|k| {
            if k.curve() == *curve {
                Ok(KeyData::Ecdsa(k))
            } else {
                Err(ssh_key::Error::AlgorithmUnknown)
            }
        }),
        Algorithm::Rsa { .. } => RsaPublicKey::decode(r).map(KeyData::Rsa),
        Algorithm::Dsa => DsaPublicKey::decode(r).map(KeyData::Dsa),
        Algorithm::SkEd25519 => SkEd25519::decode(r).map(KeyData::SkEd25519),
        Algorithm::SkEcdsaSha2NistP256 => {
            SkEcdsaSha2NistP256::decode(r).map(KeyData::SkEcdsaSha2NistP256)
        }
        other => return Err(bad(format!("certificate for key type {other}"))),
    };
    key.map_err(bad)
}

fn principals(list: &[u8]) -> Result<Vec<String>, CertError> {
    let r = &mut &list[..];
    let mut out = Vec::new();
    while !r.is_empty() {
        if out.len() == MAX_PRINCIPALS {
            return Err(bad("too many principals"));
        }
        out.push(String::decode(r).map_err(bad)?);
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use signature::Signer;
    use ssh_encoding::Encode;
    use ssh_key::PrivateKey;
    use ssh_key::private::Ed25519Keypair;

    fn put(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(s);
    }

    /// A certificate whose CA field holds a certificate, whose CA field
    /// holds another, thousands deep: refused at the first level, without
    /// a parse per level (which overflowed the stack before).
    #[test]
    fn nested_certificates_are_refused_without_recursing() {
        let mut inner = Vec::new();
        put(&mut inner, b"ssh-ed25519");
        put(&mut inner, &[7; 32]);
        for _ in 0..3000 {
            let mut cert = Vec::new();
            put(&mut cert, b"ssh-ed25519-cert-v01@openssh.com");
            put(&mut cert, b"nonce");
            put(&mut cert, &[7; 32]);
            cert.extend_from_slice(&0u64.to_be_bytes());
            cert.extend_from_slice(&1u32.to_be_bytes());
            for field in [&b"id"[..], b""] {
                put(&mut cert, field);
            }
            cert.extend_from_slice(&0u64.to_be_bytes());
            cert.extend_from_slice(&u64::MAX.to_be_bytes());
            for field in [&b""[..], b"", b""] {
                put(&mut cert, field);
            }
            put(&mut cert, &inner);
            put(&mut cert, b"");
            inner = cert;
        }
        match parse_credential(&inner) {
            Err(CertError::Malformed(why)) => {
                assert!(why.contains("plain key belongs"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }

    pub(crate) fn ed25519(seed: u8) -> PrivateKey {
        PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
    }

    /// A certificate as `ssh-keygen -s` writes it, signed by `ca`.
    pub(crate) fn cert(
        key: &PrivateKey,
        ca: &PrivateKey,
        kind: u32,
        principals: &[&str],
        valid: (u64, u64),
    ) -> Vec<u8> {
        let KeyData::Ed25519(pk) = key.public_key().key_data() else {
            panic!("ed25519 only");
        };
        let mut b = Vec::new();
        put(&mut b, b"ssh-ed25519-cert-v01@openssh.com");
        put(&mut b, &[5; 32]);
        put(&mut b, &pk.0);
        b.extend_from_slice(&7u64.to_be_bytes());
        b.extend_from_slice(&kind.to_be_bytes());
        put(&mut b, b"id");
        let mut list = Vec::new();
        for p in principals {
            put(&mut list, p.as_bytes());
        }
        put(&mut b, &list);
        b.extend_from_slice(&valid.0.to_be_bytes());
        b.extend_from_slice(&valid.1.to_be_bytes());
        put(&mut b, b"");
        put(&mut b, b"");
        put(&mut b, b"");
        let mut ca_blob = Vec::new();
        ca.public_key()
            .key_data()
            .encode(&mut ca_blob)
            .unwrap_or_else(|e| panic!("{e}"));
        put(&mut b, &ca_blob);
        let sig = ca.try_sign(&b).unwrap_or_else(|e| panic!("{e}"));
        let mut sig_blob = Vec::new();
        sig.encode(&mut sig_blob).unwrap_or_else(|e| panic!("{e}"));
        put(&mut b, &sig_blob);
        b
    }

    #[test]
    fn a_certificate_valid_forever_parses_and_verifies() {
        let (key, ca) = (ed25519(1), ed25519(2));
        let blob = cert(&key, &ca, 1, &["alice"], (0, u64::MAX));
        let c = parse_credential(&blob).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&c.key, key.public_key().key_data());
        let cert = c.cert.unwrap_or_else(|| panic!("a certificate"));
        assert_eq!(cert.cert_type, CertType::User);
        assert_eq!(cert.principals, vec!["alice"]);
        assert_eq!(&cert.ca, ca.public_key().key_data());
        assert!(cert.valid_at(u64::MAX - 1));
        assert_eq!(cert.verify(), Ok(()));
    }

    #[test]
    fn a_tampered_or_truncated_certificate_is_refused() {
        let (key, ca) = (ed25519(1), ed25519(2));
        let mut blob = cert(&key, &ca, 2, &["host"], (10, 20));
        let cert = parse_credential(&blob)
            .ok()
            .and_then(|c| c.cert)
            .unwrap_or_else(|| panic!("a certificate"));
        assert!(!cert.valid_at(9) && cert.valid_at(10) && !cert.valid_at(20));
        // Flip a byte of the nonce: still parses, no longer verifies.
        blob[40] ^= 1;
        let forged = parse_credential(&blob).ok().and_then(|c| c.cert);
        assert_eq!(forged.map(|c| c.verify()), Some(Err(CertError::Signature)));
        for cut in 0..blob.len() {
            assert!(parse_credential(&blob[..cut]).is_err(), "cut at {cut}");
        }
        blob.push(0);
        assert!(parse_credential(&blob).is_err());
    }

    #[test]
    fn plain_keys_parse_strictly() {
        let mut blob = Vec::new();
        ed25519(3)
            .public_key()
            .key_data()
            .encode(&mut blob)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            parse_credential(&blob),
            Ok(Credential { cert: None, .. })
        ));
        blob.push(0);
        assert!(parse_credential(&blob).is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = parse_credential(&data);
            let mut c = Vec::new();
            put(&mut c, b"ssh-ed25519-cert-v01@openssh.com");
            c.extend_from_slice(&data);
            let _ = parse_credential(&c);
        }
    }
}
