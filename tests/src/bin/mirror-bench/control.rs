//! The control plane: how long from AddSourcesToTrafficMirrorSession to copies on the wire
//! (against the same wait after `tc filter add … mirred`, the peer), and API requests per
//! second with their latency under concurrent clients.

use std::{
    fmt::Write as _,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use mirror_tests::{http, pktgen::Generator};

use crate::{
    common::{if_stats, machine, percentile},
    wire::{Bed, start_agent},
};

/// Polls the target's counter until it passes `base`; the time it did, or None after 2 s.
fn first_copy_after(bed: &Bed, base: u64, t0: Instant) -> Option<Duration> {
    let deadline = t0 + Duration::from_secs(2);
    while Instant::now() < deadline {
        if if_stats(&bed.col, "c0").rx_packets > base {
            return Some(t0.elapsed());
        }
    }
    None
}

/// Waits until no copy has arrived for 100 ms.
fn quiet_target(bed: &Bed) -> u64 {
    let mut last = if_stats(&bed.col, "c0").rx_packets;
    let mut since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
        let now = if_stats(&bed.col, "c0").rx_packets;
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() > Duration::from_millis(100) {
            break;
        }
    }
    last
}

fn sorted_ms(v: &[Duration]) -> Vec<f64> {
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    ms
}

/// One API load run.
pub struct ApiRun {
    action: &'static str,
    clients: usize,
    requests: u64,
    seconds: f64,
    /// Sorted, in ms.
    latencies: Vec<f64>,
    errors: u64,
}

pub struct Control {
    pub agent_ms: Vec<f64>,
    pub tc_ms: Vec<f64>,
    pub api: Vec<ApiRun>,
    pub rate: u64,
}

const CONFIG: &str = "[[targets]]\nid = \"tmt-col\"\ndestination_ip = \"198.18.20.2\"\n\
    [[filters]]\nid = \"tmf-all\"\n\
    [[filters.ingress_rules]]\npriority = 1\naction = \"accept\"\nprotocol = \"ALL\"\n\
    ip_version = \"IPv4\"\nsource_cidr_block = \"0.0.0.0/0\"\n\
    destination_cidr_block = \"0.0.0.0/0\"\n\
    [[sessions]]\nid = \"tms-cp\"\npriority = 1\nvirtual_network_id = 100\nenabled = true\n\
    filter_id = \"tmf-all\"\ntarget_id = \"tmt-col\"\nsources = [\"d0\"]\n";

pub fn run(bed: &Bed, quick: bool) -> Control {
    let reps = if quick { 3 } else { 30 };
    // One frame every 50 µs: the resolution of the measurement.
    let rate = 20_000;
    let sender = Generator::start(&bed.sender, bed.gen_config(64, Some(rate)));

    // Peer: tc u32 + mirred, added and removed with `tc`.
    bed.peer_vxlan();
    let mut tc = Vec::new();
    bed.node
        .exec(&["tc", "qdisc", "add", "dev", "s0", "clsact"]);
    for _ in 0..reps {
        let base = quiet_target(bed);
        let t0 = Instant::now();
        bed.node.exec(&[
            "tc", "filter", "add", "dev", "s0", "ingress", "protocol", "all", "u32", "match",
            "u32", "0", "0", "action", "mirred", "egress", "mirror", "dev", "vxm0",
        ]);
        if let Some(d) = first_copy_after(bed, base, t0) {
            tc.push(d);
        }
        bed.node
            .exec(&["tc", "filter", "del", "dev", "s0", "ingress"]);
    }
    let _ = bed
        .node
        .exec_status(&["tc", "qdisc", "del", "dev", "s0", "clsact"]);
    let _ = bed.node.exec_status(&["ip", "link", "del", "vxm0"]);

    let dir = std::env::temp_dir().join(mirror_tests::netns::unique("cag"));
    let agent = start_agent(bed, CONFIG, &dir);
    let list = agent.wait_settled(Duration::from_secs(20));
    assert_eq!(
        list["TrafficMirrorSessions"][0]["TrafficMirrorSessionBusinessStatus"], "Normal",
        "{list}"
    );
    let call = |action: &str| {
        let r = http::rpc_get_params(
            &agent.socket,
            &[
                ("Action", action),
                ("TrafficMirrorSessionId", "tms-cp"),
                ("TrafficMirrorSourceIds.1", "s0"),
            ],
        );
        assert_eq!(r.status, 200, "{action}: {}", r.body);
    };
    let mut add = Vec::new();
    for _ in 0..reps {
        let base = quiet_target(bed);
        let t0 = Instant::now();
        call("AddSourcesToTrafficMirrorSession");
        if let Some(d) = first_copy_after(bed, base, t0) {
            add.push(d);
        }
        agent.wait_settled(Duration::from_secs(10));
        call("RemoveSourcesFromTrafficMirrorSession");
        agent.wait_settled(Duration::from_secs(10));
    }
    sender.stop();

    let secs = if quick { 0.5 } else { 5.0 };
    let mut api = Vec::new();
    for (action, clients) in [
        ("ListTrafficMirrorSessions", 1),
        ("ListTrafficMirrorSessions", 8),
        ("CreateTrafficMirrorFilter (DryRun)", 8),
    ] {
        let (requests, latencies, errors) = load(&agent.socket, action, clients, secs);
        api.push(ApiRun {
            action,
            clients,
            requests,
            seconds: secs,
            latencies,
            errors,
        });
    }
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    Control {
        agent_ms: sorted_ms(&add),
        tc_ms: sorted_ms(&tc),
        api,
        rate,
    }
}

