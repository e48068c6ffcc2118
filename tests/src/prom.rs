//! Prometheus scraping for the tests: GET on the agent's metrics listener inside a namespace,
//! `promtool check metrics`, and reading one series' value.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::{Command, Stdio},
};

use crate::netns::{NetNs, in_netns};

/// `GET path` on `addr` (e.g. "127.0.0.1:9464") from inside `ns`: (status, body).
pub fn get(ns: &NetNs, addr: &str, path: &str) -> (u16, String) {
    in_netns(ns, || {
        let mut s = TcpStream::connect(addr).expect("metrics listener");
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

/// The value of the first series starting with `series` (name and labels as exposed).
pub fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{metrics}"))
}

/// Panics with promtool's complaints unless `promtool check metrics` accepts `text`.
pub fn promtool_check(text: &str) {
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
