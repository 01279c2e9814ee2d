//! `infergrid bench swarm`: what the network adds to inference.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use infergrid::eip712::Eip712Signer;
use infergrid::engine::{Activation, BlockRunner, CacheLimits, Device, Pipeline, Runtime};
use infergrid::gateway::{RemoteModel, RemoteModelConfig};
use infergrid::generate::TextModel;
use infergrid::model::ModelManifest;
use infergrid::net::codec::{InferRequest, InferResponse, Payload, StepKind};
use infergrid::net::{Inbound, NetConfig, Network};
use infergrid::route::Candidate;
use infergrid::serve::{Admission, Attester, Batcher, BlockServer};
use infergrid::validate::{ChainClock, EpochClock, validation_domain};
use libp2p::{Multiaddr, PeerId, identity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Args)]
pub struct SwarmBench {
    /// A 3-block model (default: the engine benchmark's, imported by `bench engine`).
    #[arg(long, default_value = "target/bench-models/llama-126mb-3blocks")]
    model: std::path::PathBuf,
    /// Hidden size of the decode-size activation for the hop latency test.
    #[arg(long, default_value_t = 4096)]
    hidden: usize,
    /// Round trips timed per transport.
    #[arg(long, default_value_t = 2000)]
    round_trips: usize,
    /// Decode steps timed per pipeline.
    #[arg(long, default_value_t = 64)]
    decode: usize,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Instead: users streaming at once through a devnet's gateway (one node process per
    /// block of --model, HTTP API), per level, e.g. `1,8,32,64`: aggregate tokens/s, time to
    /// first token and inter-token latency.
    #[arg(long, value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Tokens each user streams, with --concurrency.
    #[arg(long, default_value_t = 64)]
    stream_tokens: usize,
    /// Times every --concurrency level is run, the levels alternating; each level reports its
    /// median tokens/s, and the medians of its rounds' ratios to the first level's.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Where --concurrency and --nat keep their devnets' files.
    #[arg(long, default_value = "target/bench-load")]
    work: std::path::PathBuf,
    /// Instead: the swarm across home routers, in network namespaces (root only): decode
    /// tokens/s and per-hop latency with every node public, with home nodes reached through
    /// hole-punched direct connections, and through the relay (--decode tokens timed).
    #[arg(long, conflicts_with = "concurrency")]
    nat: bool,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn spawn_net(
    port: Option<u16>,
) -> anyhow::Result<(Network, tokio::sync::mpsc::Receiver<Inbound>, Option<Multiaddr>)> {
    let keypair = identity::Keypair::generate_ed25519();
    let peer = keypair.public().to_peer_id();
    let listen: Vec<Multiaddr> =
        port.map(|p| format!("/ip4/127.0.0.1/tcp/{p}").parse()).transpose()?.into_iter().collect();
    let addr = port.map(|p| format!("/ip4/127.0.0.1/tcp/{p}/p2p/{peer}").parse()).transpose()?;
    let (net, inbound) = Network::spawn(NetConfig {
        keypair,
        listen,
        bootstrap: vec![],
        request_timeout: Duration::from_secs(30),
        nat: Default::default(),
    })?;
    Ok((net, inbound, addr))
}

pub async fn run(args: SwarmBench) -> anyhow::Result<()> {
    if args.nat {
        let (model, decode, work) = (args.model.clone(), args.decode, args.work.join("nat"));
        return tokio::task::spawn_blocking(move || super::bench_nat::run(&model, decode, &work))
            .await?;
    }
    if !args.concurrency.is_empty() {
        let blocks = ModelManifest::load(&args.model)?.blocks.len();
        std::fs::create_dir_all(&args.work)?;
        let (model, levels, work) =
            (args.model.clone(), args.concurrency.clone(), args.work.clone());
        return tokio::task::spawn_blocking(move || {
            super::bench_load::run(&model, blocks, &levels, args.stream_tokens, args.rounds, &work)
        })
        .await?;
    }
    let (libp2p_us, tcp_us) = hop_latency(&args).await?;
    println!("swarm benchmark");
    println!(
        "  hop round trip, [1, 1, {}] f32 activation ({} KiB), median of {}: libp2p request-response {:.0} µs | raw TCP echo {:.0} µs | added per hop {:.0} µs",
        args.hidden,
        args.hidden * 4 / 1024,
        args.round_trips,
        libp2p_us,
        tcp_us,
        libp2p_us - tcp_us
    );
    if args.model.join("manifest.json").is_file() {
        let (remote, local) = pipeline_speed(&args).await?;
        println!(
            "  decode: 3 nodes over libp2p (loopback, one swarm each) {remote:.1} tok/s | in-process split {local:.1} tok/s | ratio {:.2}x",
            remote / local
        );
        let api = processes_speed(&args).await?;
        println!(
            "  decode: devnet with 3 node processes + gateway, through the HTTP API {api:.1} tok/s | in-process split {local:.1} tok/s | ratio {:.2}x",
            api / local
        );
    } else {
        println!(
            "  (no model at {}: run `infergrid bench engine` first for the pipeline figure)",
            args.model.display()
        );
    }
    Ok(())
}

async fn hop_latency(args: &SwarmBench) -> anyhow::Result<(f64, f64)> {
    let activation =
        Activation::new(vec![1, 1, args.hidden], (0..args.hidden).map(|i| i as f32).collect())?;

    // libp2p: a peer that answers every request with its payload.
    let port = free_port()?;
    let (_server, mut inbound, addr) = spawn_net(Some(port))?;
    tokio::spawn(async move {
        while let Some(message) = inbound.recv().await {
            if let Inbound::Request { request: Ok(request), reply, .. } = message {
                let _ = reply.send(InferResponse::Ok {
                    output: request.payload,
                    signature: [0; 65],
                    account: None,
                });
            }
        }
    });
    let (client, _rx, _) = spawn_net(None)?;
    let addr = addr.context("listen address")?;
    let server_peer: PeerId = addr
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::P2p(peer) => Some(peer),
            _ => None,
        })
        .context("peer id")?;
    client.dial(server_peer, addr).await?;
    let request = InferRequest {
        model_id: [0; 32],
        first_block: 1,
        last_block: 1,
        session: 1,
        position: 7,
        kind: StepKind::Decode,
        payment: None,
        payload: Payload::Tensor(activation.clone()),
    };
    let mut libp2p = Vec::with_capacity(args.round_trips);
    for i in 0..args.round_trips + 100 {
        let started = Instant::now();
        client.request(server_peer, request.clone()).await?;
        if i >= 100 {
            libp2p.push(started.elapsed());
        }
    }

    // Raw TCP: a length-prefixed echo of the same encoded bytes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let tcp_addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Ok((mut socket, _)) = listener.accept().await {
            let _ = socket.set_nodelay(true);
            let mut buf = Vec::new();
            loop {
                let Ok(len) = socket.read_u32().await else { return };
                buf.resize(len as usize, 0);
                if socket.read_exact(&mut buf).await.is_err()
                    || socket.write_u32(len).await.is_err()
                    || socket.write_all(&buf).await.is_err()
                {
                    return;
                }
            }
        }
    });
    let mut socket = tokio::net::TcpStream::connect(tcp_addr).await?;
    socket.set_nodelay(true)?;
    let bytes = request.encode();
    let mut back = vec![0u8; bytes.len()];
    let mut tcp = Vec::with_capacity(args.round_trips);
    for i in 0..args.round_trips + 100 {
        let started = Instant::now();
        socket.write_u32(bytes.len() as u32).await?;
        socket.write_all(&bytes).await?;
        let len = socket.read_u32().await? as usize;
        back.resize(len, 0);
        socket.read_exact(&mut back).await?;
        if i >= 100 {
            tcp.push(started.elapsed());
        }
    }
    Ok((median_us(&mut libp2p), median_us(&mut tcp)))
}

