//! Test harness: a throwaway Postgres, a fake OpenAI-compatible upstream, and
//! the four RunGate services started on pre-bound `127.0.0.1:0` listeners,
//! talking real gRPC to each other. One cluster is shared by every test in a
//! test binary; it lives on its own runtime so it outlives each test's.

pub mod batch;
pub mod chain;
pub mod chain_proxy;
pub mod cluster;
pub mod fake_upstream;
pub mod fixtures;
pub mod paid;
pub mod postgres;
pub mod records;
pub mod x402;

pub use cluster::{TestCluster, cluster};
