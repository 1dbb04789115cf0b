//! The `/metrics` endpoint: a small HTTP/1.1 server on the agent's runtime that answers
//! `GET /metrics` with the OpenMetrics exposition (what Prometheus asks for), or the
//! Prometheus text format for clients that do not ask for OpenMetrics (curl, promtool).
//!
//! Prometheus needs one route and one verb, so this parses just that (bounded head, timeouts,
//! a cap on connections) rather than bring an HTTP framework into the agent. Connections are
//! kept alive between scrapes: a scraper that reconnects every second would show up in the
//! very TCP metrics it scrapes.

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
const MAX_HEAD: usize = 8 * 1024;
const MAX_CONNECTIONS: usize = 16;
/// A request must arrive whole within this once it starts, and a response go out within it.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle kept-alive connection is closed after this (Prometheus reconnects when it needs).
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Parses `--metrics-listen`: `PORT` or `:PORT` listen on 127.0.0.1; `ADDR:PORT` or
/// `[V6]:PORT` as given.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let port_only = s.strip_prefix(':').unwrap_or(s);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    s.parse::<SocketAddr>().map_err(|_| {
        format!("`{s}`: expected PORT, :PORT or ADDR:PORT (e.g. 9464, 127.0.0.1:9464, [::1]:9464)")
    })
}

/// What a request asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Metrics {
        head_only: bool,
        openmetrics: bool,
    },
    NotFound,
    MethodNotAllowed,
    BadRequest,
    /// The tracer stopped: nothing to render.
    Unavailable,
}

/// The route of a request head (request line and headers, without the blank line), and
/// whether the client wants the connection closed after the answer.
pub fn route(head: &[u8]) -> (Route, bool) {
    let Ok(head) = std::str::from_utf8(head) else {
        return (Route::BadRequest, true);
    };
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (Route::BadRequest, true);
    };
    if !version.starts_with("HTTP/1.") {
        return (Route::BadRequest, true);
    }
    let mut close = version == "HTTP/1.0";
    let mut openmetrics = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return (Route::BadRequest, true);
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
        if name.eq_ignore_ascii_case("accept") {
            openmetrics = value.contains("application/openmetrics-text");
        }
        let body = (name.eq_ignore_ascii_case("content-length") && value != "0")
            || name.eq_ignore_ascii_case("transfer-encoding");
        if body {
            // Nothing here takes a body; rather than skip one, end the conversation.
            return (Route::BadRequest, true);
        }
    }
    let path = target.split('?').next().unwrap_or_default();
    let route = match (method, path) {
        ("GET" | "HEAD", "/metrics") => Route::Metrics {
            head_only: method == "HEAD",
            openmetrics,
        },
        (_, "/metrics") => Route::MethodNotAllowed,
        _ => Route::NotFound,
    };
    (route, close)
}

