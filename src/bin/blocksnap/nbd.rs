//! `blocksnap nbd`: completed snapshots as read-only NBD exports.

use crate::args::{Cli, NbdArgs};
use crate::output::Output;
use crate::Failure;
use blocksnap::api::validate;
use blocksnap::nbd::{Exports, NbdConfig, NbdListener, NbdServer};
use blocksnap::Error;
use std::io::Write;
use std::path::PathBuf;

/// The socket used when neither `--socket` nor `--listen` is given.
fn default_socket() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join("blocksnap-nbd.sock")
}

/// Runs the server until SIGINT, SIGTERM or SIGHUP.
pub fn run(cli: &Cli, args: &NbdArgs, out: &Output) -> Result<(), Failure> {
    let engine = crate::open_engine_read_only(cli, out)?;
    let exports = if args.snapshots.is_empty() {
        Exports::AllCompleted
    } else {
        let mut ids = Vec::with_capacity(args.snapshots.len());
        for text in &args.snapshots {
            let id = validate::snapshot_id("SnapshotId", text)?;
            // Fails now, with the CLI's exit codes, for a snapshot that
            // does not exist or is not completed.
            drop(engine.reader(id)?);
            ids.push(id);
        }
        Exports::Only(ids)
    };
    crate::serve::init_logging(cli)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| Error::io("starting the runtime", error))?;
    runtime.block_on(async {
        let shutdown = crate::serve::shutdown_signal(true)
            .map_err(|error| Error::io("installing the signal handlers", error))?;
        let listener = match &args.listen {
            Some(address) => NbdListener::bind_tcp(address)
                .await
                .map_err(|error| Error::io(format!("listening on {address}"), error))?,
            None => {
                let path = args.socket.clone().unwrap_or_else(default_socket);
                let listener = NbdListener::bind_unix(&path).map_err(|error| {
                    Error::io(format!("listening on {}", path.display()), error)
                })?;
                restrict_to_owner(&path)?;
                listener
            }
        };
        let address = listener
            .address()
            .map_err(|error| Error::io("reading the listening address", error))?;
        // Stdout may be closed by whoever started the server: what is
        // printed is for convenience, never a reason to stop.
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "listening on {address}");
        let server = NbdServer::new(
            engine,
            NbdConfig {
                exports,
                max_connections: args.max_connections,
                cache_bytes: args.cache_mib << 20,
                ..NbdConfig::default()
            },
        );
        for name in server.export_names() {
            let uri = listener
                .uri(&name)
                .map_err(|error| Error::io("reading the listening address", error))?;
            let _ = writeln!(stdout, "{uri}");
        }
        tracing::info!(%address, "serving snapshots over NBD");
        let served = server
            .serve(listener, shutdown)
            .await
            .map_err(|error| Error::io("serving NBD", error))?;
        tracing::info!(
            connections = served.stats.connections,
            requests = served.stats.requests,
            cut = served.cut_at_shutdown,
            "stopped"
        );
        Ok::<(), Failure>(())
    })
}

/// Makes the socket usable by this user only: anyone who can connect can
/// read every exported snapshot.
pub fn restrict_to_owner(path: &std::path::Path) -> Result<(), Failure> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|error| Error::io(format!("restricting {}", path.display()), error).into())
}
