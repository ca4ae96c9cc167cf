//! The tunnel client: dial a workspace over TLS, say hello, then answer the
//! calls the shim opens as yamux streams. Reconnects with jittered backoff.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nexus_protocol::{
    Call, ClientHello, ErrorCode, HANDSHAKE_MAX_FRAME, Refusal, Reply, SUPPORTED, Secret,
    ServerHello,
};
use nexus_transport::tls::{PinnedServer, client_config, server_name};
use nexus_transport::tokio_rustls::{TlsConnector, client::TlsStream};
use nexus_transport::{Fingerprint, Identity, MuxConfig, MuxStream, TransportError, mux};
use rand::Rng;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::tools::{self, ToolContext};

/// How long a TCP connect plus TLS plus hello may take.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the shim may take to send a call's first frame.
pub const CALL_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Calls answered at once per workspace; more wait (and past yamux's queue,
/// are reset). Bounds the memory and child processes one workspace can
/// claim on the laptop.
pub const MAX_CALLS_IN_FLIGHT: usize = 64;
/// Largest call frame: a sign request carries at most one 256 KiB agent
/// message plus a few session binds.
pub const MAX_CALL_FRAME: usize = 512 << 10;
/// Backoff cap during the first [`FAST_RETRY_WINDOW`] of an outage.
pub const FAST_BACKOFF_CAP: Duration = Duration::from_secs(1);
/// How long an outage is retried at the fast cap.
pub const FAST_RETRY_WINDOW: Duration = Duration::from_secs(30);
/// Backoff cap after that.
pub const SLOW_BACKOFF_CAP: Duration = Duration::from_secs(15);

/// Why a dial failed, phrased for the user.
#[derive(Debug, Error)]
pub enum DialError {
    /// TCP could not connect.
    #[error(
        "cannot reach {addr}: {source}; is `nexus-shim serve` running there and the port reachable?"
    )]
    Unreachable {
        /// Address dialed.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The workspace's certificate is not the pinned one.
    #[error(
        "the workspace at {addr} presented certificate {seen} but {pinned} is pinned. Someone may be \
         intercepting the connection, or the workspace's state dir was reset. If you trust the change, \
         get a new URI there (nexus-shim pairing-uri --rotate) and pair again"
    )]
    PinMismatch {
        /// Address dialed.
        addr: String,
        /// What was presented.
        seen: String,
        /// What we pinned.
        pinned: Fingerprint,
    },
    /// The shim refused our certificate or token.
    #[error("{0}")]
    Refused(String),
    /// Anything else on the way.
    #[error("{context}: {source}")]
    Failed {
        /// What we were doing.
        context: &'static str,
        /// Cause.
        source: TransportError,
    },
    /// Timed out.
    #[error("no answer from {0} within {DIAL_TIMEOUT:?}")]
    Timeout(String),
}

impl DialError {
    /// Whether retrying can help without the user doing something.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. } | Self::Timeout(_) | Self::Failed { .. }
        )
    }
}

const NOT_PAIRED: &str = "the workspace refused this laptop's certificate: this laptop is not the one paired \
     there (or the pairing token expired, or the workspace was reset). Run `nexus-shim pairing-uri --rotate` in the \
     workspace and pair again";

/// Dials `addr`, pins `pin`, says hello (with a pairing token when pairing).
///
/// # Errors
/// A [`DialError`] whose message says what to do.
pub async fn dial(
    addr: &str,
    pin: Fingerprint,
    identity: &Identity,
    pairing_token: Option<Secret>,
) -> Result<(TlsStream<TcpStream>, bool), DialError> {
    let attempt = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| DialError::Unreachable {
                addr: addr.to_owned(),
                source,
            })?;
        nexus_transport::tune_tcp(&tcp);
        let (config, verifier) =
            client_config(identity, pin).map_err(|source| DialError::Failed {
                context: "TLS setup",
                source,
            })?;
        let name = server_name();
        let mut tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| classify(addr, &verifier, e, "TLS handshake"))?;
        let hello = ClientHello {
            versions: SUPPORTED,
            pairing_token,
            software: crate::SOFTWARE.into(),
        };
        nexus_transport::send(&mut tls, &hello)
            .await
            .map_err(|e| classify_transport(addr, &verifier, e))?;
        let answer: ServerHello = nexus_transport::recv(&mut tls, HANDSHAKE_MAX_FRAME)
            .await
            .map_err(|e| classify_transport(addr, &verifier, e))?;
        match answer {
            ServerHello::Accepted { paired_now, software, version } => {
                debug!(software = %crate::tools::clip(&software), version, "workspace accepted");
                Ok((tls, paired_now))
            }
            ServerHello::Refused { reason, versions } => Err(DialError::Refused(match reason {
                Refusal::Version => format!(
                    "protocol version mismatch: the workspace speaks {versions}, this proxy speaks {SUPPORTED}; \
                     upgrade the older of nexus-agent-proxy and nexus-shim"
                ),
                Refusal::PairingToken => "the workspace refused the pairing token: it is wrong, already used or \
                     expired. Get a fresh URI with `nexus-shim pairing-uri --rotate` in the workspace"
                    .to_owned(),
                Refusal::NotPaired => NOT_PAIRED.to_owned(),
            })),
        }
    };
    tokio::time::timeout(DIAL_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(DialError::Timeout(addr.to_owned())))
}

