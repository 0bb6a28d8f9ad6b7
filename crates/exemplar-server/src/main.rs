use clap::Parser;
use exemplar_server::cli::Cli;

/// Feature maps on cache-line boundaries (see the module).
#[global_allocator]
static ALLOCATOR: exemplar_server::alloc::CacheAligned = exemplar_server::alloc::CacheAligned;

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
