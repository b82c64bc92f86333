//! The `bb2tc` command line (SPEC §2).

use anyhow::Context;
use bb2tc::config::Config;
use clap::{Parser, Subcommand, ValueEnum};
use std::io::Read;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "bb2tc",
    version,
    about = "Bitbucket webhooks to TeamCity builds, as the pusher"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bridge.
    Serve {
        /// Config file.
        #[arg(long, env = "BB2TC_CONFIG", default_value = "config/bb2tc.toml")]
        config: PathBuf,
    },
    /// Load and validate the config, and print what it means.
    CheckConfig {
        /// Config file.
        #[arg(long, env = "BB2TC_CONFIG", default_value = "config/bb2tc.toml")]
        config: PathBuf,
    },
    /// Print the X-Hub-Signature value for a body (standard input by default).
    Sign {
        /// The webhook secret.
        #[arg(long)]
        secret: String,
        /// File holding the body.
        file: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match execute(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bb2tc: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn execute(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind(config.http.listen)
                    .await
                    .with_context(|| format!("cannot listen on {}", config.http.listen))?;
                bb2tc::run(config, listener, termination()).await?;
                Ok(())
            })
        }
        Command::CheckConfig { config: path } => {
            let config = Config::load(&path)?;
            print!("{}", config.summary());
            println!("{}: OK", path.display());
            Ok(())
        }
        Command::Sign { secret, file } => {
            let mut body = Vec::new();
            match file {
                Some(path) => {
                    body = std::fs::read(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?
                }
                None => {
                    std::io::stdin()
                        .read_to_end(&mut body)
                        .context("cannot read standard input")?;
                }
            }
            println!(
                "{}",
                bb2tc::bitbucket::signature::sign(secret.as_bytes(), &body)
            );
            Ok(())
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn termination() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
