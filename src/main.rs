use clap::Parser;

fn main() -> std::process::ExitCode {
    // Before anything else: no process without CAP_SYS_PTRACE over gantry may
    // read its memory or /proc/<pid>/environ.
    gantry::runner::sandbox::harden_daemon();
    let cli = gantry::cli::Cli::parse();
    if !matches!(cli.command, gantry::cli::Command::SandboxExec { .. }) {
        gantry::telemetry::init(cli.log_json);
    }
    gantry::cli::run(cli)
}
