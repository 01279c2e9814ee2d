//! Who seeds a model's blocks: the nodes registered on-chain for the model (a node holds the
//! files of the span it registered), and the peers whose DHT provider records say they hold
//! a block's files (`files_key`) or serve it (`block_key`), found through those nodes.

use std::collections::{BTreeSet, HashMap};

use alloy::primitives::B256;
use libp2p::{Multiaddr, PeerId};

use super::fetch::Provider;
use crate::chain::{ChainError, Registry};
use crate::net::{Network, block_key, files_key};

/// Every node registered for `model` (whatever its blocks, active or not), dialled at its
/// registered addresses, with the span it registered.
pub async fn registered(
    registry: &Registry,
    net: &Network,
    model: B256,
) -> Result<Vec<(PeerId, std::ops::RangeInclusive<u32>)>, ChainError> {
    let mut nodes = Vec::new();
    for operator in registry.operators().await? {
        let node = registry.node(operator).await?;
        let Ok(peer) = PeerId::from_bytes(&node.peerId) else { continue };
        if node.modelId != model || peer == net.local_peer() {
            continue;
        }
        for addr in node.multiaddrs.iter().filter_map(|a| a.parse::<Multiaddr>().ok()) {
            let _ = net.dial(peer, addr).await;
        }
        nodes.push((peer, node.firstBlock..=node.lastBlock));
    }
    Ok(nodes)
}

/// Providers of `blocks` of `model`. Every node registered for the model is dialled (at its
/// registered addresses), whatever its blocks: each is a way into the DHT; those registered
/// on the wanted blocks are providers of them. Then the DHT's provider records of each
/// wanted block's files are read through those connections. A peer found both ways keeps
/// its registered span.
pub async fn find(
    registry: Option<&Registry>,
    net: &Network,
    model: B256,
    (first, last): (u16, u16),
) -> Result<Vec<Provider>, ChainError> {
    let mut found: HashMap<PeerId, BTreeSet<u16>> = HashMap::new();
    if let Some(registry) = registry {
        for (peer, registered) in registered(registry, net, model).await? {
            let wanted = (first..=last).filter(|block| registered.contains(&u32::from(*block)));
            found.entry(peer).or_default().extend(wanted);
        }
    }
    // Connections first (these and the caller's bootstrap peers): the DHT is asked through
    // them.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for block in first..=last {
        // Holders of the files, and servers of the block (who hold them too).
        for key in [files_key(&model.0, block), block_key(&model.0, block)] {
            let Ok(peers) = net.find_providers(key).await else { continue };
            for peer in peers.into_iter().filter(|p| *p != net.local_peer()) {
                found.entry(peer).or_default().insert(block);
            }
        }
    }
    let mut providers: Vec<Provider> = found
        .into_iter()
        .filter(|(_, blocks)| !blocks.is_empty())
        .map(|(peer, blocks)| Provider { peer, blocks: Some(blocks) })
        .collect();
    providers.sort_by_key(|p| p.peer);
    Ok(providers)
}
