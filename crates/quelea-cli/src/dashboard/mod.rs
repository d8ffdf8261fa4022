//! `quelea dashboard`: a small web server showing the jobs in storage and
//! their calls, live. It reads storage the way any follower does
//! ([`crate::inspect::JobView`]), so it shows jobs of every backend and of
//! every client process, running or finished. Its pages and scripts are
//! compiled into the binary; nothing is fetched at run time.
//!
//! Safe by default: it listens on 127.0.0.1; bound to any other address it
//! refuses to start without a token, and then every request must carry it.
//! On loopback it answers only requests whose `Host` is a loopback name (a
//! page on another site cannot reach it through DNS rebinding). It is
//! read-only except for cancelling a job, which writes the job's cancel
//! marker and needs a header that a cross-site form cannot send. Nothing it
//! answers comes from the config: it shows job specs and call statuses only.

mod api;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, COOKIE, HOST, ORIGIN, SET_COOKIE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use quelea::storage::Storage;

use crate::inspect::JobView;

/// The default address: loopback only.
pub const DEFAULT_BIND: &str = "127.0.0.1:8265";

/// A token shorter than this is refused: it must not be guessable.
const MIN_TOKEN_CHARS: usize = 16;

const COOKIE_NAME: &str = "quelea_dashboard";

/// The header a cancel request must carry (a cross-site form cannot set it,
/// and a cross-site script would need a CORS preflight this server never
/// grants).
pub const CANCEL_HEADER: &str = "x-quelea-dashboard";

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

