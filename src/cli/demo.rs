//! `ferry demo`: build a sample tree, copy it, check the copy, print the speed, clean up.

use super::engine::EngineArgs;
use ferry::Exit;
use std::path::PathBuf;
use std::process::ExitCode;

pub fn demo(e: EngineArgs) -> ExitCode {
    let fail = |m: String, code: Exit| {
        eprintln!("ferry demo: {m}");
        code.into()
    };
    let spec = match e.spec(vec![PathBuf::from(".")], PathBuf::from(".")) {
        Ok(s) => s,
        Err(m) => return fail(m, Exit::Usage),
    };
    if let Err(m) = spec.validate() {
        return fail(m, Exit::Usage);
    }
    match ferry::demo::run(&spec).and_then(|ok| {
        let cluster = ferry::demo::run_cluster(&spec)?;
        Ok(ok && cluster)
    }) {
        Ok(ok) => Exit::ok_or_failed(ok).into(),
        Err(m) => fail(m, Exit::Failed),
    }
}
