//! What the client does end to end against a fake agent, and the helpers the modules' own
//! tests share.

use super::*;
use clap::{CommandFactory as _, Parser};
use serde_json::json;
use std::{
    ffi::OsString,
    io::{BufRead, BufReader, Read},
    net::TcpListener,
    os::unix::net::UnixListener,
    path::PathBuf,
    thread::JoinHandle,
};

/// The shape main.rs gives it: client flags at the top, client commands below.
#[derive(Parser, Debug)]
pub(super) struct TestCli {
    #[command(flatten)]
    pub(super) args: ClientArgs,
    #[command(subcommand)]
    pub(super) command: ClientCommand,
}

pub(super) fn parse(argv: &[&str]) -> TestCli {
    TestCli::try_parse_from(std::iter::once("mirror-agent").chain(argv.iter().copied())).unwrap()
}

pub(super) fn plan_of(argv: &[&str]) -> Plan {
    plan(parse(argv).command).unwrap()
}

pub(super) fn pairs(plan: &Plan) -> Vec<(&str, &str)> {
    plan.params
        .0
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

pub(super) fn no_env(_: &str) -> Option<OsString> {
    None
}

#[test]
fn clap_definition_is_consistent() {
    TestCli::command().debug_assert();
}

#[test]
fn param_without_equals_is_a_usage_error() {
    let cli = parse(&["call", "ListTrafficMirrorSessions", "MaxResults"]);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run_with(&cli.args, cli.command, &no_env, &mut out, &mut err);
    assert_eq!(code, EXIT_USAGE);
    assert!(out.is_empty());
    let err = String::from_utf8(err).unwrap();
    assert!(err.contains("\"MaxResults\" is not Key=Value"), "{err}");
}

#[test]
fn other_commands_params() {
    let p = plan_of(&[
        "session",
        "add-sources",
        "tms-1",
        "eth0",
        "eth1",
        "--dry-run",
    ]);
    assert_eq!(p.action, "AddSourcesToTrafficMirrorSession");
    assert_eq!(
        pairs(&p),
        [
            ("TrafficMirrorSessionId", "tms-1"),
            ("TrafficMirrorSourceIds.1", "eth0"),
            ("TrafficMirrorSourceIds.2", "eth1"),
            ("DryRun", "true"),
        ]
    );
    let p = plan_of(&[
        "session", "list", "--id", "tms-1", "--id", "tms-2", "--source", "eth0",
    ]);
    assert_eq!(
        pairs(&p),
        [
            ("TrafficMirrorSessionIds.1", "tms-1"),
            ("TrafficMirrorSessionIds.2", "tms-2"),
            ("TrafficMirrorSourceId", "eth0"),
        ]
    );
    assert!(p.follow_pages);
    let p = plan_of(&[
        "rule",
        "add",
        "tmf-1",
        "--direction",
        "egress",
        "--priority",
        "5",
        "--action",
        "drop",
        "--protocol",
        "UDP",
        "--dst-ports",
        "53/53",
    ]);
    assert_eq!(p.action, "CreateTrafficMirrorFilterRules");
    assert_eq!(
        pairs(&p),
        [
            ("TrafficMirrorFilterId", "tmf-1"),
            ("EgressRules.1.Priority", "5"),
            ("EgressRules.1.Action", "reject"),
            ("EgressRules.1.Protocol", "UDP"),
            ("EgressRules.1.DestinationPortRange", "53/53"),
        ]
    );
    let p = plan_of(&[
        "rule", "update", "tmr-1", "--action", "accept", "--src", "::/0",
    ]);
    assert_eq!(
        pairs(&p),
        [
            ("TrafficMirrorFilterRuleId", "tmr-1"),
            ("RuleAction", "accept"),
            ("SourceCidrBlock", "::/0"),
        ]
    );
    let p = plan_of(&["rule", "delete", "tmf-1", "tmr-1", "tmr-2"]);
    assert_eq!(
        pairs(&p),
        [
            ("TrafficMirrorFilterId", "tmf-1"),
            ("TrafficMirrorFilterRuleIds.1", "tmr-1"),
            ("TrafficMirrorFilterRuleIds.2", "tmr-2"),
        ]
    );
    let p = plan_of(&[
        "target",
        "create",
        "--destination-ip",
        "192.0.2.9",
        "--destination-port",
        "4790",
        "--name",
        "collector",
    ]);
    assert_eq!(
        pairs(&p),
        [
            ("DestinationIp", "192.0.2.9"),
            ("DestinationPort", "4790"),
            ("TrafficMirrorTargetName", "collector"),
        ]
    );
    assert!(TestCli::try_parse_from(["m", "target", "create"]).is_err());
    assert!(
        TestCli::try_parse_from([
            "m",
            "target",
            "create",
            "--destination-ip",
            "192.0.2.9",
            "--instance-id",
            "eth0"
        ])
        .is_err()
    );
    assert!(
        TestCli::try_parse_from([
            "m",
            "target",
            "create",
            "--instance-id",
            "eth0",
            "--destination-port",
            "1"
        ])
        .is_err()
    );
}

pub(super) fn sample_sessions() -> Value {
    json!({
        "RequestId": "REQ-1",
        "TotalCount": 2,
        "MaxResults": 10,
        "NextToken": "",
        "TrafficMirrorSessions": [
            {
                "TrafficMirrorSessionId": "tms-aaa",
                "TrafficMirrorSessionName": "web",
                "TrafficMirrorSessionDescription": "",
                "Priority": 1,
                "VirtualNetworkId": 100,
                "PacketLength": 128,
                "Enabled": true,
                "TrafficMirrorFilterId": "tmf-1",
                "TrafficMirrorTargetId": "tmt-1",
                "TrafficMirrorTargetType": "NetworkInterface",
                "TrafficMirrorSourceIds": ["eth0", "eth1"],
                "TrafficMirrorSessionStatus": "Created",
                "CopyPath": "fast",
                "TrafficMirrorSessionBusinessStatus": "Normal",
                "Tags": [],
                "CreationTime": "2024-01-01T00:00:00Z"
            },
            {
                "TrafficMirrorSessionId": "tms-bbbbbb",
                "Priority": 20,
                "VirtualNetworkId": 7,
                "Enabled": false,
                "TrafficMirrorFilterId": "tmf-2",
                "TrafficMirrorTargetId": "tmt-2",
                "TrafficMirrorSourceIds": ["veth9"],
                "TrafficMirrorSessionStatus": "Created",
                "TrafficMirrorSessionBusinessStatus": "FailedToApply",
                "TrafficMirrorSessionErrors": ["veth9: no such interface"]
            }
        ]
    })
}

/// Answers one HTTP/1.1 request with a canned (status, body) and returns the request's
/// head and body.
fn serve_one<S: Read + std::io::Write>(stream: S, status: u16, body: &str) -> (String, String) {
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut l = String::new();
        reader.read_line(&mut l).unwrap();
        if l == "\r\n" || l.is_empty() {
            break;
        }
        head.push_str(&l);
    }
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut request_body = vec![0; length];
    reader.read_exact(&mut request_body).unwrap();
    let answer = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    reader.get_mut().write_all(answer.as_bytes()).unwrap();
    (head, String::from_utf8(request_body).unwrap())
}

