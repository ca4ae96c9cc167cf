//! The shim's half of the keepalive: answer the laptop's pings, and declare
//! the link dead when they stop, so that `status` says "not linked" and new
//! calls wait for the next link instead of going into a dead one. The
//! identity lists the laptop pushes arrive on the same kind of stream.
//!
//! The watchdog arms at the first ping (a laptop that never pings is not
//! judged by them) and allows the larger of its own timeout and four of the
//! laptop's announced ping intervals since the last ping or the last byte
//! from the laptop, whichever came later; bytes alone stand in for pings
//! for four times that at most.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nexus_protocol::{Control, ControlReply, MAX_FRAME};
use nexus_transport::{MuxHandle, MuxStream};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::agent::IdentityCache;

/// How long the laptop may take to send the first frame of a stream it opened.
const CONTROL_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the watchdog looks.
const TICK: Duration = Duration::from_millis(200);

/// Answers pings on the streams the laptop opens, stores the identity
/// lists it pushes in `identities`, and watches for silence, until the
/// connection ends. Aborts the connection when the laptop has been silent
/// too long.
pub async fn run(
    mux: MuxHandle,
    mut inbound: mpsc::Receiver<MuxStream>,
    timeout: Duration,
    identities: Arc<IdentityCache>,
) {
    // (time of the last ping, the laptop's ping interval); None until the first.
    let mut last: Option<(Instant, Duration)> = None;
    loop {
        let stream = tokio::select! {
            () = mux.closed() => return,
            s = inbound.recv() => match s { Some(s) => s, None => return },
            () = tokio::time::sleep(TICK) => {
                if let Some((pinged, interval)) = last {
                    let allowed = timeout.max(interval.saturating_mul(4));
                    // Behind a download on a slow link a ping can wait
                    // longer than that; the download's own bytes show the
                    // laptop is there, for a while.
                    let silent = nexus_transport::mux::too_silent(Instant::now(), pinged, mux.last_heard(), allowed);
                    if let Some(silent) = silent {
                        warn!(silent_s = silent.as_secs(), "no ping from the laptop; link declared dead");
                        mux.abort();
                        return;
                    }
                }
                continue;
            }
        };
        if let Some(interval) = answer(stream, &identities).await {
            last = Some((Instant::now(), interval));
        }
    }
}

/// Answers one control stream; returns the laptop's ping interval for a ping.
async fn answer(mut stream: MuxStream, identities: &IdentityCache) -> Option<Duration> {
    // The paired laptop's frames: an identity list may be long.
    let control = tokio::time::timeout(
        CONTROL_READ_TIMEOUT,
        nexus_transport::recv::<_, Control>(&mut stream, MAX_FRAME),
    )
    .await;
    let interval = match control {
        Ok(Ok(Control::Ping { seq, interval_ms })) => {
            let _ = nexus_transport::send(&mut stream, &ControlReply::Pong { seq }).await;
            Some(Duration::from_millis(interval_ms))
        }
        Ok(Ok(Control::SshIdentities(push))) => {
            identities.store(push);
            let _ = nexus_transport::send(&mut stream, &ControlReply::SshIdentitiesStored).await;
            None
        }
        Ok(Err(e)) => {
            debug!(error = %e, "unreadable control stream from the laptop; reset");
            None
        }
        Err(_) => None,
    };
    let _ = stream.shutdown().await;
    interval
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_transport::{MuxConfig, mux};
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn pings_are_answered_and_silence_ends_the_link() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let stop = CancellationToken::new();
        let (shim, shim_in, shim_driver) =
            mux::start(a, mux::Mode::Server, MuxConfig::SHIM, stop.clone());
        let (laptop, _laptop_in, _d) =
            mux::start(b, mux::Mode::Client, MuxConfig::PROXY, stop.clone());
        let watch = tokio::spawn(run(
            shim.clone(),
            shim_in,
            Duration::from_millis(400),
            Arc::default(),
        ));
        let Ok(mut stream) = laptop.open().await else {
            panic!("opening a ping stream");
        };
        let s = &mut stream;
        let ping = Control::Ping {
            seq: 7,
            interval_ms: 50,
        };
        assert!(nexus_transport::send(s, &ping).await.is_ok());
        let pong = nexus_transport::recv::<_, ControlReply>(s, 64).await;
        assert_eq!(pong.ok(), Some(ControlReply::Pong { seq: 7 }));
        // No more pings: the shim gives the link up after its timeout.
        let ended = tokio::time::timeout(Duration::from_secs(5), shim_driver).await;
        assert!(matches!(ended, Ok(Ok(mux::MuxExit::Aborted))), "{ended:?}");
        let _ = watch.await;
        stop.cancel();
    }

    /// A ping held back behind a download on a slow link: the download's
    /// bytes keep the link past the timeout, but not past four timeouts
    /// without a ping.
    #[tokio::test]
    async fn bytes_from_the_laptop_stand_in_for_late_pings_for_a_while() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let stop = CancellationToken::new();
        let (shim, shim_in, mut shim_driver) =
            mux::start(a, mux::Mode::Server, MuxConfig::SHIM, stop.clone());
        let (laptop, mut laptop_in, _d) =
            mux::start(b, mux::Mode::Client, MuxConfig::PROXY, stop.clone());
        let watch = tokio::spawn(run(
            shim.clone(),
            shim_in,
            Duration::from_secs(1),
            Arc::default(),
        ));
        let Ok(mut ping) = laptop.open().await else {
            panic!("opening a ping stream");
        };
        let first = Control::Ping {
            seq: 1,
            interval_ms: 50,
        };
        assert!(nexus_transport::send(&mut ping, &first).await.is_ok());
        let pong = nexus_transport::recv::<_, ControlReply>(&mut ping, 64).await;
        assert_eq!(pong.ok(), Some(ControlReply::Pong { seq: 1 }));
        let pinged = Instant::now();
        // A stream the laptop sends down, a byte every 100 ms for 6 s, and
        // no ping after the first.
        let Ok(mut up) = shim.open().await else {
            panic!("opening a stream");
        };
        assert!(up.write_all(b"x").await.is_ok() && up.flush().await.is_ok());
        let Some(mut down) = laptop_in.recv().await else {
            panic!("the laptop got no stream");
        };
        let trickle = tokio::spawn(async move {
            for _ in 0..60 {
                if down.write_all(b"y").await.is_err() || down.flush().await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let early = tokio::time::timeout(Duration::from_millis(2500), &mut shim_driver).await;
        assert!(early.is_err(), "the link ended while bytes came: {early:?}");
        let ended = tokio::time::timeout(Duration::from_secs(5), shim_driver).await;
        assert!(matches!(ended, Ok(Ok(mux::MuxExit::Aborted))), "{ended:?}");
        assert!(
            pinged.elapsed() >= Duration::from_millis(3900),
            "ended after {:?}, before four timeouts",
            pinged.elapsed()
        );
        let _ = watch.await;
        trickle.abort();
        drop(up);
        stop.cancel();
    }
}
