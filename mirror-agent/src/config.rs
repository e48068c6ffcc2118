//! The agent's config file (TOML). Every command-line flag of `mirror-agent run` has a key
//! here; objects (targets, filters, sessions) declared here are what a DaemonSet ships as the
//! node's static mirror configuration. See docs/config.md for every key.

use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use thiserror::Error;

use crate::api::auth::Secret;
use crate::model::{
    self, DEFAULT_VXLAN_PORT, Filter, FilterRule, InvalidParam, RuleSpec, Session, Target,
};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{what} {id}: {source}")]
    Invalid {
        what: &'static str,
        id: String,
        source: InvalidParam,
    },
    #[error("api_credentials ({path}): {reason}")]
    Credentials { path: String, reason: String },
    #[error("{what} {id}: {reason}")]
    Reference {
        what: &'static str,
        id: String,
        reason: String,
    },
}

/// Built-in defaults: what `cargo xtask run` and a bare `mirror-agent run` use.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/mirror-agent";
pub const DEFAULT_API_SOCKET: &str = "/run/mirror-agent/api.sock";
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/mirror-agent";
pub const DEFAULT_RULE_QUOTA: usize = 10;
pub const DEFAULT_SOURCE_QUOTA: usize = 10;

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line, for a log collector.
    Json,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub state_dir: Option<PathBuf>,
    pub api_socket: Option<PathBuf>,
    pub api_listen: Option<String>,
    pub metrics_listen: Option<String>,
    pub pin_dir: Option<PathBuf>,
    /// Detach and unpin everything on SIGTERM instead of leaving it for the next agent.
    pub detach_on_exit: Option<bool>,
    pub log_format: Option<LogFormat>,
    /// Bearer token the TCP API listener requires (also MIRROR_AGENT_API_TOKEN).
    pub api_token: Option<String>,
    /// Access keys whose signatures (each cloud's algorithm) the TCP API listener accepts.
    pub api_credentials: Option<ApiCredentials>,
    /// The region this node answers as in Volcengine's envelope, and flow logs' `region`.
    pub region: Option<String>,
    /// Flow-log fields AWS takes from its inventory (`${account-id}`, `${vpc-id}`,
    /// `${subnet-id}`, `${instance-id}`, `${az-id}`): "-" in records unless set.
    pub account_id: Option<String>,
    pub vpc_id: Option<String>,
    pub subnet_id: Option<String>,
    pub instance_id: Option<String>,
    pub az_id: Option<String>,
    /// Flow-log files: "jsonl" (default) or "aws" (AWS space-separated text).
    pub flow_log_format: Option<String>,
    /// IPFIX collector (RFC 7011 over UDP) that receives every flow log's records.
    pub ipfix_collector: Option<std::net::SocketAddr>,
    /// How often the kernel flow table is drained, in ms (default 1000).
    pub flow_drain_ms: Option<u64>,
    /// Entries of each of the two kernel flow tables (default 1048576).
    pub flow_table_size: Option<u32>,
    /// Preallocate the two ACCEPT flow tables (default false): their whole size is held from
    /// the start, and a drain of 1 M flows takes about a third of the time.
    pub flow_table_prealloc: Option<bool>,
    /// Holds each reconcile pass back (tests and demos: makes Modifying observable).
    pub reconcile_delay_ms: Option<u64>,
    /// Turn the kernel's BPF run-time statistics on while the agent runs, for the
    /// `mirror_bpf_program_*` metrics. Off by default: the switch is host-wide, and with it
    /// on the kernel reads the clock twice per run of every BPF program on the node.
    pub bpf_stats: Option<bool>,
    /// `auto` (TCX on 6.6+, else clsact), `tcx` or `clsact`.
    pub tc_attach: Option<crate::datapath::TcAttachMode>,
    /// `auto` (fast path where it can run, tunnel device otherwise) or `tunnel`.
    pub copy_path: Option<crate::datapath::CopyPathMode>,
    /// Kubernetes mode: also apply this node's share of the cluster's mirror resources.
    pub kubernetes: Option<bool>,
    /// The node's name in Kubernetes mode (else `NODE_NAME`).
    pub node_name: Option<String>,
    /// Rules per direction of one filter (SPEC: 10 by default, configurable).
    pub rule_quota: Option<usize>,
    /// Sources per session (Huawei's default is 10).
    pub source_quota: Option<usize>,
    /// `eni-…` aliases: alias → interface name.
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    #[serde(default)]
    pub targets: Vec<TargetConfig>,
    #[serde(default)]
    pub filters: Vec<FilterConfig>,
    #[serde(default)]
    pub sessions: Vec<SessionConfig>,
    /// This node as a mirror target: interfaces whose mirror traffic is terminated in XDP.
    #[serde(default)]
    pub receivers: Vec<ReceiverConfig>,
}

