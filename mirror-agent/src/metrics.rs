//! Prometheus metrics (SPEC section 6), with bounded labels: session, source, direction,
//! reason, rule, action, code, flow_log, program. No per-flow labels.
//!
//! Kernel counters are absolute values read from per-CPU maps; they are exported as counters
//! by adding the difference since the last read (`set_total`), so a series only goes up and
//! disappears when its object does.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use prometheus::{
    CounterVec, Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// What the probes report: reconciled yet, and the data path's faults.
#[derive(Debug, Default)]
pub struct Health {
    pub reconciled: std::sync::atomic::AtomicBool,
    faults: Mutex<Vec<Fault>>,
}

#[derive(Debug, Clone)]
pub struct Fault {
    /// Mirroring cannot work (a program the kernel rejected), not merely degraded.
    pub fatal: bool,
    pub message: String,
}

impl Health {
    pub fn add_fault(&self, fatal: bool, message: impl Into<String>) {
        if let Ok(mut f) = self.faults.lock() {
            f.push(Fault {
                fatal,
                message: message.into(),
            });
        }
    }

    pub fn faults(&self) -> Vec<Fault> {
        self.faults.lock().map(|f| f.clone()).unwrap_or_default()
    }

    pub fn faults_text(&self) -> String {
        self.faults()
            .iter()
            .map(|f| {
                let kind = if f.fatal { "fault" } else { "degraded" };
                format!("{kind}: {}\n", f.message)
            })
            .collect()
    }

    /// Ready once the store is reconciled into the kernel and the programs it needs loaded.
    pub fn readiness(&self) -> (bool, String) {
        use std::sync::atomic::Ordering;
        let faults = self.faults_text();
        if !self.reconciled.load(Ordering::SeqCst) {
            return (
                false,
                format!("not ready: programs or store not reconciled yet\n{faults}"),
            );
        }
        if self.faults().iter().any(|f| f.fatal) {
            return (false, format!("not ready\n{faults}"));
        }
        (true, format!("ready\n{faults}"))
    }
}

pub struct Metrics {
    registry: Registry,
    pub session_packets: IntCounterVec,
    pub session_bytes: IntCounterVec,
    pub session_copies: IntCounterVec,
    pub session_truncated: IntCounterVec,
    pub session_segmented: IntCounterVec,
    pub session_errors: IntCounterVec,
    pub session_skipped: IntCounterVec,
    pub rule_hits: IntCounterVec,
    pub source_packets: IntCounterVec,
    pub source_bytes: IntCounterVec,
    pub source_mirrored: IntCounterVec,
    pub source_not_ip: IntCounterVec,
    pub source_malformed: IntCounterVec,
    pub source_attached: IntGaugeVec,
    pub session_copy_path: IntGaugeVec,
    pub flowlog_active_flows: IntGauge,
    pub flowlog_records: IntCounterVec,
    pub flowlog_skipped_packets: IntCounterVec,
    pub flowlog_evicted_flows: IntCounter,
    pub flowlog_sink_errors: IntCounterVec,
    pub flowlog_drain: Histogram,
    pub flowlog_interval_records: IntGaugeVec,
    pub flowlog_interval_end: IntGaugeVec,
    pub flowlog_interval_delay: Histogram,
    pub api_requests: IntCounterVec,
    pub api_duration: HistogramVec,
    pub reconcile_duration: Histogram,
    pub reconcile_failures: IntCounter,
    pub bpf_run_time: CounterVec,
    pub bpf_runs: IntCounterVec,
    pub build_info: IntGaugeVec,
    pub receive_packets: IntCounterVec,
    pub receive_passed: IntCounterVec,
    pub receive_frames: IntCounterVec,
    pub receive_bytes: IntCounterVec,
    pub receive_errors: IntCounterVec,
    pub receiver_attached: IntGaugeVec,
    pub datapath_pinned: IntGauge,
    pub program_loaded: IntGaugeVec,
    pub kernel_feature: IntGaugeVec,
    last: Mutex<HashMap<String, u64>>,
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("registering {name}: {e}"));
    g
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("registering {name}: {e}"));
    c
}

