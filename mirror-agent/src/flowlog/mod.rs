//! Flow logs: the record type (AWS VPC Flow Logs v5 fields) and its sinks.

pub mod aggregate;
pub mod files;
pub mod ipfix;
pub mod record;
pub mod runner;