fn median_us(samples: &mut [Duration]) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e6
}

async fn pipeline_speed(args: &SwarmBench) -> anyhow::Result<(f64, f64)> {
    let manifest = ModelManifest::load(&args.model)?;
    anyhow::ensure!(manifest.blocks.len() == 3, "the swarm benchmark wants a 3-block model");
    let runtime = Runtime::new(Device::Cpu, Some(args.threads))?;
    let model_id = manifest.id().0;
    let (client, _rx, _) = spawn_net(None)?;
    let mut candidates = Vec::new();
    for index in 0..3usize {
        let port = free_port()?;
        let (net, inbound, addr) = spawn_net(Some(port))?;
        let blocks =
            vec![Arc::new(BlockRunner::load(&manifest, index, &runtime, CacheLimits::default())?)];
        let metrics = infergrid::telemetry::NodeMetrics::new(None);
        let server = Arc::new(BlockServer {
            model_id,
            first_block: index as u16,
            batcher: Batcher::start(blocks.clone(), 32, metrics.clone()),
            blocks,
            attester: Attester {
                signer: Eip712Signer::from_bytes(&alloy::primitives::B256::repeat_byte(
                    index as u8 + 1,
                ))?,
                domain: validation_domain(31337, alloy::primitives::Address::ZERO),
                // No chain here: any epochs; what is timed is the signing.
                clock: EpochClock { genesis: 0, duration: 3600 },
                time: ChainClock::default(),
            },
            admission: Admission::Peers(HashSet::from([client.local_peer()])),
            collector: None,
            decode_ms: Default::default(),
            load: Default::default(),
            cheat: None,
            metrics,
            answer_delay: Default::default(),
            registered: Default::default(),
        });
        tokio::spawn(server.run(inbound));
        client.dial(net.local_peer(), addr.context("addr")?).await?;
        candidates.push(Candidate {
            peer: net.local_peer(),
            first_block: index as u16,
            last_block: index as u16,
            rtt_ms: Some(0.1),
            compute_ms: Some(1.0),
            active_sessions: 0,
            free_cache_tokens: None,
            reputation_bps: None,
            price_wei_per_token: None,
            relayed: false,
        });
    }
    let config =
        RemoteModelConfig { eos_ids: vec![], ..RemoteModelConfig::for_model(&manifest, 0) };
    let mut remote = RemoteModel::new(client, config, Arc::new(Mutex::new(candidates)));
    let local = Pipeline::load(&args.model, &runtime, CacheLimits::default())?;
    let decode = args.decode;
    tokio::task::spawn_blocking(move || -> anyhow::Result<(f64, f64)> {
        let remote_speed = decode_speed(&mut remote, decode)?;
        let local_speed = decode_speed(&mut &local, decode)?;
        Ok((remote_speed, local_speed))
    })
    .await?
}

