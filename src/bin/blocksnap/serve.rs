//! `blocksnap serve`: the EBS direct API over HTTP on a local store.

use crate::args::{Cli, LogFormat, ServeArgs};
use crate::Failure;
use blocksnap::engine::GcOptions;
use blocksnap::nbd::{NbdConfig, NbdListener, NbdServer};
use blocksnap::server::{
    router_with_metrics, serve, tls_config, Authentication, Credentials, Maintenance,
    MaintenanceSchedule, RateLimits, ReloadableCertificate, ServerConfig, ServerLimits,
};
use blocksnap::storage::Storage;
use blocksnap::{Engine, EngineConfig, Error};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The credentials file kept in the store when none is given.
const STORE_CREDENTIALS: &str = "credentials";

/// The store's own credentials file, created on first use with one random
/// access key (owner `000000000000`), readable by the owner only: a server
/// started with no set-up is still authenticated.
fn store_credentials(store: &Path) -> Result<(Credentials, std::path::PathBuf), Failure> {
    let path = store.join(STORE_CREDENTIALS);
    if !path.exists() {
        std::fs::create_dir_all(store)
            .map_err(|error| Error::io(format!("creating store {}", store.display()), error))?;
        // 16 bytes name the key, 40 others make its secret (both alphabets
        // have a power-of-two size, so every character is uniform).
        let mut random = [0u8; 56];
        getrandom::fill(&mut random).map_err(|error| {
            Error::io(
                "reading random bytes",
                std::io::Error::other(error.to_string()),
            )
        })?;
        const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        const SECRET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let access: String = random[..16]
            .iter()
            .map(|byte| char::from(UPPER[usize::from(*byte) % UPPER.len()]))
            .collect();
        let secret: String = random[16..]
            .iter()
            .map(|byte| char::from(SECRET[usize::from(*byte) % SECRET.len()]))
            .collect();
        let line = format!(
            "# Access keys of this store: ACCESS_KEY_ID SECRET_ACCESS_KEY OWNER_ID\nBSNP{access} {secret} {}\n",
            EngineConfig::default().owner_id
        );
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|error| Error::io(format!("creating {}", path.display()), error))?;
        file.write_all(line.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|error| Error::io(format!("writing {}", path.display()), error))?;
        eprintln!(
            "blocksnap: created {} with a new access key BSNP{access}; its secret is in the file",
            path.display()
        );
    }
    Ok((Credentials::from_file(&path)?, path))
}

/// How requests are authenticated, and the file the access keys come
/// from (read again on SIGHUP): the credentials file, else one key from
/// the environment (no file), else the store's own credentials file
/// (created with a random key on first start).
fn authentication(
    cli: &Cli,
    args: &ServeArgs,
) -> Result<(Authentication, Option<std::path::PathBuf>), Failure> {
    if args.insecure_no_authentication {
        let owner = cli
            .owner
            .clone()
            .unwrap_or_else(|| EngineConfig::default().owner_id);
        return Ok((Authentication::InsecureSingleOwner(owner), None));
    }
    let (credentials, file) = match &args.credentials {
        Some(path) => (Credentials::from_file(path)?, Some(path.clone())),
        None => {
            let variable = |name: &str| std::env::var(name).ok();
            match (
                variable("BLOCKSNAP_ACCESS_KEY_ID"),
                variable("BLOCKSNAP_SECRET_ACCESS_KEY"),
            ) {
                (Some(access), Some(secret)) => {
                    let owner = cli
                        .owner
                        .clone()
                        .unwrap_or_else(|| EngineConfig::default().owner_id);
                    let mut credentials = Credentials::default();
                    credentials.add(&access, &secret, &owner)?;
                    (credentials, None)
                }
                _ => {
                    let (credentials, path) =
                        store_credentials(&cli.local_dir().map_err(Failure::Usage)?)?;
                    (credentials, Some(path))
                }
            }
        }
    };
    if credentials.is_empty() {
        return Err(Failure::Usage(
            "the credentials file lists no access key".into(),
        ));
    }
    Ok((Authentication::SigV4(Arc::new(credentials)), file))
}

