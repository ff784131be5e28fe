//! The filesystem worker: a process of strata's own binary (`strata fs-worker`) that opens
//! one disk through the store, parses and edits the filesystems on it with the adapters
//! (C libraries among them), and answers the parent over a pipe. A crash, a hang or a
//! memory blow-up there ends that one job; the process that serves volumes never runs
//! filesystem code. The disk is flushed only when the whole job has succeeded.
//!
//! - `protocol.rs` the messages and their framing (pure)
//! - `child.rs`    the worker process
//! - `client.rs`   starting a worker within limits, and talking to it

pub mod child;
pub mod client;
pub mod protocol;

pub use client::{Worker, WorkerOptions};
pub use protocol::{Call, Reply, Request, Source};