fn decode_speed(model: &mut dyn TextModel, steps: usize) -> anyhow::Result<f64> {
    let prompt: Vec<i64> = (0..16).map(|i| 7 + 31 * i).collect();
    let mut best = 0f64;
    for session in 0..2u64 {
        let logits = model.next_logits(session + 100, 0, &prompt)?;
        let mut token = i64::from(infergrid::generate::argmax(&logits));
        let started = Instant::now();
        for step in 0..steps {
            token = i64::from(infergrid::generate::argmax(&model.next_logits(
                session + 100,
                prompt.len() + step,
                &[token],
            )?));
        }
        best = best.max(steps as f64 / started.elapsed().as_secs_f64());
        model.close(session + 100);
    }
    Ok(best)
}

/// Decode speed through `infergrid devnet --nodes 3` (3 node processes and a gateway), timed
/// as the difference between a 1-token and a (1 + decode)-token greedy completion.
async fn processes_speed(args: &SwarmBench) -> anyhow::Result<f64> {
    let dir = std::env::temp_dir().join(format!("infergrid-bench-{}", std::process::id()));
    let ready = dir.join("ready.json");
    let mut devnet = tokio::process::Command::new(std::env::current_exe()?)
        .args(["devnet", "--port", "0", "--api", "127.0.0.1:0", "--nodes", "3", "--model"])
        .arg(&args.model)
        .arg("--out")
        .arg(dir.join("devnet"))
        .arg("--ready-file")
        .arg(&ready)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let started = Instant::now();
    while !ready.is_file() {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(120), "devnet did not come up");
        anyhow::ensure!(devnet.try_wait()?.is_none(), "devnet exited");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ready)?)?;
    let api = manifest["api_url"]
        .as_str()
        .context("api_url")?
        .trim_start_matches("http://")
        .trim_end_matches("/v1")
        .to_owned();
    let name = ModelManifest::load(&args.model)?.name;
    let complete = |tokens: usize| {
        let body = serde_json::json!({"model": name, "prompt": "once upon a time", "max_tokens": tokens, "temperature": 0});
        let api = api.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Duration> {
            let started = Instant::now();
            super::bench_http::post(&api, "/v1/completions", &body)?;
            Ok(started.elapsed())
        })
    };
    complete(8).await??; // warm-up
    let mut best = 0f64;
    for _ in 0..2 {
        let one = complete(1).await??;
        let many = complete(1 + args.decode).await??;
        best = best.max(args.decode as f64 / (many.saturating_sub(one)).as_secs_f64());
    }
    if let Some(pid) = devnet.id() {
        // SAFETY: kill(2) on our own child: Ctrl-C stops its nodes, gateway and anvil.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), devnet.wait()).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(best)
}