/// `[api_credentials]`: access-key pairs inline and/or from a file (a mounted Kubernetes
/// Secret), and the accepted clock skew of a signed request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiCredentials {
    #[serde(default)]
    pub keys: Vec<AccessKey>,
    /// One `ACCESS_KEY_ID:ACCESS_KEY_SECRET` per line (`#` comments, blank lines ignored).
    pub file: Option<PathBuf>,
    /// How far a request's timestamp may be from the agent's clock (default 900 s).
    pub timestamp_window_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessKey {
    pub access_key_id: String,
    pub access_key_secret: Secret,
}

impl ApiCredentials {
    /// The inline keys and the file's, checked: no empty id or secret, no id twice.
    pub fn load(&self) -> Result<Vec<(String, Secret)>, ConfigError> {
        let mut keys: Vec<(String, Secret)> = self
            .keys
            .iter()
            .map(|k| (k.access_key_id.clone(), k.access_key_secret.clone()))
            .collect();
        if let Some(path) = &self.file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (id, secret) =
                    line.split_once(':')
                        .ok_or_else(|| ConfigError::Credentials {
                            path: path.display().to_string(),
                            reason: format!(
                                "line {} is not ACCESS_KEY_ID:ACCESS_KEY_SECRET",
                                n + 1
                            ),
                        })?;
                keys.push((id.trim().to_string(), Secret::new(secret.trim())));
            }
        }
        let mut seen = HashSet::new();
        for (id, secret) in &keys {
            let origin = self
                .file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "api_credentials".into());
            if id.is_empty() || secret.expose().is_empty() {
                return Err(ConfigError::Credentials {
                    path: origin,
                    reason: "an access key id or secret is empty".into(),
                });
            }
            if !seen.insert(id.clone()) {
                return Err(ConfigError::Credentials {
                    path: origin,
                    reason: format!("access key id {id} is given twice"),
                });
            }
        }
        Ok(keys)
    }

    pub fn window(&self) -> std::time::Duration {
        self.timestamp_window_seconds
            .map(std::time::Duration::from_secs)
            .unwrap_or(crate::api::auth::DEFAULT_WINDOW)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    pub id: String,
    /// The receiving interface (name or `eni-…` alias).
    pub interface: String,
    pub destination_port: Option<i64>,
    pub virtual_network_ids: Vec<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub id: String,
    pub destination_ip: IpAddr,
    pub destination_port: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub id: Option<String>,
    pub priority: i64,
    pub action: String,
    #[serde(default = "all")]
    pub protocol: String,
    pub ip_version: Option<String>,
    pub source_cidr_block: Option<String>,
    pub destination_cidr_block: Option<String>,
    pub source_port_range: Option<String>,
    pub destination_port_range: Option<String>,
}

impl RuleConfig {
    /// The rule's id: as declared, or derived from its filter, direction and position.
    pub fn id(&self, filter: &str, direction: &str, index: usize) -> String {
        self.id
            .clone()
            .unwrap_or_else(|| format!("tmr-{filter}-{direction}-{index}"))
    }

    /// The rule's parameters in the model's text form.
    pub fn spec<'a>(&'a self, id: &'a str, direction: &'a str) -> RuleSpec<'a> {
        RuleSpec {
            id,
            direction,
            priority: self.priority,
            action: &self.action,
            protocol: &self.protocol,
            ip_version: self.ip_version.as_deref(),
            source_cidr: self.source_cidr_block.as_deref(),
            destination_cidr: self.destination_cidr_block.as_deref(),
            source_ports: self.source_port_range.as_deref(),
            destination_ports: self.destination_port_range.as_deref(),
        }
    }
}

