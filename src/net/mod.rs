//! ferry over the network: a framed, versioned protocol over mutual TLS 1.3.
//!
//! Layers: `frame` (frame header, bounded decoder) → `msg` (the messages of one protocol
//! version) → `conn` (a TLS connection carrying messages) → `session` (connect / accept with
//! the version handshake). `certs` makes the CA and node certificates, `tls` turns a
//! `--tls-dir` into rustls configurations.

pub mod beneath;
pub mod certs;
pub mod cli;
pub mod client;
pub mod conn;
pub mod fatal;
pub mod frame;
pub mod joins;
pub mod live;
pub mod msg;
pub mod push;
pub mod quick;
pub mod recv;
pub mod remove;
pub mod ring;
pub mod send;
pub mod serve;
pub mod session;
pub mod steer;
pub mod tls;
pub mod url;
pub mod verify;
pub mod walk;
pub mod xattr;