/// What SIGHUP loads again: the credentials file (when the keys came from
/// one) and the TLS certificate and key (when serving HTTPS).
struct Reloadable {
    credentials: Option<(Arc<Credentials>, std::path::PathBuf)>,
    certificate: Option<Arc<ReloadableCertificate>>,
}

impl Reloadable {
    /// Reloads each part; one that fails to load keeps what it had, and
    /// says why in the log. Connections are never dropped.
    fn reload(&self) {
        if let Some((credentials, path)) = &self.credentials {
            match Credentials::from_file(path) {
                Ok(loaded) if loaded.is_empty() => {
                    tracing::warn!(file = %path.display(), "SIGHUP: the credentials file lists no access key; the keys in force stay")
                }
                Ok(loaded) => {
                    let keys = loaded.len();
                    credentials.replace_with(loaded);
                    tracing::info!(file = %path.display(), keys, "SIGHUP: access keys reloaded");
                }
                Err(error) => {
                    tracing::warn!(file = %path.display(), %error, "SIGHUP: the credentials file did not load; the keys in force stay")
                }
            }
        }
        if let Some(certificate) = &self.certificate {
            match certificate.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Err(error) => {
                    tracing::warn!(%error, "SIGHUP: the TLS certificate did not load; the one in force stays")
                }
            }
        }
    }
}

/// The rate quotas: AWS's, changed by `--rate-limit`, or none.
fn rate_limits(args: &ServeArgs) -> Result<RateLimits, Failure> {
    if args.no_rate_limits {
        return Ok(RateLimits::unlimited());
    }
    let mut limits = RateLimits::default();
    for setting in &args.rate_limits {
        let parsed = setting
            .split_once('=')
            .and_then(|(name, value)| value.parse::<u32>().ok().map(|value| (name, value)));
        let Some((name, value)) = parsed else {
            return Err(Failure::Usage(format!(
                "--rate-limit '{setting}' is not NAME=N"
            )));
        };
        limits.set(name, value).map_err(Failure::Usage)?;
    }
    Ok(limits)
}

/// A future that resolves on the first SIGINT or SIGTERM, and SIGHUP
/// when `hangup_stops` (`nbd`; `serve` reloads on it instead, see
/// [`reload_on_hangup`]). The handlers are installed by this call, not by
/// the future's first poll, so a signal that arrives while the store
/// opens, or just after the address is printed, stops the server
/// gracefully instead of killing it.
pub fn shutdown_signal(
    hangup_stops: bool,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = hangup_stops
        .then(|| signal(SignalKind::hangup()))
        .transpose()?;
    Ok(async move {
        let hangup = async {
            match &mut hangup {
                Some(hangup) => hangup.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
            _ = hangup => {},
        }
        tracing::info!("shutting down: no new connections; finishing requests in flight");
    })
}

/// Installs the SIGHUP handler now and returns the task body that
/// reloads `reloadable` on each SIGHUP, for as long as the server runs.
fn reload_on_hangup(
    reloadable: Reloadable,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup())?;
    Ok(async move {
        while hangup.recv().await.is_some() {
            reloadable.reload();
        }
    })
}