fn all() -> String {
    "ALL".to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    pub id: String,
    #[serde(default)]
    pub ingress_rules: Vec<RuleConfig>,
    #[serde(default)]
    pub egress_rules: Vec<RuleConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    pub id: String,
    pub priority: i64,
    pub virtual_network_id: i64,
    pub packet_length: Option<i64>,
    #[serde(default)]
    pub enabled: bool,
    pub filter_id: String,
    pub target_id: String,
    #[serde(default)]
    pub sources: Vec<String>,
    /// This agent's budget and sampling (docs/api.md); absent or 0: unlimited.
    pub max_packets_per_second: Option<i64>,
    pub max_bits_per_second: Option<i64>,
    pub sample_one_in: Option<i64>,
    pub sample_mode: Option<String>,
}

impl SessionConfig {
    pub fn budget(&self) -> Result<model::Budget, model::InvalidParam> {
        model::Budget::default().with(model::BudgetChange {
            max_packets_per_second: self.max_packets_per_second,
            max_bits_per_second: self.max_bits_per_second,
            sample_one_in: self.sample_one_in,
            sample_mode: self.sample_mode.as_deref(),
        })
    }
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    pub fn rule_quota(&self) -> usize {
        self.rule_quota.unwrap_or(DEFAULT_RULE_QUOTA)
    }

    /// Validates the declared objects and their references and returns them in model form.
    pub fn objects(&self) -> Result<Objects, ConfigError> {
        let quota = self.rule_quota();
        if quota > mirror_ebpf::MAX_RULES_PER_DIRECTION {
            return Err(ConfigError::Reference {
                what: "rule_quota",
                id: quota.to_string(),
                reason: format!(
                    "the data path holds at most {} rules per direction",
                    mirror_ebpf::MAX_RULES_PER_DIRECTION
                ),
            });
        }
        let mut objects = Objects::default();
        for t in &self.targets {
            objects.targets.push(Target {
                id: t.id.clone(),
                destination_ip: t.destination_ip,
                destination_port: t.destination_port.unwrap_or(DEFAULT_VXLAN_PORT),
            });
        }
        for f in &self.filters {
            let mut rules = Vec::new();
            for (direction, list) in [("ingress", &f.ingress_rules), ("egress", &f.egress_rules)] {
                if list.len() > quota {
                    return Err(ConfigError::Reference {
                        what: "filter",
                        id: f.id.clone(),
                        reason: format!(
                            "{} {direction} rules exceed the quota of {quota}",
                            list.len()
                        ),
                    });
                }
                let mut priorities = HashSet::new();
                for (i, r) in list.iter().enumerate() {
                    let id = r.id(&f.id, direction, i);
                    let rule =
                        FilterRule::from_spec(&r.spec(&id, direction)).map_err(|source| {
                            ConfigError::Invalid {
                                what: "filter rule",
                                id: id.clone(),
                                source,
                            }
                        })?;
                    if !priorities.insert(rule.priority) {
                        return Err(ConfigError::Reference {
                            what: "filter rule",
                            id,
                            reason: format!("{direction} priority {} is used twice", rule.priority),
                        });
                    }
                    rules.push(rule);
                }
            }
            objects.filters.push(Filter {
                id: f.id.clone(),
                rules,
            });
        }
        let mut priorities = HashSet::new();
        for s in &self.sessions {
            let invalid = |source| ConfigError::Invalid {
                what: "session",
                id: s.id.clone(),
                source,
            };
            let priority = model::check_session_priority(s.priority).map_err(invalid)?;
            let vni = model::check_vni(s.virtual_network_id).map_err(invalid)?;
            let packet_length = s
                .packet_length
                .map(model::check_packet_length)
                .transpose()
                .map_err(invalid)?;
            let budget = s.budget().map_err(invalid)?;
            let reference = |reason: String| ConfigError::Reference {
                what: "session",
                id: s.id.clone(),
                reason,
            };
            if !priorities.insert(priority) {
                return Err(reference(format!(
                    "priority {priority} is used by another session"
                )));
            }
            if !objects.filters.iter().any(|f| f.id == s.filter_id) {
                return Err(reference(format!("filter {} is not declared", s.filter_id)));
            }
            if !objects.targets.iter().any(|t| t.id == s.target_id) {
                return Err(reference(format!("target {} is not declared", s.target_id)));
            }
            let source_quota = self.source_quota.unwrap_or(DEFAULT_SOURCE_QUOTA);
            if s.sources.len() > source_quota {
                return Err(reference(format!(
                    "{} sources exceed the quota of {source_quota}",
                    s.sources.len()
                )));
            }
            let mut sources = Vec::new();
            for src in &s.sources {
                let name = self.aliases.get(src).unwrap_or(src).clone();
                if sources.contains(&name) {
                    return Err(reference(format!("source {src} is listed twice")));
                }
                sources.push(name);
            }
            objects.sessions.push(Session {
                id: s.id.clone(),
                priority,
                vni,
                packet_length,
                enabled: s.enabled,
                filter_id: s.filter_id.clone(),
                target_id: s.target_id.clone(),
                sources,
                budget,
            });
        }
        Ok(objects)
    }
}

