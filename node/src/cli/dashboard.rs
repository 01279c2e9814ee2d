//! `infergrid dashboard`: the auditor's page for any deployment, served on its own (a gateway
//! serves the same page at `/dashboard`, with its live route).

use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;
use infergrid::dashboard::{DashboardSource, router};

#[derive(Debug, Args)]
pub struct DashboardArgs {
    #[command(flatten)]
    chain: super::ChainTarget,
    /// Where to serve the page.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
}

pub async fn run(args: DashboardArgs) -> anyhow::Result<()> {
    let deployment = args.chain.load()?;
    let rpc_url = args.chain.rpc_url();
    // Fail now, not on the first page view, when the chain does not serve the deployment.
    infergrid::chain::audit::Auditor::connect(&rpc_url, &deployment).await?;
    let source = DashboardSource { rpc_url, deployment, gateway: None };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("dashboard ready on http://{}/dashboard", listener.local_addr()?);
    axum::serve(listener, router(source))
        .with_graceful_shutdown(async {
            let _ = super::stop_signal().await;
        })
        .await?;
    Ok(())
}