/// Logs to stderr at `--log-level` (else RUST_LOG, else info), as text
/// (colored on a terminal) or JSON lines (`--log-format json`).
pub fn init_logging(cli: &Cli) -> Result<(), Failure> {
    use tracing_subscriber::EnvFilter;
    let filter = match &cli.log_level {
        Some(directives) => EnvFilter::try_new(directives).map_err(|error| {
            Failure::Usage(format!(
                "--log-level '{directives}' is not a level: {error}"
            ))
        })?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match cli.log_format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
    Ok(())
}

/// Descriptors kept free beyond those open once the store is: new packs,
/// journals, catalog segments, the metrics listener, log files.
const RESERVED_DESCRIPTORS: u64 = 256;

/// Raises the soft limit on open descriptors to the hard limit, and
/// returns how many connections fit below it with the store's own files
/// (`open_now`) and a reserve, so a flood of connections can never make
/// the store's own `open()` fail.
fn connection_budget(open_now: u64) -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum {
        if limit.current.is_some_and(|soft| soft < hard) {
            limit.current = Some(hard);
            if let Err(error) = setrlimit(Resource::Nofile, limit) {
                tracing::warn!(%error, "could not raise the descriptor limit to the hard limit");
                limit = getrlimit(Resource::Nofile);
            }
        }
    }
    let soft = limit.current?;
    Some(soft.saturating_sub(open_now + RESERVED_DESCRIPTORS).max(1))
}

/// Descriptors this process has open.
fn open_descriptors() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |entries| entries.count() as u64)
}

