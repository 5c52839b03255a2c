//! Integration tests against the shared cluster: real Postgres, the four
//! services on their own listeners, real gRPC between them.

mod billing;
mod chat;
mod health;
mod ledger;
mod shutdown;
mod support;
mod tracing;
