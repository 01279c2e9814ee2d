//! Where a signing key comes from: an environment variable or an encrypted keystore file,
//! never a plain argument, which would leak into shell history and `ps`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use alloy::primitives::{Address, B256};
use alloy::signers::k256::elliptic_curve::rand_core::OsRng;
use alloy::signers::local::PrivateKeySigner;
use anyhow::{Context, bail};
use clap::{Args, Subcommand};

const PASSWORD_ENV: &str = "INFERGRID_KEYSTORE_PASSWORD";

/// The key a command signs with. Flatten it into a command's arguments; a command may give
/// `--key-env` a default with `#[command(mut_arg("key_env", |a| a.default_value("VAR")))]`,
/// which `--keystore` still overrides.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// Environment variable holding the private key (hex).
    #[arg(long, global = true, value_name = "VAR", conflicts_with = "keystore")]
    key_env: Option<String>,
    /// Encrypted JSON keystore (v3, scrypt or pbkdf2) as written by geth, `cast wallet
    /// import` or `infergrid keystore`.
    #[arg(long, global = true, value_name = "FILE")]
    keystore: Option<PathBuf>,
    /// Environment variable holding the keystore's password.
    #[arg(long, global = true, value_name = "VAR", default_value = PASSWORD_ENV)]
    password_env: String,
}

impl KeyArgs {
    /// The private key, from the keystore when one is given, else from the variable.
    pub fn secret(&self) -> anyhow::Result<B256> {
        match (&self.keystore, &self.key_env) {
            (Some(path), _) => decrypt(path, &self.password_env),
            (None, Some(var)) => from_env(var),
            (None, None) => bail!("no key given: pass --key-env VAR or --keystore FILE"),
        }
    }
}

pub fn from_env(var: &str) -> anyhow::Result<B256> {
    let key = std::env::var(var).with_context(|| format!("set {var} to the private key (hex)"))?;
    key.trim().parse().with_context(|| format!("{var} is not a 32-byte hex key"))
}

fn password(var: &str) -> anyhow::Result<String> {
    std::env::var(var).with_context(|| format!("set {var} to the keystore's password"))
}

fn decrypt(path: &Path, password_env: &str) -> anyhow::Result<B256> {
    // The keystore crate folds I/O errors into its own; open first to say which it is.
    std::fs::File::open(path)
        .with_context(|| format!("cannot read keystore {}", path.display()))?;
    let signer = PrivateKeySigner::decrypt_keystore(path, password(password_env)?)
        .with_context(|| format!("wrong password or corrupt keystore {}", path.display()))?;
    Ok(signer.to_bytes())
}

/// Where `infergrid keystore` writes, and the password it encrypts with.
#[derive(Debug, Args)]
pub struct KeystoreOut {
    /// The keystore file to create; an existing file is never overwritten.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Environment variable holding the password to encrypt with.
    #[arg(long, value_name = "VAR", default_value = PASSWORD_ENV)]
    password_env: String,
}

#[derive(Debug, Subcommand)]
pub enum KeystoreCommand {
    /// Encrypt a new random key into a keystore file; prints its address.
    New {
        #[command(flatten)]
        out: KeystoreOut,
    },
    /// Encrypt the key held in an environment variable into a keystore file; prints its
    /// address.
    Import {
        /// Environment variable holding the private key (hex).
        #[arg(long, value_name = "VAR")]
        key_env: String,
        #[command(flatten)]
        out: KeystoreOut,
    },
}

pub fn run(cmd: KeystoreCommand) -> anyhow::Result<()> {
    let (secret, out) = match cmd {
        KeystoreCommand::New { out } => (PrivateKeySigner::random().to_bytes(), out),
        KeystoreCommand::Import { key_env, out } => (from_env(&key_env)?, out),
    };
    let address = write(&out.out, &secret, &password(&out.password_env)?)?;
    eprintln!("keystore: wrote {}", out.out.display());
    println!("{address}");
    Ok(())
}

/// Writes a v3 keystore (scrypt, AES-128-CTR; what `cast wallet import` writes), readable
/// by its owner only.
fn write(out: &Path, secret: &B256, password: &str) -> anyhow::Result<Address> {
    if password.is_empty() {
        bail!("refusing to encrypt with an empty password");
    }
    if out.exists() {
        bail!("{} exists; a keystore is never overwritten", out.display());
    }
    let name = out
        .file_name()
        .and_then(|name| name.to_str())
        .with_context(|| format!("{} is not a file name", out.display()))?;
    let dir = out.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let (signer, _id) =
        PrivateKeySigner::encrypt_keystore(dir, &mut OsRng, secret, password, Some(name))
            .with_context(|| format!("cannot write keystore {}", out.display()))?;
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {} to its owner", out.display()))?;
    Ok(signer.address())
}