const INDEX_HTML: &str = include_str!("assets/index.html");
const JOB_HTML: &str = include_str!("assets/job.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
const FAVICON_SVG: &str = include_str!("assets/favicon.svg");

/// Where a running dashboard shows this job (`<executor>-<job>`), when
/// `QUELEA_DASHBOARD_URL` says where one runs.
pub fn job_url(job_key: &str) -> Option<String> {
    let base = std::env::var("QUELEA_DASHBOARD_URL").ok()?;
    let base = base.trim().trim_end_matches('/');
    (!base.is_empty()).then(|| format!("{base}/job/{job_key}"))
}

/// A bound dashboard, ready to [`Dashboard::run`].
pub struct Dashboard {
    listener: std::net::TcpListener,
    state: Arc<State>,
}

pub(crate) struct State {
    pub(crate) storage: Storage,
    token: Option<String>,
    /// Loopback bind: only loopback `Host` names are answered.
    loopback: bool,
    /// The jobs read so far, by storage prefix, refreshed incrementally.
    pub(crate) views: Mutex<HashMap<String, JobView>>,
}

impl Dashboard {
    /// Binds `addr`. Any address but loopback needs a `token` of at least
    /// 16 characters.
    pub fn bind(addr: SocketAddr, token: Option<String>, storage: Storage) -> Result<Dashboard> {
        let token = token.filter(|t| !t.is_empty());
        let loopback = addr.ip().is_loopback();
        match &token {
            None if !loopback => bail!(
                "refusing to serve the dashboard on {addr} without a token: other machines \
                 could reach it; set --token (or QUELEA_DASHBOARD_TOKEN), or bind to 127.0.0.1"
            ),
            Some(t) if t.chars().count() < MIN_TOKEN_CHARS => bail!(
                "the dashboard token is {} characters long; use at least {MIN_TOKEN_CHARS}",
                t.chars().count()
            ),
            Some(t)
                if !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.~".contains(c)) =>
            {
                bail!(
                "the dashboard token may hold only letters, digits and `-_.~` (it travels in a URL)"
            )
            }
            _ => {}
        }
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot listen on {addr}"))?;
        listener.set_nonblocking(true)?;
        Ok(Dashboard {
            listener,
            state: Arc::new(State {
                storage,
                token,
                loopback,
                views: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// The URL to open: with the token when there is one.
    pub fn url(&self) -> Result<String> {
        let addr = self.local_addr()?;
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            addr.ip().to_string()
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(match &self.state.token {
            Some(token) => format!("http://{host}:{}/?token={token}", addr.port()),
            None => format!("http://{host}:{}/", addr.port()),
        })
    }

    /// Serves until `stop` returns true (checked every 100 ms).
    pub fn run(self, stop: impl Fn() -> bool + Send + 'static) -> Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(4)
            .build()
            .context("cannot start the dashboard's runtime")?;
        let state = self.state;
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(self.listener)?;
            let mut ticker = tokio::time::interval(Duration::from_millis(100));
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = ticker.tick() => {
                        if stop() {
                            return Ok(());
                        }
                        continue;
                    }
                };
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        crate::errln!("quelea dashboard: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(state, req).await) }
                    });
                    let _ = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        })
    }
}

pub(crate) type Answer = Response<Full<Bytes>>;

pub(crate) fn answer(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Answer {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'none'",
        ),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub(crate) fn json(status: StatusCode, body: &serde_json::Value) -> Answer {
    answer(status, "application/json", body.to_string())
}

pub(crate) fn error(status: StatusCode, message: impl std::fmt::Display) -> Answer {
    json(status, &serde_json::json!({ "error": message.to_string() }))
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Answer {
    if let Err(refused) = check_host(&state, &req) {
        return refused;
    }
    let authorized_by_query = match authorize(&state, &req) {
        Ok(by_query) => by_query,
        Err(refused) => return refused,
    };
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let mut response = match (&method, path.as_str()) {
        (&Method::GET, "/") => answer(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML),
        (&Method::GET, p) if p.starts_with("/job/") => {
            answer(StatusCode::OK, "text/html; charset=utf-8", JOB_HTML)
        }
        (&Method::GET, "/static/app.js") => {
            answer(StatusCode::OK, "text/javascript; charset=utf-8", APP_JS)
        }
        (&Method::GET, "/static/style.css") => {
            answer(StatusCode::OK, "text/css; charset=utf-8", STYLE_CSS)
        }
        (&Method::GET, "/favicon.ico" | "/static/favicon.svg") => {
            answer(StatusCode::OK, "image/svg+xml", FAVICON_SVG)
        }
        (_, p) if p.starts_with("/api/") => api_route(state.clone(), req, &path).await,
        (&Method::GET, p) => error(StatusCode::NOT_FOUND, format!("no page `{p}`")),
        _ => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    };
    if authorized_by_query {
        // The URL's token becomes a cookie, so the page's own requests
        // carry it without the token in every URL.
        if let Some(token) = &state.token {
            let cookie = format!("{COOKIE_NAME}={token}; Path=/; HttpOnly; SameSite=Strict");
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(SET_COOKIE, value);
            }
        }
    }
    response
}

async fn api_route(state: Arc<State>, req: Request<Incoming>, path: &str) -> Answer {
    let rest = path.trim_start_matches("/api/");
    let parts: Vec<&str> = rest.split('/').collect();
    let query = req.uri().query().unwrap_or("").to_owned();
    match (req.method(), parts.as_slice()) {
        (&Method::GET, ["jobs"]) => blocking(move || api::jobs(&state)).await,
        (&Method::GET, ["jobs", job]) => {
            let job = (*job).to_owned();
            let since = query_param(&query, "v").and_then(|v| v.parse::<usize>().ok());
            blocking(move || api::job(&state, &job, since)).await
        }
        (&Method::GET, ["jobs", job, "calls", call]) => {
            let (job, call) = ((*job).to_owned(), (*call).to_owned());
            blocking(move || api::call(&state, &job, &call)).await
        }
        (&Method::POST, ["jobs", job, "cancel"]) => {
            if req.headers().get(CANCEL_HEADER).is_none() {
                return error(
                    StatusCode::FORBIDDEN,
                    format!("a cancel request needs the `{CANCEL_HEADER}` header"),
                );
            }
            if let Err(refused) = check_origin(&req) {
                return refused;
            }
            // The body is not used; read (at most a little of) it so the
            // connection stays usable.
            let _ = Limited::new(req.into_body(), 1024).collect().await;
            let job = (*job).to_owned();
            blocking(move || api::cancel(&state, &job)).await
        }
        (_, ["jobs"] | ["jobs", _] | ["jobs", _, "calls", _] | ["jobs", _, "cancel"]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, format!("no route `{path}`")),
    }
}

/// Runs a storage-reading handler off the server's thread.
async fn blocking(f: impl FnOnce() -> Answer + Send + 'static) -> Answer {
    match tokio::task::spawn_blocking(f).await {
        Ok(answer) => answer,
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the request failed: {e}"),
        ),
    }
}

fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then_some(value)
    })
}