impl Metrics {
    /// All metric definitions are static; a failure here is a programming error caught by
    /// the unit test below, hence the panics.
    pub fn new() -> Metrics {
        let r = Registry::new();
        let dir = &["session", "direction"][..];
        let src = &["source", "direction"][..];
        Metrics {
            session_packets: counter(
                &r,
                "mirror_session_mirrored_packets_total",
                "Wire packets mirrored by a session (a GSO super-packet counts its segments).",
                dir,
            ),
            session_bytes: counter(
                &r,
                "mirror_session_mirrored_bytes_total",
                "Bytes of the original packets mirrored by a session.",
                dir,
            ),
            session_copies: counter(
                &r,
                "mirror_session_copies_total",
                "Copies sent toward the target, one per wire packet.",
                dir,
            ),
            session_truncated: counter(
                &r,
                "mirror_session_truncated_packets_total",
                "Copies cut to the session's packet length.",
                dir,
            ),
            session_segmented: counter(
                &r,
                "mirror_session_segmented_copies_total",
                "Copies the kernel cut from GSO super-packets or checksummed on the segmentation device (one per wire packet).",
                dir,
            ),
            session_errors: counter(
                &r,
                "mirror_session_errors_total",
                "Copies not sent, by reason.",
                &["session", "direction", "reason"],
            ),
            session_skipped: counter(
                &r,
                "mirror_session_skipped_packets_total",
                "Matching wire packets not mirrored, by reason: over the session's packet or bit budget, sampled out, or copies the kernel could not send (send_errors, the sum of mirror_session_errors_total).",
                &["session", "direction", "reason"],
            ),
            rule_hits: counter(
                &r,
                "mirror_rule_hits_total",
                "Packets a filter rule matched.",
                &["filter", "rule"],
            ),
            source_packets: counter(
                &r,
                "mirror_source_packets_total",
                "Wire packets seen on a source interface.",
                src,
            ),
            source_bytes: counter(
                &r,
                "mirror_source_bytes_total",
                "Bytes seen on a source interface.",
                src,
            ),
            source_mirrored: counter(
                &r,
                "mirror_source_mirrored_packets_total",
                "Wire packets of a source mirrored by one of its sessions.",
                src,
            ),
            source_not_ip: counter(
                &r,
                "mirror_source_non_ip_packets_total",
                "Frames that are not IPv4/IPv6 (never mirrored).",
                src,
            ),
            source_malformed: counter(
                &r,
                "mirror_source_malformed_packets_total",
                "IP packets with short or inconsistent headers (passed, not matched).",
                src,
            ),
            source_attached: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "mirror_source_attached",
                        "1 while the programs are attached to the interface.",
                    ),
                    &["source"],
                )
                .unwrap_or_else(|e| panic!("{e}"));
                r.register(Box::new(g.clone()))
                    .unwrap_or_else(|e| panic!("{e}"));
                g
            },
            session_copy_path: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "mirror_session_copy_path",
                        "1 for the way a session's copies take: fast (outer headers built in eBPF on the uplink) or tunnel (the kernel's VXLAN device: IPv6 targets, next hop not resolved).",
                    ),
                    &["session", "mode"],
                )
                .unwrap_or_else(|e| panic!("{e}"));
                r.register(Box::new(g.clone()))
                    .unwrap_or_else(|e| panic!("{e}"));
                g
            },
            flowlog_active_flows: {
                let g = IntGauge::new(
                    "mirror_flowlog_active_flows",
                    "Flows read from the kernel table at the last drain.",
                )
                .unwrap_or_else(|e| panic!("{e}"));
                r.register(Box::new(g.clone()))
                    .unwrap_or_else(|e| panic!("{e}"));
                g
            },
            flowlog_records: counter(
                &r,
                "mirror_flowlog_records_written_total",
                "Flow-log records written, by flow log and log status.",
                &["flow_log", "log_status"],
            ),
            flowlog_skipped_packets: counter(
                &r,
                "mirror_flowlog_skipdata_packets_total",
                "Packets the full flow table could not account (SKIPDATA).",
                &["flow_log"],
            ),
            flowlog_evicted_flows: {
                let c = IntCounter::new(
                    "mirror_flowlog_flows_evicted_total",
                    "Flows removed from the kernel table by drains.",
                )
                .unwrap_or_else(|e| panic!("{e}"));
                r.register(Box::new(c.clone()))
                    .unwrap_or_else(|e| panic!("{e}"));
                c
            },
            flowlog_sink_errors: counter(
                &r,
                "mirror_flowlog_sink_errors_total",
                "Failed writes to a flow-log sink.",
                &["flow_log", "sink"],
            ),
            flowlog_drain: {
                let h = Histogram::with_opts(HistogramOpts::new(
                    "mirror_flowlog_drain_duration_seconds",
                    "Time to flip, drain and empty the kernel flow table.",
                ))
                .unwrap_or_else(|e| panic!("{e}"));
                r.register(Box::new(h.clone()))
                    .unwrap_or_else(|e| panic!("{e}"));
                h
            },
            flowlog_interval_records: gauge(
                &r,
                "mirror_flowlog_interval_records",
                "Records of the flow log's last closed interval (OK, NODATA and SKIPDATA).",
                &["flow_log"],
            ),
            flowlog_interval_end: gauge(
                &r,
                "mirror_flowlog_interval_end_timestamp_seconds",
                "End (Unix seconds) of the flow log's last closed interval.",
                &["flow_log"],
            ),
            flowlog_interval_delay: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "mirror_flowlog_interval_delay_seconds",
                        "From an interval's end until its records were written to the file sink.",
                    )
                    .buckets(vec![0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0]),
                )
                .unwrap_or_else(|e| panic!("{e}"));
                r.register(Box::new(h.clone()))
                    .unwrap_or_else(|e| panic!("{e}"));
                h
            },
            api_requests: counter(
                &r,
                "mirror_api_requests_total",
                "API requests by action and answer code.",
                &["action", "code"],
            ),
            api_duration: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "mirror_api_request_duration_seconds",
                        "API request handling time.",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
                    ]),
                    &["action"],
                )
                .unwrap_or_else(|e| panic!("{e}"));
                r.register(Box::new(h.clone()))
                    .unwrap_or_else(|e| panic!("{e}"));
                h
            },
            reconcile_duration: {
                let h = Histogram::with_opts(HistogramOpts::new(
                    "mirror_reconcile_duration_seconds",
                    "Time of a reconcile pass (store to data path).",
                ))
                .unwrap_or_else(|e| panic!("{e}"));
                r.register(Box::new(h.clone()))
                    .unwrap_or_else(|e| panic!("{e}"));
                h
            },
            reconcile_failures: {
                let c = IntCounter::new(
                    "mirror_reconcile_failures_total",
                    "Reconcile passes that failed.",
                )
                .unwrap_or_else(|e| panic!("{e}"));
                r.register(Box::new(c.clone()))
                    .unwrap_or_else(|e| panic!("{e}"));
                c
            },
            bpf_run_time: {
                let c = CounterVec::new(
                    Opts::new(
                        "mirror_bpf_program_run_time_seconds_total",
                        "Time the kernel spent in a program (BPF stats).",
                    ),
                    &["program"],
                )
                .unwrap_or_else(|e| panic!("{e}"));
                r.register(Box::new(c.clone()))
                    .unwrap_or_else(|e| panic!("{e}"));
                c
            },
            bpf_runs: counter(
                &r,
                "mirror_bpf_program_runs_total",
                "Runs of a program (BPF stats).",
                &["program"],
            ),
            build_info: {
                let g = IntGaugeVec::new(
                    Opts::new("mirror_build_info", "Build information; always 1."),
                    &["version"],
                )
                .unwrap_or_else(|e| panic!("{e}"));
                r.register(Box::new(g.clone()))
                    .unwrap_or_else(|e| panic!("{e}"));
                g.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
                g
            },
            receive_packets: counter(
                &r,
                "mirror_receive_packets_total",
                "Frames the receiving XDP program ran on, by receiver.",
                &["receiver"],
            ),
            receive_passed: counter(
                &r,
                "mirror_receive_passed_packets_total",
                "Frames a receiver passed to the stack untouched before a served VNI was known: not_mirror (not UDP to its port), malformed (no VXLAN header or I flag clear), unknown_vni.",
                &["receiver", "reason"],
            ),
            receive_frames: counter(
                &r,
                "mirror_receive_frames_total",
                "Inner frames decapsulated and redirected to the VNI's capture interface.",
                &["receiver", "vni"],
            ),
            receive_bytes: counter(
                &r,
                "mirror_receive_bytes_total",
                "Bytes of the inner frames redirected to the VNI's capture interface.",
                &["receiver", "vni"],
            ),
            receive_errors: counter(
                &r,
                "mirror_receive_errors_total",
                "Mirror traffic of a served VNI not delivered: malformed and no_capture_interface (passed untouched), redirect (outer headers could not be removed).",
                &["receiver", "vni", "reason"],
            ),
            receiver_attached: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "mirror_receiver_attached",
                        "1 while the receiving program is attached, with its mode: native (XDP in the driver) or tc (TC ingress, where native XDP cannot attach).",
                    ),
                    &["receiver", "mode"],
                )
                .unwrap_or_else(|e| panic!("{e}"));
                r.register(Box::new(g.clone()))
                    .unwrap_or_else(|e| panic!("{e}"));
                g
            },
            datapath_pinned: {
                let g = IntGauge::new(
                    "mirror_datapath_pinned",
                    "1 when programs, links and maps are pinned in bpffs and outlive the agent; 0 when they go with it (bpffs missing).",
                )
                .unwrap_or_else(|e| panic!("{e}"));
                r.register(Box::new(g.clone()))
                    .unwrap_or_else(|e| panic!("{e}"));
                g
            },
            program_loaded: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "mirror_bpf_program_loaded",
                        "1 when the kernel accepted the program, 0 when it rejected it.",
                    ),
                    &["program"],
                )
                .unwrap_or_else(|e| panic!("{e}"));
                r.register(Box::new(g.clone()))
                    .unwrap_or_else(|e| panic!("{e}"));
                g
            },
            kernel_feature: gauge(
                &r,
                "mirror_kernel_feature",
                "1 when the running kernel has the feature the data path uses, 0 when the agent works without it (see /healthz).",
                &["feature"],
            ),
            registry: r,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Brings a counter series up to an absolute total read from the kernel.
    pub fn set_total(&self, c: &IntCounterVec, name: &str, labels: &[&str], total: u64) {
        let key = format!("{name}\u{0}{}", labels.join("\u{0}"));
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        let prev = last.insert(key, total).unwrap_or(0);
        // A smaller total means the object's counters restarted (slot reused): start over.
        let delta = if total >= prev { total - prev } else { total };
        if let Ok(series) = c.get_metric_with_label_values(labels) {
            series.inc_by(delta);
        }
    }

    /// Like `set_total` for a time kept in nanoseconds by the kernel, exported in seconds.
    pub fn set_total_seconds(&self, c: &CounterVec, name: &str, labels: &[&str], total_ns: u64) {
        let key = format!("{name}\u{0}{}", labels.join("\u{0}"));
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        let prev = last.insert(key, total_ns).unwrap_or(0);
        let delta = if total_ns >= prev {
            total_ns - prev
        } else {
            total_ns
        };
        if let Ok(series) = c.get_metric_with_label_values(labels) {
            series.inc_by(delta as f64 / 1e9);
        }
    }

    /// Drops the series of objects that are gone (sessions deleted, sources detached).
    pub fn forget(&self, c: &IntCounterVec, name: &str, labels: &[&str]) {
        let _ = c.remove_label_values(labels);
        if let Ok(mut last) = self.last.lock() {
            last.remove(&format!("{name}\u{0}{}", labels.join("\u{0}")));
        }
    }

    /// Receiver counters → series; `exported` holds the (receiver, mode, VNIs) exported last
    /// time, whose series are dropped when they are gone.
    pub fn publish_receivers(
        &self,
        status: &std::collections::BTreeMap<String, crate::datapath::receive::ReceiverStatus>,
        exported: &mut Vec<(String, String, Vec<u32>)>,
    ) {
        const PASSED: [&str; 3] = ["not_mirror", "malformed", "unknown_vni"];
        const ERRORS: [&str; 3] = ["malformed", "no_capture_interface", "redirect"];
        let mut now: Vec<(String, String, Vec<u32>)> = Vec::new();
        for (id, st) in status {
            let i = &st.interface;
            self.set_total(&self.receive_packets, "rp", &[id], i.packets);
            for (reason, n) in PASSED
                .iter()
                .zip([i.not_mirror, i.malformed, i.unknown_vni])
            {
                self.set_total(&self.receive_passed, "rq", &[id, reason], n);
            }
            for (vni, (_, s)) in &st.vnis {
                let vni = vni.to_string();
                let l = [id.as_str(), vni.as_str()];
                self.set_total(&self.receive_frames, "rf", &l, s.frames);
                self.set_total(&self.receive_bytes, "rb", &l, s.bytes);
                for (reason, n) in ERRORS
                    .iter()
                    .zip([s.malformed, s.no_capture, s.redirect_errors])
                {
                    self.set_total(&self.receive_errors, "re", &[id, &vni, reason], n);
                }
            }
            self.receiver_attached
                .with_label_values(&[id.as_str(), st.mode.as_str()])
                .set(1);
            now.push((
                id.clone(),
                st.mode.clone(),
                st.vnis.keys().copied().collect(),
            ));
        }
        for (id, mode, vnis) in exported.iter() {
            let current = now.iter().find(|(i, _, _)| i == id);
            if current.is_none_or(|(_, m, _)| m != mode) {
                let _ = self.receiver_attached.remove_label_values(&[id, mode]);
            }
            if current.is_none() {
                self.forget(&self.receive_packets, "rp", &[id]);
                for reason in PASSED {
                    self.forget(&self.receive_passed, "rq", &[id, reason]);
                }
            }
            for vni in vnis {
                if current.is_some_and(|(_, _, v)| v.contains(vni)) {
                    continue;
                }
                let vni = vni.to_string();
                self.forget(&self.receive_frames, "rf", &[id, &vni]);
                self.forget(&self.receive_bytes, "rb", &[id, &vni]);
                for reason in ERRORS {
                    self.forget(&self.receive_errors, "re", &[id, &vni, reason]);
                }
            }
        }
        *exported = now;
    }

    pub fn observe_api(&self, action: &str, code: &str, took: Duration) {
        // Unknown actions would otherwise give every typo its own series.
        let action = if crate::api::actions::is_known(action) {
            action
        } else {
            "unknown"
        };
        self.api_requests.with_label_values(&[action, code]).inc();
        self.api_duration
            .with_label_values(&[action])
            .observe(took.as_secs_f64());
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            return format!("# encoding metrics failed: {e}\n");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_follow_kernel_totals() {
        let m = Metrics::new();
        m.set_total(&m.session_packets, "p", &["tms-1", "ingress"], 10);
        m.set_total(&m.session_packets, "p", &["tms-1", "ingress"], 15);
        let text = m.render();
        assert!(
            text.contains(
                "mirror_session_mirrored_packets_total{direction=\"ingress\",session=\"tms-1\"} 15"
            ),
            "{text}"
        );
        assert!(text.contains("mirror_build_info{version="), "{text}");
    }
}
