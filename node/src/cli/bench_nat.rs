//! `bench swarm --nat`: what crossing home routers costs. The same swarm runs in three
//! layouts at once, each in network namespaces of its own (`infergrid::netlab`, root only):
//! every node public (the baseline), home nodes behind routers that let holes be punched (the
//! gateway goes direct), and behind routers that randomize ports (every step to a home node
//! crosses the relay). Timing rounds alternate between the layouts, so that this machine's
//! drift hits them alike. Per layout: decode tokens/s through the HTTP API and each hop's
//! mean latency, from the gateway's `/metrics`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use infergrid::model::ModelManifest;
use infergrid::netlab::process::Log;
use infergrid::netlab::{Layout, Mapping, RelayKind, Topology};

const PROMPT: &str = "once upon a time";
/// Timing rounds per layout, alternating.
const ROUNDS: usize = 3;

/// One layout, running, and what it measured so far.
struct Measured {
    label: &'static str,
    topology: Topology,
    /// The best round's decode speed.
    tokens_per_s: f64,
    /// Each hop's total step time (s) and steps, by its blocks (`first-last`).
    hops: BTreeMap<String, (f64, f64)>,
    /// The gateway's path to each home node while it was timed.
    paths: Vec<String>,
    /// The greedy completion's token ids: the same in every layout.
    tokens: Vec<u64>,
}

/// Runs the three layouts for `model` (3 blocks), timing `decode` tokens, files under `work`.
pub fn run(model: &Path, decode: usize, work: &Path) -> anyhow::Result<()> {
    // SAFETY: geteuid(2) reads the caller's id and cannot fail.
    anyhow::ensure!(
        unsafe { libc::geteuid() } == 0,
        "bench swarm --nat builds network namespaces and routers: run it as root"
    );
    let manifest = ModelManifest::load(model)?;
    anyhow::ensure!(manifest.blocks.len() == 3, "bench swarm --nat wants a 3-block model");
    let binary = std::env::current_exe()?;
    let model = std::fs::canonicalize(model)?;
    let work = std::path::absolute(work)?;
    let layouts = [
        ("direct", None),
        ("hole-punched", Some(Mapping::PortPreserving)),
        ("relayed", Some(Mapping::RandomPorts)),
    ];
    let mut runs = Vec::new();
    for (label, homes) in layouts {
        let dir = work.join(label);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        eprintln!("bench swarm --nat: {label}: starting the chain, a relay, 3 nodes and a gateway");
        let layout = Layout { homes, relay: RelayKind::Dedicated, backup: false };
        let topology = Topology::start(&binary, &model, &dir, layout, Log::Quiet)
            .with_context(|| format!("starting the {label} layout"))?;
        let paths = warm_up(&topology, homes, &manifest.name)
            .with_context(|| format!("warming up the {label} layout"))?;
        let (hops, tokens) = (BTreeMap::new(), Vec::new());
        runs.push(Measured { label, topology, tokens_per_s: 0.0, hops, paths, tokens });
    }
    for round in 1..=ROUNDS {
        eprintln!("bench swarm --nat: timing round {round} of {ROUNDS}");
        for run in &mut runs {
            time_round(run, &manifest.name, decode)
                .with_context(|| format!("timing the {} layout", run.label))?;
        }
    }
    report(&runs, decode)
}

fn body(name: &str, tokens: usize) -> serde_json::Value {
    serde_json::json!({"model": name, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0})
}

/// A first completion (for home nodes it opens the relayed connections, from which DCUtR
/// starts), then the gateway's paths to the home nodes: direct where holes can be punched.
fn warm_up(topology: &Topology, homes: Option<Mapping>, name: &str) -> anyhow::Result<Vec<String>> {
    topology.complete(&body(name, 8), Duration::from_secs(120))?;
    match homes {
        None => Ok(topology.paths()?),
        Some(Mapping::RandomPorts) => {
            let paths = topology.paths()?;
            anyhow::ensure!(paths.iter().all(|p| p == "relayed"), "home nodes reached {paths:?}");
            Ok(paths)
        }
        Some(Mapping::PortPreserving) => {
            let paths = topology.paths_once_direct(Duration::from_secs(30))?;
            anyhow::ensure!(
                paths.iter().all(|p| p == "direct"),
                "no hole was punched to the home nodes within 30 s (paths {paths:?})"
            );
            Ok(paths)
        }
    }
}

