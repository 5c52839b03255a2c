//! Plumbing every RunGate service shares: telemetry, trace propagation across
//! gRPC and HTTP hops, the gRPC server frame (health, reflection, graceful
//! drain), shutdown signals and the Prometheus metrics recorder.

pub mod args;
pub mod client;
pub mod clock;
mod cutoff;
pub mod grpc;
pub mod metrics;
pub mod propagation;
pub mod shutdown;
pub mod telemetry;

pub use args::CommonArgs;
