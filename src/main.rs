//! The `abacus` binary: parse the command line, load configuration, start
//! telemetry, bind, and hand over to [`abacus::run`].

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;

use abacus_config::Config;
use clap::{Parser, Subcommand};

/// The process allocator, for Rust and, through the `override` feature,
/// for RocksDB's C++ as well. Ingest allocates and frees many small,
/// short-lived values per event from several threads: glibc's malloc spent
/// over a quarter of the server's CPU on them under load, and RocksDB's
/// block churn fragmented its heap well past the cache budget. mimalloc
/// takes a fraction of that time and memory (see `load/RESULTS.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Self-hosted A/B testing and event analytics.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API.
    Serve {
        /// TOML file overriding the embedded defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Load and validate the configuration, print it (keys redacted), exit.
    CheckConfig {
        /// TOML file overriding the embedded defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (Command::Serve { config } | Command::CheckConfig { config }) = &cli.command;
    let config = match Config::load(config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("abacus: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::CheckConfig { .. } => {
            println!("{config:#?}");
            ExitCode::SUCCESS
        }
        Command::Serve { .. } => match serve(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "abacus stopped");
                eprintln!("abacus: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    abacus::telemetry::init(&config.log);
    let listener = TcpListener::bind(config.server.bind)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.server.bind))?;
    actix_web::rt::System::new().block_on(abacus::run(
        config,
        listener,
        abacus::shutdown_signal(),
    ))?;
    Ok(())
}
