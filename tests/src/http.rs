//! A small blocking HTTP/1.1 client over the agent's Unix socket, for the API tests.
//!
//! Deliberately independent of the agent's own client code (and of hyper): one request per
//! connection with `Connection: close`, the request bytes our own (tests send malformed
//! requests on purpose), the answer read to EOF and parsed with httparse, the body decoded
//! from `Content-Length` or chunked transfer coding. Panics with context on I/O errors, as the
//! tests do.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde_json::Value;

/// How long one request may take before the test fails.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The `Content-Type` header, empty if absent.
    pub content_type: String,
    /// The decoded body, lossily converted to UTF-8.
    pub body: String,
}

/// Sends one request and reads the whole answer.
///
/// `path_and_query` goes on the request line exactly as given (no encoding), so tests can
/// send the seeds' sample requests byte for byte.
pub fn call(
    socket: &Path,
    method: &str,
    path_and_query: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Response {
    call_with_headers(socket, method, path_and_query, content_type, &[], body)
}

/// [`call`] with extra request headers (e.g. the `Host`, `Service` and `Region` of
/// Volcengine's sample request). A `Host` given here replaces the default one.
pub fn call_with_headers(
    socket: &Path,
    method: &str,
    path_and_query: &str,
    content_type: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    call_raw(
        socket,
        &request_bytes(method, path_and_query, content_type, headers, body),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{method} {} on {}: {e}",
            shorten(path_and_query),
            socket.display()
        )
    })
}

/// The request as sent on the wire.
pub fn request_bytes(
    method: &str,
    path_and_query: &str,
    content_type: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!("{method} {path_and_query} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str("Host: localhost\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("Connection: close\r\n");
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// Sends `request` as is (it may be malformed on purpose) and parses the answer.
///
/// A server may answer and close before it has read a large or bad request; a failed write
/// is therefore not an error as long as an answer can still be read.
pub fn call_raw(socket: &Path, request: &[u8]) -> Result<Response, String> {
    let mut stream =
        UnixStream::connect(socket).map_err(|e| format!("connecting to the API socket: {e}"))?;
    stream
        .set_read_timeout(Some(crate::scaled(IO_TIMEOUT)))
        .and_then(|()| stream.set_write_timeout(Some(crate::scaled(IO_TIMEOUT))))
        .map_err(|e| format!("socket timeouts: {e}"))?;
    let write_error = stream.write_all(request).err();
    let _ = stream.flush();
    let mut raw = Vec::new();
    let read_error = stream.read_to_end(&mut raw).err();
    if raw.is_empty() {
        return Err(format!(
            "no answer (write error: {write_error:?}, read error: {read_error:?})"
        ));
    }
    parse_response(&raw).map_err(|e| {
        format!(
            "{e} (write error: {write_error:?}, read error: {read_error:?}); raw answer: {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(2000)])
        )
    })
}

/// Parses an answer read to EOF: the head with httparse, the body by `Content-Length`, chunked
/// transfer coding or the connection's end.
fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut head = httparse::Response::new(&mut headers);
    let head_len = match head.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("the answer has no end of headers".into()),
        Err(e) => return Err(format!("bad answer head: {e}")),
    };
    let status = head.code.ok_or("the answer has no status code")?;
    let rest = &raw[head_len..];
    let mut content_type = String::new();
    let mut content_length = None;
    let mut chunked = false;
    for h in head.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| format!("header {} is not UTF-8", h.name))?
            .trim();
        match h.name.to_ascii_lowercase().as_str() {
            "content-type" => content_type = value.to_string(),
            "content-length" => {
                content_length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| format!("bad Content-Length {value:?}"))?,
                );
            }
            "transfer-encoding" => {
                chunked = value
                    .rsplit(',')
                    .next()
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            }
            _ => {}
        }
    }
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = content_length {
        if rest.len() < n {
            return Err(format!(
                "the body is cut short: {} of {n} bytes",
                rest.len()
            ));
        }
        rest[..n].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        content_type,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Decodes a chunked body (RFC 9112 section 7.1); trailers are skipped.
fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let (size_len, size) = match httparse::parse_chunk_size(data) {
            Ok(httparse::Status::Complete(parsed)) => parsed,
            Ok(httparse::Status::Partial) => return Err("a chunk size line has no end".into()),
            Err(httparse::InvalidChunkSize) => return Err("bad chunk size".into()),
        };
        let size = usize::try_from(size).map_err(|_| format!("chunk of {size} bytes"))?;
        data = &data[size_len..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err(format!("a chunk of {size} bytes is cut short"));
        }
        out.extend_from_slice(&data[..size]);
        if &data[size..size + 2] != b"\r\n" {
            return Err("a chunk does not end with CRLF".into());
        }
        data = &data[size + 2..];
    }
}

