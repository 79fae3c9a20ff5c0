//! The S3-compatible endpoint: the S3 REST API (path-style) over ferry's object layer, with
//! AWS Signature V4 authentication (s3s) and keys from a key file. Runs on its own threads
//! (a small tokio runtime: the endpoint's control threads); file I/O runs on blocking threads,
//! never on the async ones.

pub mod body;
pub mod bucket;
pub mod cli;
pub mod client;
pub mod digest;
pub mod errors;
pub mod keys;
pub mod limits;
pub mod list;
pub mod listing;
pub mod multipart;
pub mod object;
pub mod remote;
pub mod route;
pub mod server;
pub mod service;
