//! Kubernetes mode: the mirror objects as custom resources, and what one node makes of them.
//! See docs/kubernetes.md.

pub mod crd;
pub mod plan;
pub mod selector;
