//! Peers speaking another version of the inference protocol than this build: raw libp2p
//! swarms whose request-response behaviour knows only the given protocol id and carries
//! bytes as they are.

use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, noise, tcp, yamux};

/// Request and response bytes, unparsed.
#[derive(Debug, Clone, Default)]
pub struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        io.read_to_end(&mut bytes).await?;
        Ok(bytes)
    }

    async fn read_response<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        self.read_request(protocol, io).await
    }

    async fn write_request<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        bytes: Vec<u8>,
    ) -> std::io::Result<()> {
        io.write_all(&bytes).await?;
        io.close().await
    }

    async fn write_response<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
        bytes: Vec<u8>,
    ) -> std::io::Result<()> {
        self.write_request(protocol, io, bytes).await
    }
}

type RawSwarm = Swarm<request_response::Behaviour<RawCodec>>;

fn raw_swarm(
    identity: Keypair,
    protocol: &'static str,
    support: ProtocolSupport,
) -> anyhow::Result<RawSwarm> {
    let protocols = [(StreamProtocol::new(protocol), support)];
    Ok(libp2p::SwarmBuilder::with_existing_identity(identity)
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                RawCodec,
                protocols,
                request_response::Config::default().with_request_timeout(Duration::from_secs(30)),
            )
        })?
        .build())
}

/// Sends `request` to `peer` at `addr` over `protocol` and waits for the answer's bytes, or
/// the failure libp2p reports.
pub async fn ask_over(
    protocol: &'static str,
    peer: PeerId,
    addr: Multiaddr,
    request: Vec<u8>,
) -> anyhow::Result<Result<Vec<u8>, String>> {
    ask_over_as(Keypair::generate_ed25519(), protocol, peer, addr, request).await
}

/// [`ask_over`] as the peer of `identity` (one the node admits, say).
pub async fn ask_over_as(
    identity: Keypair,
    protocol: &'static str,
    peer: PeerId,
    addr: Multiaddr,
    request: Vec<u8>,
) -> anyhow::Result<Result<Vec<u8>, String>> {
    let mut swarm = raw_swarm(identity, protocol, ProtocolSupport::Outbound)?;
    swarm.add_peer_address(peer, addr);
    swarm.behaviour_mut().send_request(&peer, request);
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { response, .. },
                ..
            }) => return Ok(Ok(response)),
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                return Ok(Err(error.to_string()));
            }
            _ => {}
        }
    }
}

/// A peer listening on loopback that serves only `protocol`, answering every request with
/// `answer` (none: it lets them time out): what a node of another version looks like to this
/// build. Runs on the caller's runtime until the returned task is aborted (or the runtime
/// ends).
pub async fn speaking_only(
    protocol: &'static str,
    answer: Option<Vec<u8>>,
) -> anyhow::Result<(PeerId, Multiaddr, tokio::task::JoinHandle<()>)> {
    let mut swarm = raw_swarm(Keypair::generate_ed25519(), protocol, ProtocolSupport::Inbound)?;
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address;
        }
    };
    let peer = *swarm.local_peer_id();
    let task = tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Request { channel, .. },
                ..
            }) = swarm.select_next_some().await
                && let Some(answer) = &answer
            {
                let _ = swarm.behaviour_mut().send_response(channel, answer.clone());
            }
        }
    });
    Ok((peer, addr, task))
}

/// Whether a peer whose identify `protocolVersion` is `swarm` is still connected to `peer` at
/// `addr` `after` the identify exchange: a node lets peers of other swarms go.
pub async fn stays_connected_as(
    swarm: &str,
    peer: PeerId,
    addr: Multiaddr,
    after: Duration,
) -> anyhow::Result<bool> {
    let mut client = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key| {
            libp2p::identify::Behaviour::new(libp2p::identify::Config::new(
                swarm.to_owned(),
                key.public(),
            ))
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    client.dial(addr.with(libp2p::multiaddr::Protocol::P2p(peer)))?;
    let deadline = tokio::time::Instant::now() + after;
    loop {
        tokio::select! {
            event = client.select_next_some() => {
                if let SwarmEvent::ConnectionClosed { peer_id, .. } = event
                    && peer_id == peer
                {
                    return Ok(false);
                }
            }
            _ = tokio::time::sleep_until(deadline) => return Ok(client.is_connected(&peer)),
        }
    }
}
