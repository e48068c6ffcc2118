//! Kubernetes mode: the mirror objects as custom resources, what one node makes of them, and
//! the node controller that applies it. See docs/kubernetes.md.

pub mod apply;
#[cfg(test)]
mod client_tests;
pub mod controller;
pub mod crd;
pub mod hostnet;
pub mod node;
pub mod plan;
pub mod selector;
pub mod status;
