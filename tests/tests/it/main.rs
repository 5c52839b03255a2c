//! Integration tests against the shared cluster: real Postgres, the four
//! services on their own listeners, real gRPC between them.

mod batch;
mod billing;
mod book;
mod chat;
mod disconnect;
mod edge_limits;
mod escrow;
mod health;
mod ledger;
mod load;
mod local_batch;
mod local_chat;
mod local_engine;
mod local_threads;
mod payments;
mod queue;
mod receipts;
mod settle_batch;
mod shutdown;
mod stream_ends;
mod support;
mod tracing;