/// One round: decode speed as the difference between a 1-token and a (1 + decode)-token
/// completion (tokens counted from `usage`: a completion may stop early); hop latency over
/// the steps of the longer completion (its prefill and close among them, so mostly decode).
fn time_round(run: &mut Measured, name: &str, decode: usize) -> anyhow::Result<()> {
    let topology = &run.topology;
    let timed = |n: usize| -> anyhow::Result<(Duration, usize, serde_json::Value)> {
        let started = Instant::now();
        let answer = topology.complete(&body(name, n), Duration::ZERO)?;
        let tokens = answer["usage"]["completion_tokens"].as_u64().context("usage")? as usize;
        Ok((started.elapsed(), tokens, answer))
    };
    let (one, one_tokens, _) = timed(1)?;
    let before = hop_totals(&topology.get("/metrics")?);
    let (many, many_tokens, answer) = timed(1 + decode)?;
    let after = hop_totals(&topology.get("/metrics")?);
    anyhow::ensure!(many_tokens > one_tokens, "the longer completion stopped at once");
    anyhow::ensure!(many > one, "the longer completion took no longer than one token");
    let decoded = (many_tokens - one_tokens) as f64;
    run.tokens_per_s = run.tokens_per_s.max(decoded / many.saturating_sub(one).as_secs_f64());
    for (blocks, (sum, count)) in after {
        let (sum0, count0) = before.get(&blocks).copied().unwrap_or_default();
        let hop = run.hops.entry(blocks).or_default();
        hop.0 += sum - sum0;
        hop.1 += count - count0;
    }
    let ids = answer["choices"][0]["token_ids"].as_array().cloned().unwrap_or_default();
    let tokens: Vec<u64> = ids.iter().filter_map(|id| id.as_u64()).collect();
    anyhow::ensure!(
        run.tokens.is_empty() || run.tokens == tokens,
        "the greedy completion changed between rounds"
    );
    run.tokens = tokens;
    Ok(())
}

/// The gateway's `hop_latency` histogram: (sum in seconds, count) by the hop's blocks.
fn hop_totals(metrics: &str) -> BTreeMap<String, (f64, f64)> {
    let mut totals: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for line in metrics.lines().filter(|l| l.starts_with("infergrid_gateway_hop_latency")) {
        let Some((name, value)) = line.rsplit_once(' ') else { continue };
        let Some(blocks) = name.split("blocks=\"").nth(1).and_then(|s| s.split('"').next()) else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else { continue };
        let entry = totals.entry(blocks.to_owned()).or_default();
        if name.contains("_sum{") {
            entry.0 = value;
        } else if name.contains("_count{") {
            entry.1 = value;
        }
    }
    totals
}

fn report(runs: &[Measured], decode: usize) -> anyhow::Result<()> {
    let baseline = runs.first().context("no layout ran")?;
    println!(
        "swarm benchmark across NATs ({decode} decode tokens, greedy, HTTP API, best of {ROUNDS} alternating rounds)"
    );
    for m in runs {
        let hops: Vec<String> = m
            .hops
            .iter()
            .filter(|(_, (_, steps))| *steps > 0.0)
            .map(|(blocks, (seconds, steps))| {
                format!("blocks {blocks} {:.2} ms", seconds / steps * 1e3)
            })
            .collect();
        println!(
            "  {:<13} {:>7.1} tok/s ({:.2}x direct) | per hop: {} | gateway → home nodes {:?}",
            m.label,
            m.tokens_per_s,
            m.tokens_per_s / baseline.tokens_per_s,
            hops.join(", "),
            m.paths
        );
    }
    let same = runs.iter().all(|m| m.tokens == baseline.tokens);
    println!("  completions identical across layouts: {}", if same { "yes" } else { "NO" });
    anyhow::ensure!(same, "the layouts' greedy completions differ");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::hop_totals;

    #[test]
    fn hop_totals_reads_sum_and_count_by_blocks() {
        let metrics = "# HELP infergrid_gateway_hop_latency_seconds One step\n\
            infergrid_gateway_hop_latency_seconds_sum{blocks=\"1-1\"} 0.5\n\
            infergrid_gateway_hop_latency_seconds_count{blocks=\"1-1\"} 100\n\
            infergrid_gateway_hop_latency_seconds_bucket{le=\"0.001\",blocks=\"1-1\"} 3\n\
            infergrid_gateway_inter_token_seconds_sum 9\n";
        let totals = hop_totals(metrics);
        assert_eq!(totals.len(), 1);
        assert_eq!(totals["1-1"], (0.5, 100.0));
    }
}