fn classify_transport(addr: &str, verifier: &PinnedServer, e: TransportError) -> DialError {
    match e {
        TransportError::Io { source, .. } => classify(addr, verifier, source, "hello"),
        TransportError::Closed => DialError::Refused(NOT_PAIRED.to_owned()),
        other => DialError::Failed {
            context: "hello",
            source: other,
        },
    }
}

fn classify(
    addr: &str,
    verifier: &PinnedServer,
    e: std::io::Error,
    context: &'static str,
) -> DialError {
    use nexus_transport::tokio_rustls::rustls::{
        AlertDescription, CertificateError, Error as TlsError,
    };
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>());
    match tls {
        Some(TlsError::InvalidCertificate(CertificateError::ApplicationVerificationFailure)) => {
            DialError::PinMismatch {
                addr: addr.to_owned(),
                seen: verifier
                    .seen()
                    .map_or_else(|| "(none)".to_owned(), |f| f.to_string()),
                pinned: verifier.expected(),
            }
        }
        Some(TlsError::AlertReceived(
            AlertDescription::AccessDenied
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown,
        )) => DialError::Refused(NOT_PAIRED.to_owned()),
        _ => DialError::Failed {
            context,
            source: TransportError::Io {
                context: context.into(),
                source: e,
            },
        },
    }
}

/// Keeps one workspace linked until `shutdown`: dial, serve, and on loss
/// dial again with jittered backoff.
pub async fn serve_workspace(
    ws: crate::config::Workspace,
    ctx: Arc<ToolContext>,
    shutdown: CancellationToken,
) {
    let identity = match ctx.identity() {
        Ok(id) => id,
        Err(e) => {
            return warn!(
                error = format!("{e:#}"),
                "cannot load this laptop's identity"
            );
        }
    };
    let mut outage_start: Option<Instant> = None;
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let dialed = tokio::select! {
            () = shutdown.cancelled() => return,
            r = dial(&ws.address, ws.fingerprint, &identity, None) => r,
        };
        // A pin mismatch or a refusal needs the user, not a retry every second.
        let needs_user = match dialed {
            Ok((tls, _)) => {
                info!(address = %ws.address, "linked");
                let up = Instant::now();
                serve_link(tls, &ws.name, &ctx, &shutdown).await;
                if up.elapsed() > Duration::from_secs(3) {
                    backoff = Duration::from_millis(100);
                    outage_start = None;
                }
                if shutdown.is_cancelled() {
                    return;
                }
                warn!("link lost; reconnecting");
                false
            }
            Err(e) => {
                let since = *outage_start.get_or_insert_with(Instant::now);
                warn!(error = %e, outage_s = since.elapsed().as_secs(), "cannot link");
                !e.is_transient()
            }
        };
        let since = *outage_start.get_or_insert_with(Instant::now);
        let cap = if !needs_user && since.elapsed() < FAST_RETRY_WINDOW {
            FAST_BACKOFF_CAP
        } else {
            SLOW_BACKOFF_CAP
        };
        backoff = (backoff * 2).min(cap);
        let jittered = backoff.mul_f64(rand::rng().random_range(0.5..1.0));
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(jittered) => {}
        }
    }
}

/// Answers the streams of one live link until it ends or `shutdown`.
async fn serve_link(
    tls: TlsStream<TcpStream>,
    workspace: &str,
    ctx: &Arc<ToolContext>,
    shutdown: &CancellationToken,
) {
    let stop = shutdown.child_token();
    let (_mux, mut inbound, driver) =
        mux::start(tls, mux::Mode::Client, MuxConfig::PROXY, stop.clone());
    let calls = TaskTracker::new();
    let gate = Arc::new(Semaphore::new(MAX_CALLS_IN_FLIGHT));
    let mut next = 0u64;
    while let Some(stream) = inbound.recv().await {
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        next += 1;
        let span = info_span!("call", id = next);
        let ctx = ctx.clone();
        let workspace = workspace.to_owned();
        calls.spawn(
            async move {
                answer(stream, &workspace, &ctx).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
    // The driver closed the inbound queue: the link is gone or shutting down.
    calls.close();
    if tokio::time::timeout(Duration::from_secs(10), calls.wait())
        .await
        .is_err()
    {
        warn!("calls still running after the link ended");
    }
    stop.cancel();
    let exit = driver.await;
    debug!(?exit, "link driver ended");
}

async fn answer(mut stream: MuxStream, workspace: &str, ctx: &ToolContext) {
    let call: Call = match tokio::time::timeout(
        CALL_READ_TIMEOUT,
        nexus_transport::recv(&mut stream, MAX_CALL_FRAME),
    )
    .await
    {
        Ok(Ok(call)) => call,
        Ok(Err(TransportError::Closed)) => return,
        Ok(Err(e)) => {
            warn!(error = %crate::tools::clip(&e.to_string()), "malformed call refused");
            let reply = Reply::error(
                ErrorCode::BadRequest,
                format!("malformed call refused by the laptop: {e}"),
            );
            let _ = nexus_transport::send(&mut stream, &reply).await;
            let _ = stream.shutdown().await;
            return;
        }
        Err(_) => return warn!("the workspace opened a call and sent nothing; dropped"),
    };
    let reply = if call.request.is_streaming() {
        tools::dispatch_stream(&call, workspace, ctx, &mut stream).await
    } else {
        tools::dispatch(&call, workspace, ctx).await
    };
    let _ = nexus_transport::send(&mut stream, &reply).await;
    let _ = stream.shutdown().await;
}
