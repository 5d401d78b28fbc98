//! The key provider of encrypted snapshots: the local key file, its
//! passphrase from `--passphrase-file`, `--passphrase-command`,
//! `$BLOCKSNAP_PASSPHRASE` or a prompt.

use crate::args::Cli;
use crate::Failure;
use blocksnap::keys::{KdfParams, LocalKeyProvider, Passphrase};
use blocksnap::Error;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;

/// The key file's name in the store directory unless `--key-file` says.
pub const DEFAULT_KEY_FILE: &str = "keys";

/// The key provider the store needs: none for a store without encrypted
/// snapshots (no encrypted domain in its keyring) unless
/// `want_encryption`; the key file
/// otherwise (`--key-file`, else `keys` in `key_dir`), created on first
/// use by a backup that asks for encryption.
pub fn provider(
    cli: &Cli,
    key_dir: Option<&Path>,
    has_encrypted: bool,
    want_encryption: bool,
) -> Result<Option<Arc<LocalKeyProvider>>, Failure> {
    if !want_encryption && !has_encrypted {
        return Ok(None);
    }
    let key_file = match (&cli.key_file, key_dir) {
        (Some(file), _) => file.clone(),
        (None, Some(dir)) => dir.join(DEFAULT_KEY_FILE),
        (None, None) => {
            return Err(Failure::Usage(
                "a bucket store keeps no key file: name one with --key-file (keep it apart \
                 from the bucket, and safe)"
                    .into(),
            ))
        }
    };
    let exists = LocalKeyProvider::exists(&key_file);
    if !exists && !want_encryption {
        return Err(Failure::Engine(Error::KeyUnavailable {
            message: format!(
                "the store holds encrypted snapshots but the key file {} does not exist (see --key-file)",
                key_file.display()
            ),
        }));
    }
    let passphrase = passphrase(cli, !exists)?;
    let provider = if exists {
        LocalKeyProvider::open(&key_file, &passphrase).map_err(|error| match error {
            // The only refusal of a key file that reads whole: the
            // passphrase does not open it.
            Error::KeyUnavailable { message } => Failure::WrongPassphrase(message),
            other => Failure::Engine(other),
        })?
    } else {
        LocalKeyProvider::create(&key_file, &passphrase, KdfParams::default())?
    };
    Ok(Some(Arc::new(provider)))
}

fn passphrase(cli: &Cli, new_file: bool) -> Result<Passphrase, Failure> {
    if let Some(path) = &cli.passphrase_file {
        return Ok(Passphrase::from_file(path)?);
    }
    if let Some(command) = &cli.passphrase_command {
        return passphrase_from_command(command);
    }
    if let Some(passphrase) = Passphrase::from_env()? {
        return Ok(passphrase);
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::Usage(
            "the key file needs a passphrase: set BLOCKSNAP_PASSPHRASE or pass --passphrase-file or --passphrase-command"
                .into(),
        ));
    }
    let prompt = |text: &str| {
        rpassword::prompt_password(text)
            .map_err(|error| Failure::Engine(Error::io("reading the passphrase", error)))
    };
    let first = prompt("Key file passphrase: ")?;
    if new_file && prompt("Repeat the passphrase: ")? != first {
        return Err(Failure::Usage("the passphrases differ".into()));
    }
    Ok(Passphrase::new(first)?)
}

/// The first line a passphrase command prints. Its stderr goes to ours
/// (it may prompt there); its stdout is read whole and wiped after use.
fn passphrase_from_command(command: &str) -> Result<Passphrase, Failure> {
    let output = std::process::Command::new("sh")
        .args(["-c", command])
        .stdin(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|error| {
            Failure::Engine(Error::io(
                format!("running the passphrase command '{command}'"),
                error,
            ))
        })?;
    let stdout = zeroize::Zeroizing::new(output.stdout);
    if !output.status.success() {
        return Err(Failure::Usage(format!(
            "the passphrase command '{command}' failed ({})",
            output.status
        )));
    }
    let text = std::str::from_utf8(&stdout).map_err(|_| {
        Failure::Usage(format!(
            "the passphrase command '{command}' printed bytes that are not UTF-8"
        ))
    })?;
    let line = text.lines().next().unwrap_or_default();
    Ok(Passphrase::new(line)?)
}
