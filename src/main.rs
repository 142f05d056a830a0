use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = gantry::cli::Cli::parse();
    gantry::telemetry::init(cli.log_json);
    gantry::cli::run(cli)
}
