//! Flow logs: the record type, its formats (AWS `LogFormat`) and its sinks.

pub mod aggregate;
pub mod files;
pub mod format;
pub mod ipfix;
pub mod record;
pub mod runner;