/// On a loopback bind, only loopback host names are answered.
// The refusal is the answer itself, built once per refused request.
#[allow(clippy::result_large_err)]
fn check_host(state: &State, req: &Request<Incoming>) -> Result<(), Answer> {
    if !state.loopback {
        return Ok(());
    }
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if is_loopback_host(host) {
        Ok(())
    } else {
        Err(error(
            StatusCode::FORBIDDEN,
            "this dashboard listens on loopback and answers requests for 127.0.0.1 or localhost only",
        ))
    }
}

/// `127.0.0.1:8265`, `localhost:8265`, `[::1]:8265` (and without a port).
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']').map_or("", |(inside, _)| inside)
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A cancel sent from a page of another origin is refused.
// The refusal is the answer itself, built once per refused request.
#[allow(clippy::result_large_err)]
fn check_origin(req: &Request<Incoming>) -> Result<(), Answer> {
    let Some(origin) = req.headers().get(ORIGIN).and_then(|o| o.to_str().ok()) else {
        return Ok(());
    };
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    if !host.is_empty() && origin_host.eq_ignore_ascii_case(host) {
        Ok(())
    } else {
        Err(error(
            StatusCode::FORBIDDEN,
            "a cancel request must come from the dashboard's own pages",
        ))
    }
}

/// With a token, every request carries it: as the `token` query parameter
/// (the URL the command printed), a cookie, or `Authorization: Bearer`.
/// Returns whether it came in the query.
// The refusal is the answer itself, built once per refused request.
#[allow(clippy::result_large_err)]
fn authorize(state: &State, req: &Request<Incoming>) -> Result<bool, Answer> {
    let Some(token) = &state.token else {
        return Ok(false);
    };
    let query = req.uri().query().unwrap_or("");
    if query_param(query, "token").is_some_and(|t| same(t, token)) {
        return Ok(true);
    }
    let bearer = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer.is_some_and(|t| same(t, token)) {
        return Ok(false);
    }
    let cookie = req
        .headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .any(|(name, value)| name == COOKIE_NAME && same(value, token));
    if cookie {
        return Ok(false);
    }
    Err(error(
        StatusCode::UNAUTHORIZED,
        "this dashboard needs its token: open the URL that `quelea dashboard` printed",
    ))
}

/// Compares without stopping at the first difference.
fn same(given: &str, token: &str) -> bool {
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in [
            "127.0.0.1:8265",
            "localhost:1",
            "LOCALHOST",
            "[::1]:80",
            "127.1.2.3",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example:8265",
            "10.0.0.1:8265",
            "",
            "[fe80::1]:80",
            "localhost.evil",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same("abcdefghijklmnop", "abcdefghijklmnop"));
        assert!(!same("abcdefghijklmnoq", "abcdefghijklmnop"));
        assert!(!same("abc", "abcdefghijklmnop"));
        assert_eq!(query_param("a=1&token=xyz&v=3", "token"), Some("xyz"));
        assert_eq!(query_param("a=1", "v"), None);
    }
}
