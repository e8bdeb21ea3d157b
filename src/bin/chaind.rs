//! chaind: the chain daemon. Parses flags, sets up logging, runs `Daemon::run` until SIGTERM or
//! SIGINT.

use std::path::PathBuf;

use anyhow::Context as _;
use chain::daemon::{Config, Daemon};
use clap::Parser;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Supervises processes from TOML unit files; controlled by chainctl over a Unix socket.
#[derive(Parser, Debug)]
#[command(
    name = "chaind",
    version,
    about = "chain daemon: supervises processes from TOML unit files, proxies HTTP to them, and is driven by chainctl over a Unix socket"
)]
struct Args {
    /// State directory: store, logs, FIFOs and the socket DIR/chaind.sock.
    /// Default: /var/lib/chain as root, else $XDG_STATE_HOME/chain or ~/.local/state/chain.
    #[arg(long, value_name = "DIR", env = "CHAIN_ROOT")]
    root: Option<PathBuf>,
    /// Units directory. Default: DIR/units with --root, else /etc/chain/units as root, else ./units.
    #[arg(long, value_name = "PATH")]
    units: Option<PathBuf>,
    /// chaind's configuration file (docs/config.md). Default: DIR/chaind.toml (optional).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Ports handed to instances with `port = "auto"` (overrides port_range in chaind.toml;
    /// default 20000-29999).
    #[arg(long, value_name = "START-END", value_parser = parse_range)]
    port_range: Option<(u16, u16)>,
    /// Env profile applied to units that define it, until `chainctl apply --profile` changes it.
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    /// Serve the proxy's plain-HTTP listener on this address (e.g. 0.0.0.0:80); overrides
    /// proxy.http in chaind.toml.
    #[arg(long, value_name = "ADDR")]
    http: Option<std::net::SocketAddr>,
    /// Serve the proxy's HTTPS listener on this address (e.g. 0.0.0.0:443); overrides
    /// proxy.https in chaind.toml.
    #[arg(long, value_name = "ADDR")]
    https: Option<std::net::SocketAddr>,
    /// On SIGTERM, leave workloads running for the next chaind to re-adopt.
    #[arg(long)]
    leave_running: bool,
    /// Log filter: a level, or comma-separated `target=level` pairs, e.g. `info`,
    /// `info,chain::proxy=debug`.
    #[arg(long, env = "CHAIN_LOG", default_value = "info")]
    log: String,
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or("expected START-END, e.g. 20000-29999")?;
    let a: u16 = a.trim().parse().map_err(|_| format!("bad port {a:?}"))?;
    let b: u16 = b.trim().parse().map_err(|_| format!("bad port {b:?}"))?;
    if a == 0 || a > b {
        return Err(format!("bad range {s}: need 1 <= START <= END"));
    }
    Ok((a, b))
}

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // `Targets` rather than `EnvFilter`: the same `target=level` syntax without the regex engine
    // that EnvFilter compiles at start-up (its code is most of what an idle chaind has resident).
    let filter: tracing_subscriber::filter::Targets = args.log.parse().context("--log")?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .finish()
        .with(filter)
        .init();
    let root_given = args.root.is_some();
    let root = args.root.unwrap_or_else(chain::paths::default_root);
    let units_dir = args
        .units
        .unwrap_or_else(|| chain::paths::default_units_dir(root_given, &root));
    let config_path = args.config.unwrap_or_else(|| root.join("chaind.toml"));
    let mut settings = match chain::config::load(&config_path, &root) {
        Ok(s) => s,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            anyhow::bail!(
                "{} has {} problem(s); chaind did not start",
                config_path.display(),
                errors.len()
            );
        }
    };
    if let Some(r) = args.port_range {
        settings.port_range = r;
    }
    if args.http.is_some() {
        settings.proxy.http = args.http;
    }
    if args.https.is_some() {
        settings.proxy.https = args.https;
    }
    let cfg = Config {
        root,
        units_dir,
        profile: args.profile,
        leave_running: args.leave_running,
        settings,
    };
    // The control plane (supervision, API, logs) needs little CPU: one runtime thread. The
    // proxy runs its own worker threads (`worker_threads` in chaind.toml).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(Daemon::run(cfg, chain::daemon::signals()))
}
