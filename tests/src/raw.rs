//! Peers built straight from `nexus-transport`, to send what the real
//! binaries never would: other protocol versions, garbage frames.

use std::sync::Arc;
use std::time::Duration;

use nexus_protocol::{ClientHello, HANDSHAKE_MAX_FRAME, PROTOCOL_VERSION, ServerHello};
use nexus_transport::tls::{self, ClientAuthorizer};
use nexus_transport::tokio_rustls::{TlsAcceptor, TlsConnector, client, rustls, server};
use nexus_transport::{Fingerprint, Identity};
use tokio::net::{TcpListener, TcpStream};

use crate::{DEADLINE, Must};

/// Accepts every client certificate: a fake shim wants to hear anyone.
#[derive(Debug)]
struct AnyClient;

impl ClientAuthorizer for AnyClient {
    fn authorize(&self, _fingerprint: &Fingerprint) -> bool {
        true
    }
}

/// A TLS server speaking the shim's handshake, driven step by step by the
/// test. Its own identity is fresh; a laptop pins it through a hand-written
/// workspace record or pairing URI.
#[derive(Debug)]
pub struct FakeShim {
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    fingerprint: Fingerprint,
    address: String,
}

/// The server end of a fake shim's TLS connection.
pub type FakeConn = server::TlsStream<TcpStream>;

impl FakeShim {
    /// Binds on loopback, port 0.
    pub async fn bind() -> Self {
        let identity = Identity::generate(tls::SERVER_NAME).must("generating the fake's identity");
        let config = tls::server_config(&identity, Arc::new(AnyClient)).must("fake server config");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .must("binding the fake shim");
        let address = listener.local_addr().must("fake address").to_string();
        Self {
            listener,
            config,
            fingerprint: identity.fingerprint(),
            address,
        }
    }

    /// `HOST:PORT` to dial.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The certificate fingerprint a laptop must pin, `sha256:..`.
    pub fn fingerprint(&self) -> String {
        self.fingerprint.to_string()
    }

    /// Accepts one connection, finishes TLS and reads the client's hello.
    pub async fn accept_hello(&self) -> (FakeConn, ClientHello) {
        let step = async {
            let (tcp, _) = self.listener.accept().await.must("accepting the laptop");
            let mut conn = TlsAcceptor::from(self.config.clone())
                .accept(tcp)
                .await
                .must("TLS with the laptop");
            let hello: ClientHello = nexus_transport::recv(&mut conn, HANDSHAKE_MAX_FRAME)
                .await
                .must("reading the laptop's hello");
            (conn, hello)
        };
        within(DEADLINE, step).await
    }

    /// Accepts the proxy's next connection, reads its hello and accepts it
    /// as the paired laptop: what follows on the returned stream is yamux.
    pub async fn accept_link(&self) -> FakeConn {
        let (mut conn, hello) = self.accept_hello().await;
        assert!(
            hello.pairing_token.is_none(),
            "a paired laptop sends no token"
        );
        let accepted = ServerHello::Accepted {
            version: PROTOCOL_VERSION,
            paired_now: false,
            software: "nexus-e2e fake shim".into(),
        };
        nexus_transport::send(&mut conn, &accepted)
            .await
            .must("accepting the laptop");
        conn
    }
}

/// Dials a shim as the laptop whose identity is in `identity_dir`, sends
/// `hello` and returns the shim's answer.
pub async fn hello_as(
    identity_dir: &std::path::Path,
    address: &str,
    shim_fingerprint: &str,
    hello: &ClientHello,
) -> ServerHello {
    link_as(identity_dir, address, shim_fingerprint, hello)
        .await
        .1
}

/// As [`hello_as`], keeping the connection: after an `Accepted`, yamux
/// follows on it, the laptop as its client.
pub async fn link_as(
    identity_dir: &std::path::Path,
    address: &str,
    shim_fingerprint: &str,
    hello: &ClientHello,
) -> (client::TlsStream<TcpStream>, ServerHello) {
    let (identity, created) = Identity::load_or_create(identity_dir, "nexus-agent-proxy")
        .must("loading the laptop's identity");
    assert!(!created, "expected an existing laptop identity");
    let pin = shim_fingerprint.parse().must("the shim's fingerprint");
    let (config, _) = tls::client_config(&identity, pin).must("client config");
    let step = async {
        let tcp = TcpStream::connect(address).await.must("dialing the shim");
        let mut conn = TlsConnector::from(config)
            .connect(tls::server_name(), tcp)
            .await
            .must("TLS with the shim");
        nexus_transport::send(&mut conn, hello)
            .await
            .must("sending the hello");
        let answer = nexus_transport::recv(&mut conn, HANDSHAKE_MAX_FRAME)
            .await
            .must("reading the shim's answer");
        (conn, answer)
    };
    within(DEADLINE, step).await
}

/// Awaits `fut`, failing the test after `limit`.
#[track_caller]
pub fn within<F: Future>(limit: Duration, fut: F) -> impl Future<Output = F::Output> {
    let at = std::panic::Location::caller();
    async move {
        match tokio::time::timeout(limit, fut).await {
            Ok(v) => v,
            Err(_) => panic!("timed out after {limit:?} at {at}"),
        }
    }
}
