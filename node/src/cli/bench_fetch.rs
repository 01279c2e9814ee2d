//! `bench fetch`: a model's files fetched over libp2p from two seeders on loopback against a
//! local copy of the same bytes, and the share of pieces each seeder sent.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use infergrid::model::ModelManifest;
use serde_json::Value;

#[derive(Debug, Args)]
pub struct FetchBench {
    /// The model to fetch (default: a random llama of about 130 MB in 1 MiB pieces,
    /// generated under --work).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Where the generated model, the devnet and the copies go.
    #[arg(long, default_value = "target/bench-fetch")]
    work: PathBuf,
}

/// make-fixture's flags for the default model: 8 layers of hidden 512, vocab 8192.
const MODEL_FLAGS: [&str; 12] = [
    "--layers",
    "8",
    "--hidden",
    "512",
    "--intermediate",
    "1408",
    "--vocab",
    "8192",
    "--max-pos",
    "512",
    "--seed",
    "5",
];

pub fn run(args: FetchBench, root: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.work)?;
    let model = match args.model {
        Some(model) => model,
        None => super::bench::random_llama(&args.work, root, "llama", &MODEL_FLAGS)?,
    };
    let manifest = ModelManifest::load(&model)?;
    anyhow::ensure!(
        manifest.pieces.is_some(),
        "{} has no piece list (imported before pieces): import it again",
        model.display()
    );
    let bytes: u64 = manifest.files.keys().map(|f| file_len(&model.join(f))).sum();

    // The baseline: the same files copied on this disk.
    let copy = args.work.join("copy");
    let _ = std::fs::remove_dir_all(&copy);
    std::fs::create_dir_all(&copy)?;
    let started = Instant::now();
    for file in manifest.files.keys() {
        std::fs::copy(model.join(file), copy.join(file))?;
    }
    let copied = started.elapsed().as_secs_f64();

    // Two seeders holding every file (devnet nodes 0 and 1), one fetch of every block.
    let (_devnet, _) = super::bench_http::start_devnet(&model, 2, &[], &args.work)?;
    let ready: Value =
        serde_json::from_str(&std::fs::read_to_string(args.work.join("devnet-ready.json"))?)?;
    let out = args.work.join("fetched");
    let _ = std::fs::remove_dir_all(&out);
    let last = (manifest.blocks.len() - 1).to_string();
    let fetched = Command::new(std::env::current_exe()?)
        .args(["model", "fetch", "--model-id", &manifest.model_id, "--blocks"])
        .arg(format!("0-{last}"))
        .arg("--out")
        .arg(&out)
        .arg("--rpc-url")
        .arg(ready["rpc_url"].as_str().context("rpc_url")?)
        .arg("--deployment")
        .arg(ready["deployment_file"].as_str().context("deployment_file")?)
        .output()?;
    let report = String::from_utf8_lossy(&fetched.stdout);
    anyhow::ensure!(
        fetched.status.success(),
        "the fetch failed: {}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    infergrid::model::verify_model(&ModelManifest::load(&out)?)?;
    let seconds: f64 = report
        .split(" in ")
        .nth(1)
        .and_then(|rest| rest.split(" s").next())
        .and_then(|s| s.parse().ok())
        .context("no time in the fetch report")?;
    let (copy_rate, fetch_rate) = (bytes as f64 / copied / 1e6, bytes as f64 / seconds / 1e6);
    println!(
        "bench fetch: {:.1} MB in {} pieces of {} KiB, every file checked",
        bytes as f64 / 1e6,
        manifest.pieces.as_ref().map_or(0, |p| p.files.values().map(|f| f.hashes.len()).sum()),
        manifest.pieces.as_ref().map_or(0, |p| p.piece_bytes / 1024),
    );
    println!("  local copy            {copied:>7.3} s {copy_rate:>9.1} MB/s");
    println!("  fetch from 2 seeders  {seconds:>7.3} s {fetch_rate:>9.1} MB/s");
    println!("  fetch ÷ copy          {:>7.3}", fetch_rate / copy_rate);
    for line in report.lines().filter(|l| l.trim_start().starts_with("from ")) {
        println!("  {}", line.trim());
    }
    Ok(())
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}
