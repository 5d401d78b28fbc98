//! `blocksnap serve`: the EBS direct API over HTTP on a local store.

use crate::args::{Cli, ServeArgs};
use crate::Failure;
use blocksnap::server::{
    router, serve, serve_tls, Authentication, Credentials, RateLimits, ServerConfig,
};
use blocksnap::{Engine, EngineConfig, Error};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

/// The credentials file kept in the store when none is given.
const STORE_CREDENTIALS: &str = "credentials";

/// The store's own credentials file, created on first use with one random
/// access key (owner `000000000000`), readable by the owner only: a server
/// started with no set-up is still authenticated.
fn store_credentials(store: &Path) -> Result<Credentials, Failure> {
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
    Ok(Credentials::from_file(&path)?)
}

/// The access keys: the credentials file, else one key from the
/// environment, else the store's own credentials file (created with a
/// random key on first start).
fn authentication(cli: &Cli, args: &ServeArgs) -> Result<Authentication, Failure> {
    if args.insecure_no_authentication {
        let owner = std::env::var("BLOCKSNAP_OWNER_ID")
            .unwrap_or_else(|_| EngineConfig::default().owner_id);
        return Ok(Authentication::InsecureSingleOwner(owner));
    }
    let credentials = match &args.credentials {
        Some(path) => Credentials::from_file(path)?,
        None => {
            let variable = |name: &str| std::env::var(name).ok();
            match (
                variable("BLOCKSNAP_ACCESS_KEY_ID"),
                variable("BLOCKSNAP_SECRET_ACCESS_KEY"),
            ) {
                (Some(access), Some(secret)) => {
                    let owner = variable("BLOCKSNAP_OWNER_ID")
                        .unwrap_or_else(|| EngineConfig::default().owner_id);
                    let mut credentials = Credentials::default();
                    credentials.add(&access, &secret, &owner)?;
                    credentials
                }
                _ => store_credentials(&cli.store_dir())?,
            }
        }
    };
    if credentials.is_empty() {
        return Err(Failure::Usage(
            "the credentials file lists no access key".into(),
        ));
    }
    Ok(Authentication::SigV4(Arc::new(credentials)))
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

/// How long requests in flight may take to finish after a shutdown signal
/// on TLS connections (plain HTTP waits for all of them).
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Resolves when SIGINT or SIGTERM arrives.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

/// Runs the server until SIGINT or SIGTERM; in-flight requests finish and
/// every acknowledged put is durable before it returns.
pub fn run(cli: &Cli, args: &ServeArgs, engine_config: EngineConfig) -> Result<(), Failure> {
    let authentication = authentication(cli, args)?;
    let config = ServerConfig {
        authentication,
        rate_limits: rate_limits(args)?,
    };
    let engine_config = EngineConfig {
        max_pending_snapshots: args.max_pending_snapshots,
        ..engine_config
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
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
        let store = cli.store_dir();
        std::fs::create_dir_all(&store)
            .map_err(|error| Error::io(format!("creating store {}", store.display()), error))?;
        // Opened inside the runtime, so the reaper runs.
        let engine = Engine::open_with(Engine::local_storage(&store)?, engine_config)?;
        let listener = std::net::TcpListener::bind(&args.listen)
            .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
            .map_err(|error| Error::io(format!("listening on {}", args.listen), error))?;
        let address = listener
            .local_addr()
            .map_err(|error| Error::io("reading the listening address", error))?;
        let scheme = if args.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        println!("listening on {address}");
        tracing::info!(%address, scheme, store = %store.display(), "serving the EBS direct API");
        let app = router(engine.clone(), config);
        let served = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => {
                serve_tls(listener, app, cert, key, shutdown_signal(), SHUTDOWN_GRACE).await
            }
            _ => match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => serve(listener, app, shutdown_signal()).await,
                Err(error) => Err(error),
            },
        };
        served.map_err(|error| Error::io("serving", error))?;
        engine.flush()?;
        Ok::<(), Failure>(())
    })
}
