//! The `warren` command line: parse flags, load settings, set up logging, run the broker.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use warren::Config;
use warren::config::LogFormat;

/// Warren: an AMQP 0-9-1 message broker that RabbitMQ clients use unchanged.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the broker (guest/guest on 0.0.0.0:5672, the management API on 0.0.0.0:15672, data
    /// under ./data unless told otherwise).
    ///
    /// Settings come from the config file (see config/warren.toml for every setting and its
    /// default); the flags below override it. Stop with Ctrl-C or SIGTERM: clients are told
    /// 320 CONNECTION_FORCED and the process exits 0. SIGHUP reads the TLS files again.
    Serve {
        /// TOML config file; settings it leaves out take their defaults.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Address to accept AMQP connections on [default: 0.0.0.0:5672].
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Address to accept AMQPS (AMQP over TLS) connections on, with the certificate the
        /// config file's [tls] section names [default: none].
        #[arg(long, value_name = "ADDR")]
        tls_listen: Option<SocketAddr>,
        /// Address to serve the management HTTP API on [default: 0.0.0.0:15672].
        #[arg(long, value_name = "ADDR")]
        management_listen: Option<SocketAddr>,
        /// Address to serve Prometheus metrics (/metrics) on [default: 0.0.0.0:15692].
        #[arg(long, value_name = "ADDR")]
        prometheus_listen: Option<SocketAddr>,
        /// Directory for the store's files [default: ./data].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Log filter: error, warn, info, debug, trace, or tracing directives [default: info].
        #[arg(long, value_name = "LEVEL")]
        log_level: Option<String>,
        /// Log lines for people (text) or one JSON object per line (json) [default: text].
        #[arg(long, value_name = "FORMAT")]
        log_format: Option<warren::config::LogFormat>,
    },
    /// Administer a running broker through its management API, with rabbitmqctl's commands
    /// (list_queues, add_user, set_permissions, export_definitions, status, ...).
    Ctl(warren::ctl::CtlArgs),
    /// Print the RabbitMQ-style salted SHA-256 hash of a password, for a user in the config file.
    HashPassword {
        /// The password to hash.
        password: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Ctl(args) => warren::ctl::run(&args),
        Command::HashPassword { password } => {
            let hash = warren::broker::auth::hash_password(&password);
            #[allow(clippy::print_stdout)]
            {
                println!("{hash}");
            }
            ExitCode::SUCCESS
        }
        Command::Serve {
            config,
            listen,
            tls_listen,
            management_listen,
            prometheus_listen,
            data_dir,
            log_level,
            log_format,
        } => {
            let mut settings = match config {
                Some(path) => match Config::load(&path) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("warren: {e}");
                        return ExitCode::FAILURE;
                    }
                },
                None => Config::default(),
            };
            if let Some(l) = listen {
                settings.listen = l;
            }
            if let Some(t) = tls_listen {
                settings.tls.listen = Some(t);
            }
            if let Some(m) = management_listen {
                settings.management.listen = m;
            }
            if let Some(p) = prometheus_listen {
                settings.prometheus.listen = p;
            }
            if let Some(d) = data_dir {
                settings.data_dir = d;
            }
            if let Some(l) = log_level {
                settings.log_level = l;
            }
            if let Some(f) = log_format {
                settings.log_format = f;
            }
            if let Err(e) = settings.validate() {
                eprintln!("warren: {e}");
                return ExitCode::FAILURE;
            }
            serve(settings)
        }
    }
}

fn serve(settings: Config) -> ExitCode {
    let filter = match EnvFilter::try_new(&settings.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("warren: invalid log level '{}': {e}", settings.log_level);
            return ExitCode::FAILURE;
        }
    };
    match settings.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .fmt_fields(warren::log::fields())
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .init(),
        // JSON escapes whatever clients put in field values itself.
        LogFormat::Json => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warren: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let stop = shutdown_signals();
        let Ok(listener) =
            optional_listener(settings.tcp_listener.then_some(settings.listen), "AMQP", "").await
        else {
            return ExitCode::FAILURE;
        };
        let Ok(tls_listener) = optional_listener(settings.tls.listen, "AMQPS", "tls").await else {
            return ExitCode::FAILURE;
        };
        let Ok(management) = optional_listener(
            settings
                .management
                .enabled
                .then_some(settings.management.listen),
            "the management API",
            "management",
        )
        .await
        else {
            return ExitCode::FAILURE;
        };
        let Ok(prometheus) = optional_listener(
            settings
                .prometheus
                .enabled
                .then_some(settings.prometheus.listen),
            "Prometheus metrics",
            "prometheus",
        )
        .await
        else {
            return ExitCode::FAILURE;
        };
        let mut server = match warren::Server::start(settings) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("warren: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = server.load_definitions().await {
            eprintln!("warren: {e}");
            server.stop().await;
            return ExitCode::FAILURE;
        }
        if let Some(l) = listener
            && let Err(e) = server.serve_amqp(l)
        {
            eprintln!("warren: {e}");
            return ExitCode::FAILURE;
        }
        if let Some(l) = tls_listener
            && let Err(e) = server.serve_amqps(l)
        {
            eprintln!("warren: {e}");
            return ExitCode::FAILURE;
        }
        if let Some(l) = management
            && let Err(e) = server.serve_management(l)
        {
            eprintln!("warren: {e}");
            return ExitCode::FAILURE;
        }
        if let Some(l) = prometheus
            && let Err(e) = server.serve_prometheus(l)
        {
            eprintln!("warren: {e}");
            return ExitCode::FAILURE;
        }
        server.announce();
        reload_on_sighup(&server, stop).await;
        server.stop().await;
        ExitCode::SUCCESS
    })
}

/// Binds the listener of an optional service (`None` when it is turned off); says on stderr
/// which setting to change when the address is taken.
async fn optional_listener(
    addr: Option<SocketAddr>,
    what: &str,
    setting: &str,
) -> Result<Option<tokio::net::TcpListener>, ()> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Ok(Some(l)),
        Err(e) => {
            let setting = if setting.is_empty() {
                "listen or --listen".to_owned()
            } else {
                format!("{setting}.listen or --{setting}-listen")
            };
            eprintln!("warren: cannot serve {what} on {addr}: {e} (set {setting})");
            Err(())
        }
    }
}

/// Waits for `stop`, reading the TLS files again at each SIGHUP meanwhile (as RabbitMQ
/// reloads certificates): a bad file is logged and the certificates in use stay.
async fn reload_on_sighup(server: &warren::Server, stop: impl std::future::Future<Output = ()>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        stop.await;
        return;
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = hup.recv() => match server.reload_tls() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificates reloaded"),
                Err(e) => tracing::warn!(cause = %e, "SIGHUP: TLS certificates not reloaded, the old ones stay"),
            },
        }
    }
}

/// Listens for SIGTERM and SIGINT from now on: a signal that comes while the broker is still
/// starting is kept, and stops it once it has started (no signal then kills it half-way).
fn shutdown_signals() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
