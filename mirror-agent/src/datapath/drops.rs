//! Drop accounting: the `skb:kfree_skb` tracepoint, attached only while a flow log wants it.

use tracing::info;

use super::{ApplyReport, Datapath, DatapathError, PROG_FLOW_DROP};

impl Datapath {
    /// Makes drop accounting available: dropped packets of flow-logged interfaces become
    /// REJECT flows, counted from the `skb:kfree_skb` BTF tracepoint with the `sk_buff` layout
    /// the programs were loaded with (`Datapath::open`). The program is loaded now (a
    /// rejection shows at start) but attached only while a flow log exists: it runs for every
    /// packet the host drops.
    pub fn enable_drop_accounting(&mut self) -> Result<(), DatapathError> {
        self.programs.load_drop()?;
        self.drop_available = true;
        // What an earlier agent left counting goes on counting (no gap across a restart);
        // the first apply detaches it if no flow log wants it any more.
        if self.drop_link.is_none() && self.programs.drop_link_pinned() {
            self.drop_link = Some(self.programs.attach_drop()?);
        }
        Ok(())
    }

    /// Attaches or detaches the drop tracepoint as flow logs need it.
    pub(super) fn sync_drop_accounting(&mut self, wanted: bool, report: &mut ApplyReport) {
        match (wanted && self.drop_available, self.drop_link.is_some()) {
            (true, false) => match self.programs.attach_drop() {
                Ok(link) => {
                    info!("drop accounting attached to skb:kfree_skb");
                    self.drop_link = Some(link);
                }
                Err(e) => report.error(PROG_FLOW_DROP, format!("drop accounting: {e}")),
            },
            (false, true) => {
                if let Some(link) = self.drop_link.take() {
                    link.detach();
                    info!("drop accounting detached: no flow log needs it");
                }
            }
            _ => {}
        }
    }

    /// Whether the drop tracepoint is attached now.
    pub fn drop_accounting_attached(&self) -> bool {
        self.drop_link.is_some()
    }
}
