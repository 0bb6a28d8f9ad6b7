use clap::Parser;
use exemplar_server::cli::Cli;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    exemplar_server::telemetry::init(cli.log_format);
    match exemplar_server::commands::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
