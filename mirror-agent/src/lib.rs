//! The traffic mirror agent: configuration, the mirror object model, and the eBPF data path.
//! The binary (`mirror-agent`) is a thin command line over this library; the kernel tests in
//! `tests/` drive the same library code.

pub mod api;
pub mod btf;
pub mod cli;
pub mod config;
pub mod datapath;
pub mod declared;
pub mod flowlog;
pub mod kernel;
pub mod kubernetes;
pub mod links;
pub mod metrics;
pub mod model;
pub mod reconciler;
pub mod records;
pub mod service;
pub mod store;
