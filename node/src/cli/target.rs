//! Which chain and deployment a command talks to. Explicit flags (or their environment
//! variables) win; otherwise a checkout's own devnet (`anvil-fixtures/devnet/deployment.json`
//! in the current directory), otherwise the devnet this user started last, which
//! `infergrid devnet` records under `~/.config/infergrid/` so that commands work from any
//! directory.

use std::path::{Path, PathBuf};

use alloy::primitives::B256;
use clap::Args;
use infergrid::chain::{Account, Deployment, DeploymentFileError};
use serde::{Deserialize, Serialize};

/// The deployment `infergrid devnet` writes in a checkout, by default.
const CHECKOUT_DEPLOYMENT: &str = "anvil-fixtures/devnet/deployment.json";
const DEFAULT_RPC_URL: &str = "http://127.0.0.1:8545";

/// The chain a command talks to and the InferGrid deployment on it.
#[derive(Debug, Args)]
pub struct ChainTarget {
    /// JSON-RPC endpoint of the chain with the InferGrid contracts. Default: the running
    /// devnet's when its deployment is used, else http://127.0.0.1:8545.
    #[arg(long, global = true, env = "INFERGRID_RPC_URL")]
    rpc_url: Option<String>,
    /// Deployment file (from `infergrid devnet` or `infergrid deploy`). Default:
    /// anvil-fixtures/devnet/deployment.json in the current directory if there is one, else
    /// the devnet you started last (recorded in ~/.config/infergrid/devnet.json).
    #[arg(long, global = true, env = "INFERGRID_DEPLOYMENT")]
    deployment: Option<PathBuf>,
}

/// The devnet a user runs, recorded where any directory's commands find it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentDevnet {
    pub rpc_url: String,
    pub deployment_file: PathBuf,
}

impl CurrentDevnet {
    /// `$XDG_CONFIG_HOME/infergrid/devnet.json`, or `~/.config/infergrid/devnet.json`.
    pub fn file() -> Option<PathBuf> {
        let config = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .filter(|dir| dir.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
        Some(config.join("infergrid").join("devnet.json"))
    }

    /// The recorded devnet, if there is a readable record.
    pub fn read() -> Option<Self> {
        let text = std::fs::read_to_string(Self::file()?).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Records this devnet as the user's current one.
    pub fn record(&self) -> anyhow::Result<PathBuf> {
        let file = Self::file()
            .ok_or_else(|| anyhow::anyhow!("neither XDG_CONFIG_HOME nor HOME is set"))?;
        infergrid::devnet::write_json(&file, self)?;
        Ok(file)
    }

    /// Forgets the record if it is still this devnet's (another may have started since).
    pub fn forget(&self) {
        if Self::read().as_ref() == Some(self)
            && let Some(file) = Self::file()
        {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// Where the deployment comes from, and the RPC URL that goes with it.
struct Resolved {
    deployment: PathBuf,
    rpc_url: String,
}

impl ChainTarget {
    fn resolve(&self) -> anyhow::Result<Resolved> {
        let rpc = |fallback: &str| self.rpc_url.clone().unwrap_or_else(|| fallback.to_owned());
        if let Some(deployment) = &self.deployment {
            return Ok(Resolved { deployment: deployment.clone(), rpc_url: rpc(DEFAULT_RPC_URL) });
        }
        if Path::new(CHECKOUT_DEPLOYMENT).is_file() {
            return Ok(Resolved {
                deployment: CHECKOUT_DEPLOYMENT.into(),
                rpc_url: rpc(DEFAULT_RPC_URL),
            });
        }
        if let Some(devnet) = CurrentDevnet::read() {
            return Ok(Resolved {
                deployment: devnet.deployment_file,
                rpc_url: rpc(&devnet.rpc_url),
            });
        }
        let directory =
            std::env::current_dir().map(|d| format!(" in {}", d.display())).unwrap_or_default();
        let record = CurrentDevnet::file()
            .map(|f| format!(", nor a running devnet recorded in {}", f.display()))
            .unwrap_or_default();
        anyhow::bail!(
            "no deployment given, no {CHECKOUT_DEPLOYMENT}{directory}{record}: start one with \
             `infergrid devnet`, or pass --deployment FILE (or set INFERGRID_DEPLOYMENT) to the \
             deployment.json that `infergrid devnet` or `infergrid deploy` wrote"
        )
    }

    /// The RPC endpoint: `--rpc-url`, else the running devnet's when its deployment is the
    /// one used, else the local default.
    pub fn rpc_url(&self) -> String {
        match &self.rpc_url {
            Some(url) => url.clone(),
            None => self.resolve().map_or_else(|_| DEFAULT_RPC_URL.to_owned(), |r| r.rpc_url),
        }
    }

    /// The deployment file's contents; a missing file says which was tried and how to point
    /// at another.
    pub fn load(&self) -> anyhow::Result<Deployment> {
        let file = self.resolve()?.deployment;
        match Deployment::load(&file) {
            Err(DeploymentFileError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                let directory = match file.is_relative() {
                    true => std::env::current_dir()
                        .map(|d| format!(" in {}", d.display()))
                        .unwrap_or_default(),
                    false => String::new(),
                };
                anyhow::bail!(
                    "no deployment file {}{directory}: run `infergrid devnet` there, or pass \
                     --deployment FILE (or set INFERGRID_DEPLOYMENT) to the deployment.json that \
                     `infergrid devnet` or `infergrid deploy` wrote",
                    file.display()
                )
            }
            loaded => Ok(loaded?),
        }
    }

    /// Connects as the holder of `secret`, checked to serve the deployment.
    pub async fn account(&self, secret: &B256) -> anyhow::Result<(Deployment, Account)> {
        let deployment = self.load()?;
        let account = Account::connect(&self.rpc_url(), secret).await?;
        account.check_deployment(&deployment).await?;
        Ok((deployment, account))
    }
}