/// Runs the server until SIGINT or SIGTERM (SIGHUP reloads the access keys
/// and the TLS certificate); in-flight requests finish and
/// every acknowledged put is durable before it returns.
pub fn run(
    cli: &Cli,
    args: &ServeArgs,
    engine_config: EngineConfig,
    storage: Arc<dyn Storage>,
) -> Result<(), Failure> {
    let (authentication, credentials_file) = authentication(cli, args)?;
    let reloadable_credentials = match (&authentication, credentials_file) {
        (Authentication::SigV4(credentials), Some(path)) => Some((credentials.clone(), path)),
        _ => None,
    };
    let mut config = ServerConfig {
        authentication,
        rate_limits: rate_limits(args)?,
        limits: ServerLimits {
            max_connections: args.max_connections,
            header_timeout: Duration::from_secs(args.header_timeout),
            body_progress_timeout: Duration::from_secs(args.body_progress_timeout),
            body_timeout: Duration::from_secs(args.body_timeout),
            shutdown_grace: Duration::from_secs(args.shutdown_grace),
        },
        maintenance: None,
    };
    let pace =
        (args.maintenance_max_bytes_per_sec > 0).then_some(args.maintenance_max_bytes_per_sec);
    let schedule = MaintenanceSchedule {
        gc_interval: args.gc_interval.filter(|interval| !interval.is_zero()),
        gc: GcOptions {
            live_threshold: args.gc_live_threshold,
            max_bytes_per_sec: pace,
            ..GcOptions::default()
        },
        verify_interval: args.verify_interval.filter(|interval| !interval.is_zero()),
        verify_sample: args.verify_sample,
        verify_max_bytes_per_sec: pace,
    };
    let engine_config = EngineConfig {
        max_pending_snapshots: args.max_pending_snapshots,
        shared_dedup: args.shared_dedup,
        ..engine_config
    };
    init_logging(cli)?;
    if matches!(
        config.authentication,
        Authentication::InsecureSingleOwner(_)
    ) {
        tracing::warn!(
            "AUTHENTICATION IS OFF: every request is accepted (--insecure-no-authentication)"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| Error::io("starting the runtime", error))?;
    runtime.block_on(async {
        let shutdown = shutdown_signal(false)
            .map_err(|error| Error::io("installing the signal handlers", error))?;
        let certificate = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(
                ReloadableCertificate::load(cert, key)
                    .map_err(|error| Error::io("loading the TLS files", error))?,
            )),
            _ => None,
        };
        let reloader = reload_on_hangup(Reloadable {
            credentials: reloadable_credentials,
            certificate: certificate.clone(),
        })
        .map_err(|error| Error::io("installing the signal handlers", error))?;
        tokio::spawn(reloader);
        // Opened inside the runtime, so the reaper runs.
        let engine = Engine::open_with(storage, engine_config)?;
        for damage in engine.open_damage() {
            tracing::warn!(%damage, "damage in the store; run `blocksnap verify`");
        }
        let maintenance = Maintenance::start(engine.clone(), schedule)
            .map_err(|error| Failure::Usage(error.to_string()))?;
        config.maintenance = Some(maintenance.clone());
        if let Some(every) = args.gc_interval {
            tracing::info!(every = ?every, live_threshold = args.gc_live_threshold, "gc scheduled");
        }
        if let Some(every) = args.verify_interval {
            tracing::info!(every = ?every, sample = args.verify_sample, "verify scheduled");
        }
        if let Some(budget) = connection_budget(open_descriptors()) {
            let cap = usize::try_from(budget).unwrap_or(usize::MAX);
            if cap < config.limits.max_connections {
                tracing::info!(
                    connections = cap,
                    "capping connections below the descriptor limit"
                );
                config.limits.max_connections = cap;
            }
        }
        let tls = certificate
            .map(tls_config)
            .transpose()
            .map_err(|error| Error::io("configuring TLS", error))?;
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|error| Error::io(format!("listening on {}", args.listen), error))?;
        let address = listener
            .local_addr()
            .map_err(|error| Error::io("reading the listening address", error))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let limits = config.limits.clone();
        let (app, private_metrics) = router_with_metrics(engine.clone(), config);
        if let Some(metrics_address) = &args.metrics_listen {
            let metrics_listener = tokio::net::TcpListener::bind(metrics_address)
                .await
                .map_err(|error| Error::io(format!("listening on {metrics_address}"), error))?;
            let metrics_limits = ServerLimits {
                max_connections: 64,
                ..limits.clone()
            };
            tokio::spawn(async move {
                let _ = serve(
                    metrics_listener,
                    private_metrics,
                    None,
                    &metrics_limits,
                    std::future::pending(),
                )
                .await;
            });
        }
        // One signal stops both servers.
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            notify_systemd("STOPPING=1");
            let _ = stop.send(true);
        });
        let stop_signal = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let nbd = match &args.nbd_socket {
            Some(path) => {
                let listener = NbdListener::bind_unix(path).map_err(|error| {
                    Error::io(format!("listening on {}", path.display()), error)
                })?;
                crate::nbd::restrict_to_owner(path)?;
                tracing::info!(socket = %path.display(), "serving completed snapshots over NBD");
                let server = NbdServer::new(engine.clone(), NbdConfig::default());
                let stopped = stop_signal(stopped.clone());
                Some(tokio::spawn(async move {
                    server.serve(listener, stopped).await
                }))
            }
            None => None,
        };
        println!("listening on {address}");
        notify_systemd("READY=1");
        let store = cli.store_location().map_err(Failure::Usage)?;
        tracing::info!(%address, scheme, %store, "serving the EBS direct API");
        let served = serve(listener, app, tls, &limits, stop_signal(stopped))
            .await
            .map_err(|error| Error::io("serving", error))?;
        maintenance.stop().await;
        if let Some(nbd) = nbd {
            match nbd.await {
                Ok(Ok(served)) => tracing::info!(
                    connections = served.stats.connections,
                    cut = served.cut_at_shutdown,
                    "NBD stopped"
                ),
                Ok(Err(error)) => tracing::error!(%error, "the NBD server failed"),
                Err(error) => tracing::error!(%error, "the NBD server failed"),
            }
        }
        tracing::info!(
            connections = served.connections,
            refused = served.refused,
            cut = served.cut_at_shutdown,
            "stopped"
        );
        engine.flush()?;
        Ok::<(), Failure>(())
    })
}

/// Tells systemd (a `Type=notify` unit) how the service is doing: one
/// datagram to `$NOTIFY_SOCKET`, a path or, with a leading `@`, an
/// abstract socket. Outside systemd there is no such variable and nothing
/// is sent. Written here rather than with a crate: the protocol is that
/// one datagram, and a failure to send it only costs the notification.
fn notify_systemd(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| {
        let datagram = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = socket.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                datagram.send_to_addr(state.as_bytes(), &address)
            }
            None => datagram.send_to(state.as_bytes(), &socket),
        }
    })();
    if let Err(error) = sent {
        tracing::warn!(%error, state, "could not notify systemd");
    }
}