/// `clients` threads calling `action` back to back for `secs`: requests, sorted latencies
/// (ms) and non-200 answers.
fn load(socket: &Path, action: &str, clients: usize, secs: f64) -> (u64, Vec<f64>, u64) {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let results: Vec<(Vec<f64>, u64)> = thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(move || {
                    let mut lat = Vec::new();
                    let mut errors = 0;
                    while Instant::now() < until {
                        let t = Instant::now();
                        let r = if action.starts_with("Create") {
                            http::rpc_get_params(
                                socket,
                                &[
                                    ("Action", "CreateTrafficMirrorFilter"),
                                    ("DryRun", "true"),
                                    ("TrafficMirrorFilterName", "bench"),
                                    ("IngressRules.1.Action", "accept"),
                                    ("IngressRules.1.Priority", "1"),
                                    ("IngressRules.1.Protocol", "TCP"),
                                    ("IngressRules.1.DestinationCidrBlock", "10.0.0.0/8"),
                                ],
                            )
                        } else {
                            http::rpc_get_params(socket, &[("Action", action)])
                        };
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                        // DryRun answers 400 DryRunOperation when everything validated.
                        let ok = r.status == 200
                            || (r.status == 400 && r.body.contains("DryRunOperation"));
                        if !ok {
                            errors += 1;
                        }
                    }
                    (lat, errors)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let mut all: Vec<f64> = results.iter().flat_map(|r| r.0.iter().copied()).collect();
    all.sort_by(f64::total_cmp);
    let errors = results.iter().map(|r| r.1).sum();
    (all.len() as u64, all, errors)
}

impl Control {
    pub fn rows(&self) -> usize {
        usize::from(!self.agent_ms.is_empty())
            + usize::from(!self.tc_ms.is_empty())
            + self.api.iter().filter(|a| a.requests > 0).count()
    }

    pub fn expected_rows() -> usize {
        5
    }

    pub fn markdown(&self, quick: bool) -> String {
        let mut out = String::new();
        let p = |v: &[f64], q: f64| percentile(v, q);
        let _ = writeln!(
            out,
            "## Control plane\n\n\
             Machine: {}. Method: the wire bed above with the generator at {} pps (one frame \
             every {:.0} µs, the resolution). \"To copies\" is the time from sending the request \
             (for the agent: `AddSourcesToTrafficMirrorSession` over the API socket, answered at \
             once and applied by the reconciler; for the peer: running `tc filter add … mirred`) \
             until the target's counter moves; then the source is removed again (the agent: \
             RemoveSources) and the next repetition waits for the copies to stop.\n",
            machine(),
            self.rate,
            1e6 / self.rate as f64
        );
        let _ = writeln!(
            out,
            "| to copies on the wire | runs | p50 (ms) | p99 (ms) | max (ms) | p99 vs tc |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
        for (name, v) in [
            ("`tc filter add … mirred` (peer)", &self.tc_ms),
            (
                "mirror-agent AddSourcesToTrafficMirrorSession",
                &self.agent_ms,
            ),
        ] {
            let _ = writeln!(
                out,
                "| {name} | {} | {:.1} | {:.1} | {:.1} | {} |",
                v.len(),
                p(v, 0.5),
                p(v, 0.99),
                v.last().copied().unwrap_or(f64::NAN),
                crate::common::ratio(p(v, 0.99), p(&self.tc_ms, 0.99))
            );
        }
        let _ = writeln!(
            out,
            "\nAPI under load: clients call back to back over the Unix socket for the stated \
             time, one HTTP/1.1 request per connection (the tests' client, `tests/src/http.rs`). \
             The peer is the goal (SPEC section 7: API p99 <= 5 ms).\n"
        );
        let _ = writeln!(
            out,
            "| action | clients | requests | requests/s | p50 (ms) | p99 (ms) | p99 vs 5 ms goal | errors |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for a in &self.api {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {} | {} |",
                a.action,
                a.clients,
                a.requests,
                a.requests as f64 / a.seconds,
                p(&a.latencies, 0.5),
                p(&a.latencies, 0.99),
                crate::common::ratio(p(&a.latencies, 0.99), 5.0),
                a.errors
            );
        }
        let add99 = p(&self.agent_ms, 0.99);
        let api99 = self
            .api
            .iter()
            .map(|a| p(&a.latencies, 0.99))
            .fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "\nAgainst SPEC section 7 (AddSources to datapath active <= 50 ms p99; API p99 <= 5 \
             ms){}: AddSources p99 {add99:.1} ms ({}), API p99 at most {api99:.2} ms ({}).\n",
            if quick {
                " (quick run, not comparable)"
            } else {
                ""
            },
            if add99 <= 50.0 {
                "goal met"
            } else {
                "goal missed"
            },
            if api99 <= 5.0 {
                "goal met"
            } else {
                "goal missed"
            },
        );
        out
    }
}
