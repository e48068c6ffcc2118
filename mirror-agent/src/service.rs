//! The API's view of the agent: the store, the write lock that makes each change atomic, the
//! quotas, the interface names it can resolve, and the reconciler it wakes.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};

use tokio::sync::{Mutex, Notify};

use crate::{
    api::ApiError,
    links::{self, Link},
    store::{Snapshot, Store},
};

pub struct Service {
    pub store: Store,
    /// Held by every mutating request from its checks to its commit.
    pub write_lock: Mutex<()>,
    pub rule_quota: usize,
    pub source_quota: usize,
    /// `eni-…` alias → interface name or MAC address.
    pub aliases: BTreeMap<String, String>,
    /// The region this node answers as (Volcengine's ResponseMetadata.Region).
    pub region: String,
    /// The node's interfaces as last seen on rtnetlink.
    pub links: Arc<RwLock<Vec<Link>>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Sink errors of flow logs (written by the flow-log runner), by flow log id.
    pub flow_log_status: Arc<RwLock<BTreeMap<String, Vec<String>>>>,
    /// XDP mode and counters of each attached receiver (written by the reconciler).
    pub receiver_status: Arc<RwLock<BTreeMap<String, crate::datapath::receive::ReceiverStatus>>>,
    /// The way each applied session's copies take, as of the last reconcile pass.
    pub copy_paths: Arc<RwLock<BTreeMap<String, crate::datapath::CopyPath>>>,
    /// Matching packets each session did not copy, per direction and reason, as of the last
    /// counter read (written by the reconciler, shown by List).
    pub skipped: Arc<RwLock<BTreeMap<String, crate::datapath::SkippedPackets>>>,
    /// Why flow logs get no REJECT records on this node (no drop accounting), if so: shown on
    /// every flow log that asks for them.
    pub no_reject_records: Option<String>,
    reconcile: Arc<Notify>,
}

impl Service {
    pub fn new(
        store: Store,
        rule_quota: usize,
        source_quota: usize,
        aliases: BTreeMap<String, String>,
        region: String,
        links: Arc<RwLock<Vec<Link>>>,
        reconcile: Arc<Notify>,
    ) -> Service {
        Service {
            store,
            write_lock: Mutex::new(()),
            rule_quota,
            source_quota,
            aliases,
            region,
            links,
            flow_log_status: Arc::new(RwLock::new(BTreeMap::new())),
            receiver_status: Arc::new(RwLock::new(BTreeMap::new())),
            copy_paths: Arc::new(RwLock::new(BTreeMap::new())),
            skipped: Arc::new(RwLock::new(BTreeMap::new())),
            no_reject_records: None,
            metrics: Arc::new(crate::metrics::Metrics::new()),
            reconcile,
        }
    }

    pub fn snapshot(&self) -> Result<Snapshot, ApiError> {
        self.store
            .snapshot()
            .map_err(|e| ApiError::internal(e.to_string()))
    }

    /// Wakes the reconciler; it coalesces bursts of changes into one pass.
    pub fn trigger(&self) {
        self.reconcile.notify_one();
    }

    pub fn is_glob(&self, s: &str) -> bool {
        links::is_glob(s)
    }

    /// The interface a source or target names (interface name, or alias of a name or MAC), if
    /// it exists now.
    pub fn resolve_interface(&self, name: &str) -> Option<String> {
        let links = self.links.read().map(|l| l.clone()).unwrap_or_default();
        links::resolve(name, &self.aliases, &links)
    }
}
