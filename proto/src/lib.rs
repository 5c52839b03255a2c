//! RunGate's gRPC contracts, one versioned package per service.

pub mod types {
    pub mod v1 {
        tonic::include_proto!("rungate.types.v1");
    }
}

pub mod inference {
    pub mod v1 {
        tonic::include_proto!("rungate.inference.v1");
    }
}

pub mod billing {
    pub mod v1 {
        tonic::include_proto!("rungate.billing.v1");
    }
}

pub mod ledger {
    pub mod v1 {
        tonic::include_proto!("rungate.ledger.v1");
    }
}

mod amount;

/// Encoded `FileDescriptorSet` of every RunGate contract, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/rungate_descriptor.bin"));
