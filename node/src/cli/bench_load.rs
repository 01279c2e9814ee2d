//! `bench swarm --concurrency 1,8,…`: many users streaming through a devnet's gateway at once.
//! Per level: aggregate tokens/s (and its ratio to one stream's), time to first token and
//! inter-token latency (p50/p99), errors, and the CPU time a token costs the gateway and the
//! nodes.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

/// What one stream saw.
#[derive(Debug, Default)]
struct StreamTiming {
    first_token: Option<Duration>,
    gaps: Vec<Duration>,
    tokens: usize,
    error: Option<String>,
}

/// Streams one completion over HTTP/1.0 (close-delimited, so the SSE lines arrive unframed)
/// and times its tokens.
fn stream_once(address: &str, model: &str, prompt: &str, max_tokens: usize) -> StreamTiming {
    let mut timing = StreamTiming::default();
    let body = json!({
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": true,
    })
    .to_string();
    let started = Instant::now();
    let result = (|| -> std::io::Result<()> {
        let mut stream = TcpStream::connect(address)?;
        stream.set_read_timeout(Some(Duration::from_secs(600)))?;
        write!(
            stream,
            "POST /v1/completions HTTP/1.0\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut last = None;
        for line in BufReader::new(stream).lines() {
            let line = line?;
            if line.starts_with("HTTP/") && !line.contains(" 200 ") {
                timing.error = Some(line);
                return Ok(());
            }
            let Some(data) = line.strip_prefix("data: ") else { continue };
            let Ok(event) = serde_json::from_str::<serde_json::Value>(data) else { continue };
            if let Some(error) = event.get("error") {
                timing.error = Some(error.to_string());
                return Ok(());
            }
            if event["choices"][0]["finish_reason"].is_null() {
                let now = Instant::now();
                match last {
                    None => timing.first_token = Some(now - started),
                    Some(previous) => timing.gaps.push(now - previous),
                }
                last = Some(now);
                timing.tokens += 1;
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        timing.error = Some(e.to_string());
    }
    timing
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index].as_secs_f64() * 1e3
}

/// CPU time (user and system, of every thread, ended ones included) the devnet's gateway and
/// node processes have used, in seconds. It moves less than latencies with the machine's speed
/// of the moment (a kernel that accounts steal time leaves out what other guests took, though
/// contention still inflates it), so its ratio between levels shows what batching saves, and
/// where the rest goes. The devnet process itself, which forwards its children's logs, is not
/// counted.
#[derive(Debug, Clone, Copy, Default)]
struct CpuUse {
    gateway: f64,
    nodes: f64,
}

impl CpuUse {
    /// The use so far of the gateway and nodes the devnet process `devnet` started, read from
    /// `/proc` (Linux); `None` where there is none to read, or no gateway or no node.
    fn of_devnet(devnet: u32) -> Option<Self> {
        // SAFETY: sysconf only reads a system constant.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if ticks <= 0 {
            return None;
        }
        let ticks = ticks as f64;
        let mut used = CpuUse::default();
        let (mut gateways, mut nodes) = (0, 0);
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let dir = entry.path();
            let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else { continue };
            let Some((parent, cpu_ticks)) = parent_and_cpu_ticks(&stat) else { continue };
            if parent != devnet {
                continue;
            }
            let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
            let (total, count) = match cmdline.split(|&b| b == 0).nth(1) {
                Some(b"gateway") => (&mut used.gateway, &mut gateways),
                Some(b"node") => (&mut used.nodes, &mut nodes),
                _ => continue,
            };
            *total += cpu_ticks as f64 / ticks;
            *count += 1;
        }
        (gateways > 0 && nodes > 0).then_some(used)
    }

    /// Milliseconds of CPU per token from `before` to `self`, gateway and nodes.
    fn per_token(self, before: CpuUse, tokens: usize) -> (f64, f64) {
        let per = |now: f64, then: f64| (now - then) * 1e3 / tokens as f64;
        (per(self.gateway, before.gateway), per(self.nodes, before.nodes))
    }
}

/// A process's parent and its CPU time so far (user and system, in clock ticks) from its
/// `/proc/<pid>/stat` line. The command name, in parentheses, may hold spaces and parentheses
/// itself: fields are counted after its last `)` (state, parent, …, utime and stime are the
/// 14th and 15th of the line).
fn parent_and_cpu_ticks(stat: &str) -> Option<(u32, u64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let number = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((u32::try_from(number(1)?).ok()?, number(11)? + number(12)?))
}

/// One level's streams in one round.
struct LevelRun {
    tokens_per_second: f64,
    first_tokens: Vec<Duration>,
    gaps: Vec<Duration>,
    errors: usize,
    /// CPU ms per streamed token: the gateway's, and all nodes' together (NaN: unknown).
    cpu_per_token: (f64, f64),
}

/// `users` streams at once, each of `max_tokens` tokens, through the devnet process `devnet`.
fn run_level(address: &str, name: &str, users: usize, max_tokens: usize, devnet: u32) -> LevelRun {
    let cpu_before = CpuUse::of_devnet(devnet);
    let started = Instant::now();
    let timings: Vec<StreamTiming> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..users)
            .map(|user| {
                scope.spawn(move || {
                    stream_once(address, name, &format!("user {user} asks"), max_tokens)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    let wall = started.elapsed().as_secs_f64();
    if let Some(error) = timings.iter().find_map(|t| t.error.as_ref()) {
        eprintln!("bench: {users} users: first error: {error}");
    }
    let tokens = timings.iter().map(|t| t.tokens).sum::<usize>();
    let cpu_per_token = match (cpu_before, CpuUse::of_devnet(devnet)) {
        (Some(before), Some(after)) if tokens > 0 => after.per_token(before, tokens),
        _ => (f64::NAN, f64::NAN),
    };
    LevelRun {
        tokens_per_second: tokens as f64 / wall,
        first_tokens: timings.iter().filter_map(|t| t.first_token).collect(),
        gaps: timings.iter().flat_map(|t| t.gaps.iter().copied()).collect(),
        errors: timings.iter().filter(|t| t.error.is_some()).count(),
        cpu_per_token,
    }
}

/// The median over rounds of `figure` of a level's round ÷ that of the first level's in the same
/// round: this machine's speed drifts by tens of percent between rounds, and a ratio of figures
/// taken from different rounds carries that drift. A round without the figure (all its
/// streams failed) has no ratio.
fn ratio_by_round(level: &[LevelRun], first: &[LevelRun], figure: fn(&LevelRun) -> f64) -> f64 {
    median_of_known(level.iter().zip(first).map(|(run, first)| figure(run) / figure(first)))
}

/// The median of the finite `values` (NaN when there are none): rounds that could not measure
/// a figure leave it out.
fn median_of_known(values: impl Iterator<Item = f64>) -> f64 {
    let known: Vec<f64> = values.filter(|v| v.is_finite()).collect();
    if known.is_empty() { f64::NAN } else { median(known) }
}

/// The 99th percentile of a round's inter-token gaps, in ms.
fn gap_p99(run: &LevelRun) -> f64 {
    let mut gaps = run.gaps.clone();
    gaps.sort();
    percentile(&gaps, 0.99)
}

/// The middle value of `values` (the mean of the two middle ones for an even count).
pub(super) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}

/// Runs every level `rounds` times against a devnet of `nodes` node processes serving
/// `model`, the levels alternating within each round (so that the machine's slow spells fall
/// on all of them alike); reports each level's median tokens/s over the rounds, the median of
/// its rounds' ratios to the first level, and latencies over all its streams.
pub fn run(
    model: &Path,
    nodes: usize,
    levels: &[usize],
    max_tokens: usize,
    rounds: usize,
    work: &Path,
) -> anyhow::Result<()> {
    let name = infergrid::model::ModelManifest::load(model)?.name;
    anyhow::ensure!(
        !super::bench::predates_batching(model),
        "{} predates batch-capable graphs (its nodes could not batch): import it again",
        model.display()
    );
    anyhow::ensure!(rounds > 0, "--rounds must be at least 1");
    let (devnet, address) = super::bench_http::start_devnet(model, nodes, &[], work)?;
    // One warm-up stream: channels opened, caches and connections warm.
    let warm = stream_once(&address, &name, "warm up", 8);
    if let Some(e) = warm.error {
        anyhow::bail!("warm-up stream failed: {e}");
    }
    let mut runs: Vec<Vec<LevelRun>> = levels.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        eprintln!("bench: round {round} of {rounds}");
        for (level, &users) in levels.iter().enumerate() {
            runs[level].push(run_level(&address, &name, users, max_tokens, devnet.0.id()));
        }
    }
    println!(
        "{:>6} {:>10} {:>7} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>9} {:>9}",
        "users",
        "tok/s",
        "× one",
        "TTFT p50",
        "TTFT p99",
        "ITL p50",
        "ITL p99",
        "× one",
        "errors",
        "CPU gw",
        "CPU nodes"
    );
    let first_level = &runs[0];
    for (&users, level) in levels.iter().zip(&runs) {
        let rate = median(level.iter().map(|r| r.tokens_per_second).collect());
        let ratio = ratio_by_round(level, first_level, |r| r.tokens_per_second);
        let tail_ratio = ratio_by_round(level, first_level, gap_p99);
        let errors: usize = level.iter().map(|r| r.errors).sum();
        let cpu = |part: fn(&LevelRun) -> f64| median_of_known(level.iter().map(part));
        let (cpu_gateway, cpu_nodes) = (cpu(|r| r.cpu_per_token.0), cpu(|r| r.cpu_per_token.1));
        let sorted = |times: fn(&LevelRun) -> &Vec<Duration>| {
            let mut all: Vec<Duration> = level.iter().flat_map(times).copied().collect();
            all.sort();
            all
        };
        let (first, gaps) = (sorted(|r| &r.first_tokens), sorted(|r| &r.gaps));
        println!(
            "{users:>6} {rate:>10.1} {ratio:>7.2} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {tail_ratio:>7.2} \
             {errors:>7} {cpu_gateway:>9.2} {cpu_nodes:>9.2}",
            percentile(&first, 0.5),
            percentile(&first, 0.99),
            percentile(&gaps, 0.5),
            percentile(&gaps, 0.99),
        );
    }
    println!(
        "(tokens/s: all users' streamed tokens over the level's wall time, the median of {rounds} rounds \
         in which the levels alternate; × one: the median over rounds of the level's tokens/s, or of its \
         inter-token p99, ÷ the first level's in the same round; latencies over every round; times in ms; \
         CPU: ms of CPU time per streamed token, the gateway's and all nodes' together, the median of \
         the rounds)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_the_parent_and_cpu_ticks_whatever_the_command_name() {
        let line = "4242 (tokio (rt) worker) S 17 4242 17 0 -1 4194560 1200 0 0 0 350 25 0 0 20 0 9 \
                    0 1234 567890 321 18446744073709551615 1 1 0 0 0 0 0 4096 17663 0 0 0 17 1 0 0";
        assert_eq!(parent_and_cpu_ticks(line), Some((17, 375)));
        assert_eq!(parent_and_cpu_ticks("4242 (short) S 17"), None);
        assert_eq!(parent_and_cpu_ticks("no parenthesis at all"), None);
    }

    #[test]
    fn this_process_is_found_under_its_parent_and_its_cpu_time_grows_as_it_works() {
        let read = || {
            let stat = std::fs::read_to_string("/proc/self/stat").expect("Linux /proc");
            parent_and_cpu_ticks(&stat).expect("parsed")
        };
        let (parent, ticks) = read();
        assert_eq!(parent, std::os::unix::process::parent_id());
        // Busy work until a clock tick more is counted (or 10 s pass).
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut spin = 0u64;
        while read().1 == ticks && Instant::now() < deadline {
            for i in 0..100_000u64 {
                spin = std::hint::black_box(spin.wrapping_mul(31).wrapping_add(i));
            }
        }
        assert!(read().1 > ticks, "no CPU time counted after 10 s of busy work");
    }
}