/// A fake agent on a Unix socket: one connection per canned answer, in order.
fn fake_agent(socket: PathBuf, answers: Vec<(u16, String)>) -> JoinHandle<Vec<(String, String)>> {
    let listener = UnixListener::bind(&socket).unwrap();
    std::thread::spawn(move || {
        answers
            .iter()
            .map(|(status, body)| serve_one(listener.accept().unwrap().0, *status, body))
            .collect()
    })
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mirror-agent-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run_captured(argv: &[&str]) -> (u8, String, String) {
    let cli = parse(argv);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run_with(&cli.args, cli.command, &no_env, &mut out, &mut err);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[test]
fn end_to_end_over_unix_socket() {
    let dir = temp_dir("e2e");
    let socket = dir.join("api.sock");
    let socket_arg = socket.to_str().unwrap();
    let server = fake_agent(
        socket.clone(),
        vec![
            (200, r#"{"RequestId":"R-1","TrafficMirrorSessionId":"tms-new"}"#.into()),
            (
                404,
                r#"{"RequestId":"R-2","Code":"ResourceNotFound.TrafficMirrorSession","Message":"no such session","HostId":"mirror-agent"}"#.into(),
            ),
            (
                404,
                r#"{"RequestId":"R-3","Code":"ResourceNotFound.TrafficMirrorSession","Message":"no such session","HostId":"mirror-agent"}"#.into(),
            ),
            (200, sample_sessions().to_string()),
        ],
    );

    let (code, out, err) = run_captured(&[
        "--socket",
        socket_arg,
        "session",
        "create",
        "--priority",
        "1",
        "--filter",
        "tmf-1",
        "--target",
        "tmt-1",
        "--source",
        "eth0",
        "--name",
        "a b&c",
    ]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (0, "tms-new\n", "ok (RequestId R-1)\n")
    );

    let (code, out, err) = run_captured(&["--socket", socket_arg, "session", "delete", "tms-x"]);
    assert_eq!(code, EXIT_API_ERROR);
    assert_eq!(out, "");
    assert_eq!(
        err,
        "error: ResourceNotFound.TrafficMirrorSession: no such session (RequestId R-2)\n"
    );

    let (code, out, _) = run_captured(&[
        "-o", "json", "--socket", socket_arg, "session", "delete", "tms-y",
    ]);
    assert_eq!(code, EXIT_API_ERROR);
    assert!(out.starts_with(r#"{"RequestId":"R-3","Code""#), "{out}");

    let (code, out, _) = run_captured(&["--socket", socket_arg, "session", "list"]);
    assert_eq!(code, EXIT_OK);
    assert!(out.starts_with("ID "), "{out}");
    assert!(out.contains("tms-bbbbbb"), "{out}");

    let seen = server.join().unwrap();
    let (head, body) = &seen[0];
    assert!(
        head.starts_with("POST /?Action=CreateTrafficMirrorSession HTTP/1.1\r\n"),
        "{head}"
    );
    let head_lower = head.to_ascii_lowercase();
    assert!(head_lower.contains("host: mirror-agent\r\n"), "{head}");
    assert!(
        head_lower.contains("content-type: application/x-www-form-urlencoded\r\n"),
        "{head}"
    );
    assert_eq!(
        body,
        "TrafficMirrorSessionName=a+b%26c&Priority=1&TrafficMirrorFilterId=tmf-1&TrafficMirrorTargetId=tmt-1&TrafficMirrorSourceIds.1=eth0"
    );
    assert!(
        seen[1]
            .0
            .starts_with("POST /?Action=DeleteTrafficMirrorSession HTTP/1.1\r\n")
    );
    assert_eq!(seen[1].1, "TrafficMirrorSessionId=tms-x");
    assert_eq!(seen[3].1, "");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_socket_is_exit_2_and_named() {
    let dir = temp_dir("missing");
    let socket = dir.join("nothing.sock");
    let (code, out, err) = run_captured(&["--socket", socket.to_str().unwrap(), "target", "list"]);
    assert_eq!(code, EXIT_USAGE);
    assert_eq!(out, "");
    assert!(
        err.starts_with("error: cannot connect to the agent's socket "),
        "{err}"
    );
    assert!(err.contains(socket.to_str().unwrap()), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn table_output_follows_pages() {
    let dir = temp_dir("pages");
    let socket = dir.join("api.sock");
    let page = |id: &str, next: &str| {
        json!({"RequestId": "R", "NextToken": next, "TrafficMirrorTargets": [{"TrafficMirrorTargetId": id}]})
            .to_string()
    };
    let server = fake_agent(
        socket.clone(),
        vec![(200, page("tmt-1", "p2")), (200, page("tmt-2", ""))],
    );
    let (code, out, err) = run_captured(&[
        "--socket",
        socket.to_str().unwrap(),
        "target",
        "list",
        "--max-results",
        "1",
    ]);
    assert_eq!((code, err.as_str()), (EXIT_OK, ""));
    assert_eq!(
        out.lines()
            .skip(1)
            .map(|l| l.split_whitespace().next().unwrap())
            .collect::<Vec<_>>(),
        ["tmt-1", "tmt-2"]
    );
    let seen = server.join().unwrap();
    assert_eq!(seen[0].1, "MaxResults=1");
    assert_eq!(seen[1].1, "MaxResults=1&NextToken=p2");

    // JSON output is one answer as is, with a hint about the rest.
    let socket = dir.join("api2.sock");
    let server = fake_agent(socket.clone(), vec![(200, page("tmt-1", "p2"))]);
    let (code, out, err) = run_captured(&[
        "--socket",
        socket.to_str().unwrap(),
        "-o",
        "json",
        "target",
        "list",
    ]);
    assert_eq!(code, EXIT_OK);
    assert_eq!(out, format!("{}\n", page("tmt-1", "p2")));
    assert_eq!(err, "more results: repeat with --next-token p2\n");
    server.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn end_to_end_over_tcp_with_token() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        serve_one(listener.accept().unwrap().0, 200, r#"{"RequestId":"R-5"}"#)
    });
    let (code, out, err) = run_captured(&[
        "--endpoint",
        &endpoint,
        "--token",
        "s3cret",
        "filter",
        "delete",
        "tmf-1",
        "--client-token",
        "ct",
    ]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (EXIT_OK, "ok (RequestId R-5)\n", "")
    );
    let (head, body) = server.join().unwrap();
    assert!(
        head.starts_with("POST /?Action=DeleteTrafficMirrorFilter HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("authorization: bearer s3cret\r\n"),
        "{head}"
    );
    assert_eq!(body, "TrafficMirrorFilterId=tmf-1&ClientToken=ct");
}
