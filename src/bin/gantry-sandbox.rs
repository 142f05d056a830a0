//! The sandbox helper as a binary of its own: `gantry-sandbox sandbox-exec
//! --spec JSON -- PROGRAM ARGS…`, the same as `gantry sandbox-exec`. It links
//! only what entering the sandbox needs, so each terraform process starts a
//! few milliseconds sooner than through the whole gantry binary; gantry uses
//! it when it is installed beside the `gantry` binary.

use std::ffi::OsString;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let usage = || {
        eprintln!("usage: gantry-sandbox sandbox-exec --spec JSON [-- PROGRAM ARGS…]");
        ExitCode::from(2)
    };
    let [sub, flag, spec, rest @ ..] = args.as_slice() else {
        return usage();
    };
    if sub != gantry::runner::sandbox::HELPER_SUBCOMMAND || flag != "--spec" {
        return usage();
    }
    let Some(spec) = spec.to_str() else {
        return usage();
    };
    let argv = match rest {
        [] => &[][..],
        [dashes, argv @ ..] if dashes == "--" => argv,
        _ => return usage(),
    };
    gantry::runner::sandbox::helper_main(spec, argv)
}
