//! `$NEXUS_HTTP_URL/_git/HOST/REPO/...`: git brokered by the laptop over
//! HTTPS. `nexus-shim env` points the workspace's git here for the hosts
//! the laptop brokers (`url.<base>/_git/HOST/.insteadOf https://HOST/`);
//! the laptop adds its own credential, reads a push's ref updates before
//! any of it goes on, and streams the server's answer back.
//!
//! Only git's smart-HTTP endpoints and Git LFS's API pass
//! ([`nexus_protocol::git_http::GitPath`]); anything else is a 404 here,
//! before the laptop is asked. Errors are `text/plain`, which git prints
//! as `remote: ...` lines.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request as HttpReq, Response, StatusCode, header};
use nexus_protocol::git_http::{GitPath, check_host};
use nexus_protocol::{CallerContext, ErrorCode, Reply, Request};
use tracing::debug;

use crate::http::{Body, Ctx, Ends, forward, relayed};

/// Handles a request below `_git/`; `rest` is what follows that prefix
/// (`HOST/REPO/...`).
pub(crate) async fn handle(
    req: HttpReq<Incoming>,
    rest: &str,
    caller: CallerContext,
    ctx: &Ctx,
) -> Response<Body> {
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if let Err(e) = check_host(host) {
        return text(StatusCode::NOT_FOUND, &e.to_string());
    }
    let path = match req.uri().query() {
        Some(q) => format!("/{path}?{q}"),
        None => format!("/{path}"),
    };
    let endpoint = match GitPath::parse(req.method().as_str(), &path) {
        Ok(p) => p.endpoint,
        Err(e) => return text(StatusCode::NOT_FOUND, &e.to_string()),
    };
    let request = relayed(&req, host, path);
    debug!(git_host = %request.name, %endpoint, "brokered git request");
    let ends = Ends {
        fail: from_reply,
        drain: true,
    };
    forward(
        Request::GitHttp(request),
        req.into_body(),
        caller,
        ctx,
        ends,
    )
    .await
}

/// A local answer for an error reply, as text git shows.
fn from_reply(reply: Reply) -> Response<Body> {
    let Reply::Error(e) = reply else {
        return text(StatusCode::BAD_GATEWAY, "unexpected answer from the laptop");
    };
    let status = match e.code {
        ErrorCode::Denied => StatusCode::FORBIDDEN,
        ErrorCode::NotConnected => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::Missing | ErrorCode::Internal => StatusCode::BAD_GATEWAY,
    };
    text(status, &e.message)
}

/// A `text/plain` answer of one line.
fn text(status: StatusCode, message: &str) -> Response<Body> {
    let body = format!("nexus: {}\n", message.replace(['\r', '\n'], " "));
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert("x-nexus-error", header::HeaderValue::from_static("1"));
    resp
}