/// The response bytes for `route`; `body` is the exposition, for the metrics route only.
pub fn response(route: &Route, close: bool, body: String) -> Vec<u8> {
    let text = |status, message: &str| {
        (
            status,
            "text/plain; charset=utf-8",
            message.to_owned(),
            false,
        )
    };
    let (status, content_type, body, head_only) = match route {
        Route::Metrics {
            head_only,
            openmetrics,
        } => {
            let content_type = if *openmetrics { OPENMETRICS } else { TEXT };
            ("200 OK", content_type, body, *head_only)
        }
        Route::NotFound => text("404 Not Found", "netmon serves /metrics only\n"),
        Route::MethodNotAllowed => text("405 Method Not Allowed", "use GET\n"),
        Route::BadRequest => text("400 Bad Request", "bad request\n"),
        Route::Unavailable => text("503 Service Unavailable", "the tracer stopped\n"),
    };
    let allow = if *route == Route::MethodNotAllowed {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let connection = if close { "close" } else { "keep-alive" };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: {connection}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Accepts scrapers until the task is aborted; `render(openmetrics)` makes the exposition
/// (`None`: the tracer is gone).
pub async fn serve<F, Fut>(listener: TcpListener, render: F)
where
    F: Fn(bool) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Option<String>> + Send,
{
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // EMFILE and the like: do not spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        let (open, render) = (open.clone(), render.clone());
        tokio::spawn(async move {
            let _ = conversation(stream, render).await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn conversation<F, Fut>(mut stream: TcpStream, render: F) -> std::io::Result<()>
where
    F: Fn(bool) -> Fut,
    Fut: Future<Output = Option<String>>,
{
    stream.set_nodelay(true).ok();
    let mut buf = Vec::with_capacity(1024);
    loop {
        let Some(end) = read_head(&mut stream, &mut buf).await? else {
            return Ok(());
        };
        let (mut route, close) = route(&buf[..end]);
        buf.drain(..end + 4);
        let mut body = String::new();
        if let Route::Metrics { openmetrics, .. } = route {
            match render(openmetrics).await {
                Some(b) => body = b,
                None => route = Route::Unavailable,
            }
        }
        let reply = response(&route, close, body);
        tokio::time::timeout(IO_TIMEOUT, stream.write_all(&reply))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        if close || matches!(route, Route::BadRequest | Route::Unavailable) {
            return stream.shutdown().await;
        }
    }
}

/// Reads until `buf` holds a whole head; its length without the blank line, or `None` when
/// the client left or idled out.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Option<usize>> {
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(end));
        }
        if buf.len() > MAX_HEAD {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        let wait = if buf.is_empty() {
            IDLE_TIMEOUT
        } else {
            IO_TIMEOUT
        };
        match tokio::time::timeout(wait, stream.read(&mut chunk)).await {
            Err(_) | Ok(Ok(0)) => return Ok(None),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_default_to_loopback() {
        assert_eq!(
            parse_listen("9464").unwrap(),
            "127.0.0.1:9464".parse().unwrap()
        );
        assert_eq!(
            parse_listen(":9464").unwrap(),
            "127.0.0.1:9464".parse().unwrap()
        );
        assert_eq!(
            parse_listen("0.0.0.0:80").unwrap(),
            "0.0.0.0:80".parse().unwrap()
        );
        assert_eq!(
            parse_listen("[::1]:80").unwrap(),
            "[::1]:80".parse().unwrap()
        );
        let err = parse_listen("localhost").unwrap_err();
        assert!(
            err.contains("`localhost`") && err.contains("ADDR:PORT"),
            "{err}"
        );
        assert!(parse_listen("70000").is_err());
    }

    #[test]
    fn routes_what_prometheus_sends() {
        let metrics = |head_only, openmetrics| Route::Metrics {
            head_only,
            openmetrics,
        };
        let prometheus = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9464\r\nAccept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\nAccept-Encoding: gzip\r\nUser-Agent: Prometheus/2.42.0";
        assert_eq!(route(prometheus), (metrics(false, true), false));
        let curl = b"GET /metrics?x=1 HTTP/1.1\r\nAccept: */*\r\nConnection: close";
        assert_eq!(route(curl), (metrics(false, false), true));
        assert!(route(b"GET /metrics HTTP/1.0").1, "HTTP/1.0 closes");
        assert_eq!(route(b"HEAD /metrics HTTP/1.1").0, metrics(true, false));
        assert_eq!(route(b"POST /metrics HTTP/1.1").0, Route::MethodNotAllowed);
        assert_eq!(route(b"GET / HTTP/1.1").0, Route::NotFound);
        assert_eq!(route(b"GET /metrics").0, Route::BadRequest);
        assert_eq!(route(b"GET /metrics SPDY/3").0, Route::BadRequest);
        let no_colon = b"GET /metrics HTTP/1.1\r\nno colon";
        assert_eq!(route(no_colon).0, Route::BadRequest);
        let body = b"GET /metrics HTTP/1.1\r\nContent-Length: 5";
        assert_eq!(route(body).0, Route::BadRequest);
        assert_eq!(route(&[0xff, 0xfe]).0, Route::BadRequest);
    }

    #[test]
    fn responses_carry_length_type_and_connection() {
        let eof = || "# EOF\n".to_owned();
        let metrics = |head_only, openmetrics| Route::Metrics {
            head_only,
            openmetrics,
        };
        let ok = String::from_utf8(response(&metrics(false, true), false, eof())).unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains(&format!("Content-Type: {OPENMETRICS}\r\n")),
            "{ok}"
        );
        assert!(ok.contains("Content-Length: 6\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\n# EOF\n"), "{ok}");
        assert!(ok.contains("Connection: keep-alive"), "{ok}");
        let text = String::from_utf8(response(&metrics(false, false), false, eof())).unwrap();
        assert!(
            text.contains("Content-Type: text/plain; version=0.0.4"),
            "{text}"
        );
        let head = String::from_utf8(response(&metrics(true, true), true, eof())).unwrap();
        assert!(head.contains("Content-Length: 6\r\n"), "{head}");
        assert!(head.ends_with("Connection: close\r\n\r\n"), "{head}");
        let nf = response(&Route::NotFound, false, String::new());
        assert!(String::from_utf8(nf).unwrap().starts_with("HTTP/1.1 404"));
        let gone = response(&Route::Unavailable, false, String::new());
        assert!(String::from_utf8(gone).unwrap().starts_with("HTTP/1.1 503"));
        let na = response(&Route::MethodNotAllowed, false, String::new());
        let na = String::from_utf8(na).unwrap();
        assert!(na.contains("Allow: GET, HEAD\r\n"), "{na}");
    }
}