fn shorten(s: &str) -> String {
    if s.len() <= 300 {
        return s.to_string();
    }
    let mut end = 300;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

/// Percent-encodes a query component (everything but RFC 3986 unreserved characters).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `k1=v1&k2=v2`, percent-encoded.
pub fn form(params: &[(&str, &str)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `GET /?{query}`; `query` is sent as given.
pub fn rpc_get(socket: &Path, query: &str) -> Response {
    call(socket, "GET", &format!("/?{query}"), None, b"")
}

/// `GET /?…` with `params` percent-encoded into the query string.
pub fn rpc_get_params(socket: &Path, params: &[(&str, &str)]) -> Response {
    rpc_get(socket, &form(params))
}

/// `POST /` with `params` as an `application/x-www-form-urlencoded` body.
pub fn rpc_post_form(socket: &Path, params: &[(&str, &str)]) -> Response {
    call(
        socket,
        "POST",
        "/",
        Some("application/x-www-form-urlencoded"),
        form(params).as_bytes(),
    )
}

/// `POST /` with a JSON object body.
pub fn rpc_post_json(socket: &Path, body: &Value) -> Response {
    call(
        socket,
        "POST",
        "/",
        Some("application/json"),
        body.to_string().as_bytes(),
    )
}

/// The body parsed as JSON; panics with the answer if it is not JSON.
pub fn json(r: &Response) -> Value {
    serde_json::from_str(&r.body)
        .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {} {:?}", r.status, r.body))
}

/// GET `path` from an agent's metrics listener on 127.0.0.1:`port` inside `ns`: (status, body).
pub fn metrics_get(ns: &crate::netns::NetNs, port: u16, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    crate::netns::in_netns(ns, || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics listener");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("request");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("response");
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    })
}

/// The value of the series that starts with `series` (name and labels) in a scrape.
pub fn metric_value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{metrics}"))
}

/// Panics with promtool's complaints unless `promtool check metrics` accepts `text`.
pub fn promtool_check(text: &str) {
    use std::{
        io::Write as _,
        process::{Command, Stdio},
    };
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (cargo xtask setup installs Debian's prometheus)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feeding promtool");
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_answers() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
        )
        .unwrap();
        assert_eq!(
            (r.status, r.content_type.as_str(), r.body.as_str()),
            (200, "application/json", "{}")
        );
    }

    #[test]
    fn chunked_answers() {
        let r = parse_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (404, "abcde"));
    }

    #[test]
    fn answers_without_length_read_to_eof() {
        let r = parse_response(b"HTTP/1.0 400 Bad Request\r\n\r\nbad").unwrap();
        assert_eq!((r.status, r.body.as_str()), (400, "bad"));
    }

    #[test]
    fn encoding() {
        assert_eq!(encode(r#"["a b*"]"#), "%5B%22a%20b%2A%22%5D");
        assert_eq!(form(&[("A", "1"), ("B.1", "x&y")]), "A=1&B.1=x%26y");
    }
}
