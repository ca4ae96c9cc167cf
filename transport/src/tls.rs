//! rustls configurations: TLS 1.3 only, mutual authentication by pinned
//! SHA-256 fingerprints, no CA and no system roots.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::{Fingerprint, Identity, TransportError};

/// The name both sides put in certificates and SNI. Pins, not names, are
/// what is checked.
pub const SERVER_NAME: &str = "nexus-shim";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Server-certificate verifier that accepts exactly one fingerprint and
/// remembers what the server presented, for the error message.
#[derive(Debug)]
pub struct PinnedServer {
    expected: Fingerprint,
    seen: Mutex<Option<Fingerprint>>,
    provider: Arc<CryptoProvider>,
}

impl PinnedServer {
    /// The fingerprint the server presented in the last handshake.
    #[must_use]
    pub fn seen(&self) -> Option<Fingerprint> {
        self.seen.lock().ok().and_then(|g| *g)
    }

    /// The pinned fingerprint.
    #[must_use]
    pub fn expected(&self) -> Fingerprint {
        self.expected
    }
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fp = Fingerprint::of(end_entity);
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(fp);
        }
        if fp == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Decides, during the TLS handshake, whether a client certificate may
/// proceed. The shim accepts its paired laptop, and any certificate while a
/// pairing token is pending (the token is checked right after).
pub trait ClientAuthorizer: std::fmt::Debug + Send + Sync {
    /// Whether a client presenting this fingerprint may finish the handshake.
    fn authorize(&self, fingerprint: &Fingerprint) -> bool;
}

#[derive(Debug)]
struct PinnedClients {
    authorizer: Arc<dyn ClientAuthorizer>,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for PinnedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let fp = Fingerprint::of(end_entity);
        if self.authorizer.authorize(&fp) {
            Ok(ClientCertVerified::assertion())
        } else {
            tracing::warn!(client_fingerprint = %fp, "refused a client certificate that is not the paired laptop's");
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Client (laptop) configuration pinning the server's fingerprint and
/// presenting our certificate. The verifier is returned too, to tell the user
/// which fingerprint was seen when the pin fails.
///
/// # Errors
/// Only if the key is unusable.
pub fn client_config(
    identity: &Identity,
    server_pin: Fingerprint,
) -> Result<(Arc<ClientConfig>, Arc<PinnedServer>), TransportError> {
    let provider = provider();
    let verifier = Arc::new(PinnedServer {
        expected: server_pin,
        seen: Mutex::new(None),
        provider: provider.clone(),
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_client_auth_cert(vec![identity.cert().clone()], identity.key())?;
    Ok((Arc::new(config), verifier))
}

/// Server (workspace) configuration: our certificate, mandatory client
/// certificates judged by `authorizer`, and no session tickets, so every
/// connection proves the client key afresh against the current pairing.
///
/// # Errors
/// Only if the key is unusable.
pub fn server_config(
    identity: &Identity,
    authorizer: Arc<dyn ClientAuthorizer>,
) -> Result<Arc<ServerConfig>, TransportError> {
    let provider = provider();
    let verifier = Arc::new(PinnedClients {
        authorizer,
        provider: provider.clone(),
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert().clone()], identity.key())?;
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// The fingerprint of the peer's end-entity certificate after a handshake.
#[must_use]
pub fn peer_fingerprint(conn: &rustls::CommonState) -> Option<Fingerprint> {
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| Fingerprint::of(c))
}

/// The SNI the client sends. Pins, not names, are checked, so the fallback
/// (no SNI) would be just as safe; it exists only to avoid a panic path.
#[must_use]
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(SERVER_NAME)
        .unwrap_or(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()))
}
