//! The `abacus` binary: parse the command line, load configuration, start
//! telemetry, bind, and hand over to [`abacus::run`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use abacus_config::Config;
use clap::{Parser, Subcommand};

/// The process allocator, for Rust and, through the `override` feature,
/// for RocksDB's C++ as well. Ingest allocates and frees many small,
/// short-lived values per event from several threads: glibc's malloc spent
/// over a quarter of the server's CPU on them under load, and RocksDB's
/// block churn fragmented its heap well past the cache budget. mimalloc
/// takes a fraction of that time and memory (see `load/RESULTS.md`).
/// Built without its transparent-huge-page advice (`no_thp`): every page
/// it took back from the OS was then a 2 MiB huge page the kernel zeroed
/// on first touch, a fifth of the server's CPU in a profile of single-event
/// ingest (load/RESULTS.md, issue 21).
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
    /// Ask the server this configuration describes whether it is ready
    /// (`GET /readyz` on its `server.bind`, 127.0.0.1 for an unspecified
    /// address): exit 0 if it answers 200 within two seconds, 1 otherwise.
    /// For container health checks, which then need no HTTP client.
    Probe {
        /// TOML file overriding the embedded defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (Command::Serve { config } | Command::CheckConfig { config } | Command::Probe { config }) =
        &cli.command;
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
        Command::Probe { .. } => match probe(config.server.bind) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("abacus: not ready: {e}");
                ExitCode::FAILURE
            }
        },
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

/// `GET /readyz` on `bind` over plain HTTP/1.0, answered 200 within two
/// seconds.
fn probe(mut bind: SocketAddr) -> anyhow::Result<()> {
    const WAIT: Duration = Duration::from_secs(2);
    if bind.ip().is_unspecified() {
        bind.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let mut stream = TcpStream::connect_timeout(&bind, WAIT)?;
    stream.set_read_timeout(Some(WAIT))?;
    stream.set_write_timeout(Some(WAIT))?;
    stream.write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    match &head[9..12] {
        b"200" => Ok(()),
        status => anyhow::bail!("{bind} answered {}", String::from_utf8_lossy(status)),
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
