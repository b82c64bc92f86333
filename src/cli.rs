//! The `bb2tc` command line (SPEC §2): argument parsing and each command; `main.rs` only
//! calls [`main`].

use crate::admin_client::{AdminClient, jobs_table, tokens_table};
use crate::config::Config;
use crate::ids::Secret;
use crate::store::{Store, TokenCipher};
use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{Value, json};
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

#[derive(Args)]
struct ConfigArg {
    /// Config file.
    #[arg(long, env = "BB2TC_CONFIG", default_value = "config/bb2tc.toml")]
    config: PathBuf,
}

#[derive(Args)]
struct Remote {
    /// Where the bridge listens.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The admin token.
    #[arg(long, env = "BB2TC_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bridge.
    Serve(ConfigArg),
    /// Load and validate the config, and print what it means.
    CheckConfig(ConfigArg),
    /// Manage TeamCity tokens through a running bridge.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Inspect and requeue jobs through a running bridge.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Print the X-Hub-Signature value for a body (standard input by default).
    Sign {
        /// The webhook secret.
        #[arg(long)]
        secret: String,
        /// File holding the body.
        file: Option<PathBuf>,
    },
    /// Copy every token, session, job and mark into another (empty) store — sled to
    /// PostgreSQL or back — with every bridge stopped.
    CopyStore {
        /// The config whose `[storage]` is copied from.
        #[arg(long)]
        from: PathBuf,
        /// The config whose `[storage]` is copied to.
        #[arg(long)]
        to: PathBuf,
    },
    /// Re-encrypt every stored token under a new master key (with the bridge stopped).
    RotateKey {
        #[command(flatten)]
        config: ConfigArg,
        /// The new key, base64 of 32 bytes; generated (and printed) when omitted.
        #[arg(long, env = "BB2TC_NEW_MASTER_KEY", hide_env_values = true)]
        new_key: Option<String>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Register (or replace) a user's TeamCity token.
    Add {
        /// Bitbucket user: Data Center login name or slug, Cloud uuid or account id.
        #[arg(long)]
        user: String,
        /// TeamCity server id or URL.
        #[arg(long)]
        teamcity: String,
        /// The TeamCity access token; `-` reads it from standard input.
        #[arg(long)]
        token: String,
        /// Bitbucket source id (needed when several are configured).
        #[arg(long)]
        source: Option<String>,
        /// Do not check the token with TeamCity first.
        #[arg(long)]
        no_verify: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// List tokens (never the tokens themselves).
    List {
        /// Only this user.
        #[arg(long)]
        user: Option<String>,
        /// Only this TeamCity server (id or URL).
        #[arg(long)]
        teamcity: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Forget a token (it still exists in TeamCity).
    Remove {
        /// Token record id.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum JobsCommand {
    /// List jobs, newest first.
    List {
        /// pending, inflight, dead or done.
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Requeue a dead job.
    Retry {
        /// Job id.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Remove a job.
    Remove {
        /// Job id.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// Parses the command line, sets up logging and runs the command.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = execute(cli.command);
    crate::log_output::flush();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bb2tc: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Threads of tokio's blocking pool: the store's calls and fsync waits.
const STORE_THREADS: usize = 4;

fn execute(command: Command) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // The store's calls run on the blocking pool. A few threads keep up with sled (its
        // work is CPU-bound and shares locks); hundreds would each grow an allocator arena.
        .max_blocking_threads(STORE_THREADS)
        .build()
        .context("cannot start the runtime")?;
    match command {
        Command::Serve(ConfigArg { config }) => {
            let config = Config::load(&config)?;
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind(config.http.listen)
                    .await
                    .with_context(|| format!("cannot listen on {}", config.http.listen))?;
                crate::run(config, listener, termination()).await?;
                Ok(())
            })
        }
        Command::CheckConfig(ConfigArg { config: path }) => {
            let config = Config::load(&path)?;
            print!("{}", config.summary());
            println!("{}: OK", path.display());
            Ok(())
        }
        Command::Sign { secret, file } => {
            let body = read_input(file.as_deref())?;
            println!(
                "{}",
                crate::bitbucket::signature::sign(secret.as_bytes(), &body)
            );
            Ok(())
        }
        Command::RotateKey { config, new_key } => {
            runtime.block_on(rotate_key(&config.config, new_key))
        }
        Command::CopyStore { from, to } => runtime.block_on(copy_store(&from, &to)),
        Command::Token(command) => runtime.block_on(token(command)),
        Command::Jobs(command) => runtime.block_on(jobs(command)),
    }
}

async fn rotate_key(path: &std::path::Path, new_key: Option<String>) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    if config.storage.postgres.is_some() {
        anyhow::bail!(
            "rotate-key re-encrypts a sled store; with PostgreSQL, stop every instance and \
             copy-store into a new database under a new storage.master_key"
        );
    }
    let generated = new_key.is_none();
    let key = new_key.unwrap_or_else(TokenCipher::generate_key);
    let store = Store::open(&config.storage)?;
    let uses_key_file = config.storage.master_key.is_none();
    let count = store
        .rotate_master_key(&Secret::new(key.clone()), uses_key_file)
        .await?;
    if uses_key_file {
        println!(
            "re-encrypted {count} token(s); {} holds the new key",
            TokenCipher::key_file(&config.storage.path).display()
        );
    } else if generated {
        println!(
            "re-encrypted {count} token(s). Set storage.master_key (e.g. BB2TC_MASTER_KEY) to this new key before starting bb2tc:\n{key}"
        );
    } else {
        println!(
            "re-encrypted {count} token(s). Set storage.master_key to the new key before starting bb2tc."
        );
    }
    Ok(())
}

async fn copy_store(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    let source = Config::load(from)?;
    let target = Config::load(to)?;
    let from_store = Store::connect(&source.storage)
        .await
        .with_context(|| format!("cannot open the store of {}", from.display()))?;
    let to_store = Store::connect(&target.storage)
        .await
        .with_context(|| format!("cannot open the store of {}", to.display()))?;
    let copied = crate::store::copy::copy_store(&from_store, &to_store).await?;
    println!(
        "copied {} token(s), {} session(s), {} job(s), {} de-duplication mark(s) and {} delivery record(s); counts verified",
        copied.tokens, copied.sessions, copied.jobs, copied.marks, copied.deliveries
    );
    Ok(())
}

async fn token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Add {
            user,
            teamcity,
            token,
            source,
            no_verify,
            remote,
        } => {
            let token = if token == "-" {
                String::from_utf8(read_input(None)?)
                    .context("the token is not UTF-8")?
                    .trim()
                    .to_owned()
            } else {
                token
            };
            let mut body =
                json!({"user": user, "teamcity": teamcity, "token": token, "verify": !no_verify});
            if let Some(source) = source {
                body["source"] = json!(source);
            }
            let answer = client(&remote)
                .call(Method::POST, "/tokens", Some(&body))
                .await?;
            output(&remote, &answer, || {
                tokens_table(std::slice::from_ref(&answer))
            });
        }
        TokenCommand::List {
            user,
            teamcity,
            remote,
        } => {
            let query = query(&[("user", user), ("teamcity", teamcity)]);
            let answer = client(&remote)
                .call(Method::GET, &format!("/tokens{query}"), None)
                .await?;
            output(&remote, &answer, || tokens_table(list(&answer, "tokens")));
        }
        TokenCommand::Remove { id, remote } => {
            client(&remote)
                .call(Method::DELETE, &format!("/tokens/{}", segment(&id)), None)
                .await?;
            output(&remote, &json!({"removed": id}), || {
                format!("removed token {id}\n")
            });
        }
    }
    Ok(())
}

async fn jobs(command: JobsCommand) -> anyhow::Result<()> {
    match command {
        JobsCommand::List { state, remote } => {
            let query = query(&[("state", state)]);
            let answer = client(&remote)
                .call(Method::GET, &format!("/jobs{query}"), None)
                .await?;
            output(&remote, &answer, || jobs_table(list(&answer, "jobs")));
        }
        JobsCommand::Retry { id, remote } => {
            let answer = client(&remote)
                .call(Method::POST, &format!("/jobs/{}/retry", segment(&id)), None)
                .await?;
            output(&remote, &answer, || format!("job {id} requeued\n"));
        }
        JobsCommand::Remove { id, remote } => {
            client(&remote)
                .call(Method::DELETE, &format!("/jobs/{}", segment(&id)), None)
                .await?;
            output(&remote, &json!({"removed": id}), || {
                format!("removed job {id}\n")
            });
        }
    }
    Ok(())
}

fn client(remote: &Remote) -> AdminClient {
    AdminClient::new(&remote.url, &remote.admin_token)
}

fn output(remote: &Remote, answer: &Value, table: impl FnOnce() -> String) {
    if remote.json {
        println!("{answer}");
    } else {
        print!("{}", table());
    }
}

fn list<'a>(answer: &'a Value, key: &str) -> &'a [Value] {
    answer[key]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs {
        if let Some(value) = value {
            query.append_pair(key, value);
        }
    }
    let query = query.finish();
    if query.is_empty() {
        query
    } else {
        format!("?{query}")
    }
}

fn segment(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn read_input(file: Option<&std::path::Path>) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    match file {
        Some(path) => {
            body = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        None => {
            std::io::stdin()
                .read_to_end(&mut body)
                .context("cannot read standard input")?;
        }
    }
    Ok(body)
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
        .with_writer(crate::log_output::LogOutput)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
