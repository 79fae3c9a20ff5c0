//! `ferry disk init`: write each disk's identity file, once.

use clap::{Args, Subcommand};
use ferry::Exit;
use ferry::cluster::Topology;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct DiskArgs {
    #[command(subcommand)]
    op: DiskOp,
}

#[derive(Subcommand)]
pub enum DiskOp {
    /// Write the identity file (.ferry-disk: cluster, set and disk id) of every disk of the
    /// topology that has none. Every disk root must exist; nothing is written otherwise, and
    /// a disk holding another identity is refused.
    Init {
        /// The topology (JSON).
        #[arg(long)]
        topology: PathBuf,
    },
}

pub fn disk(a: DiskArgs) -> ExitCode {
    let DiskOp::Init { topology } = a.op;
    let t = match Topology::load(&topology) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ferry: {e}");
            return Exit::Usage.into();
        }
    };
    match ferry::cluster::identity::init(&t, &topology) {
        Ok(done) => {
            for (d, wrote) in done {
                let what = if wrote {
                    "initialized"
                } else {
                    "already initialized"
                };
                ferry::outln!("disk {d}: {what}");
            }
            Exit::Ok.into()
        }
        Err(e) => {
            eprintln!("ferry: {e}");
            Exit::Usage.into()
        }
    }
}