/// The mirror configuration the data path is reconciled to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Objects {
    pub targets: Vec<Target>,
    pub filters: Vec<Filter>,
    pub sessions: Vec<Session>,
    /// Interfaces covered by an active flow log.
    pub flow_interfaces: Vec<String>,
    /// Receivers (this node as a mirror target), interfaces resolved.
    pub receivers: Vec<crate::datapath::receive::Receiver>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_config_parses_and_validates() {
        let cfg: FileConfig = toml::from_str(
            r#"
            state_dir = "/tmp/x"
            [aliases]
            "eni-1" = "eth0"
            [[targets]]
            id = "tmt-1"
            destination_ip = "198.18.0.2"
            [[filters]]
            id = "tmf-1"
            [[filters.ingress_rules]]
            priority = 1
            action = "accept"
            protocol = "UDP"
            destination_port_range = "5000/5010"
            [[sessions]]
            id = "tms-1"
            priority = 1
            virtual_network_id = 7
            packet_length = 128
            enabled = true
            filter_id = "tmf-1"
            target_id = "tmt-1"
            sources = ["eni-1"]
            "#,
        )
        .expect("config parses");
        let objects = cfg.objects().expect("config validates");
        assert_eq!(objects.sessions[0].sources, vec!["eth0".to_string()]);
        assert_eq!(objects.targets[0].destination_port, 4789);
    }

    #[test]
    fn bad_references_are_named() {
        let cfg: FileConfig = toml::from_str(
            r#"
            [[sessions]]
            id = "tms-1"
            priority = 1
            virtual_network_id = 7
            filter_id = "tmf-missing"
            target_id = "tmt-1"
            "#,
        )
        .expect("config parses");
        let err = cfg
            .objects()
            .expect_err("missing filter is an error")
            .to_string();
        assert!(err.contains("tmf-missing"), "{err}");
    }

    #[test]
    fn api_credentials_inline_and_from_a_file() {
        let dir = std::env::temp_dir().join(format!("creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("keys");
        std::fs::write(&file, "# comment\n\nfile-id : file-secret\n").expect("write");
        let text = format!(
            "[api_credentials]\nkeys = [{{ access_key_id = \"a\", access_key_secret = \"s\" }}]\nfile = \"{}\"\ntimestamp_window_seconds = 60\n",
            file.display()
        );
        let cfg: FileConfig = toml::from_str(&text).expect("parse");
        let creds = cfg.api_credentials.expect("credentials");
        assert!(!format!("{creds:?}").contains("\"s\""), "{creds:?}");
        let keys = creds.load().expect("load");
        let ids: Vec<&str> = keys.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["a", "file-id"]);
        assert_eq!(keys[1].1.expose(), "file-secret");
        assert_eq!(creds.window(), std::time::Duration::from_secs(60));

        std::fs::write(&file, "a:again\n").expect("write");
        let e = creds.load().expect_err("duplicate id");
        assert!(e.to_string().contains("given twice"), "{e}");
        std::fs::write(&file, "no-separator\n").expect("write");
        let e = creds.load().expect_err("malformed line");
        assert!(e.to_string().contains("line 1"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
