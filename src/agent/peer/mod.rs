//! The internal object transport between agents: each agent serves its own disks' objects
//! on `--peer-listen ADDR` (published as `peer` in its member record in etcd) over mutual
//! TLS 1.3 with the cluster's CA (`--tls-dir`, made by `ferry certs init/issue`): a peer is
//! accepted only with a certificate that CA signed for the node name it claims, and a client
//! checks that the server's certificate names the node it dialled.
//!
//! - `msg`: the framed messages (on `net::frame`: its limits, its decoder rules) and their
//!   version (`msg::VERSION`, agreed in the Hello/Welcome handshake).
//! - `wire`: one TLS connection carrying them, with timeouts.
//! - `server`: the requests served (Get, Put, Migrate, Delete, List, Bucket, Buckets) with
//!   limits on connections, requests in flight, frame size and idle time.
//! - `client`: `PeerClient`, the API other parts of the agent call (the S3 endpoint through
//!   `s3::remote::Remote`, the rebalance through `PeerClient::migrate`).
//! - `migrate`: how a receiving node stores a migrated copy.

pub mod client;
pub mod migrate;
pub mod msg;
pub mod server;
mod slots;
pub mod wire;

pub use client::PeerClient;
pub use migrate::Migrated;
