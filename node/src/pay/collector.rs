//! The node's side of payment: every voucher is checked (signature, channel, chain id,
//! contract, amount) and stored durably before the node serves against it, work is metered
//! per channel, and a payer is served beyond its vouchers only up to a bounded credit.

use std::collections::HashMap;

use alloy::primitives::{Address, U256};
use libp2p::PeerId;
use tokio::sync::Mutex;

use super::ledger::{ChannelRecord, Ledger};
use super::meter::Tariff;
use super::store::StoreError;
use super::{SignedVoucher, VoucherError};
use crate::chain::{ChainError, Channels};
use crate::eip712::Domain;
use crate::net::codec::{Account, PaymentReason};

/// Why a node will not serve a step against a payment.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error("payment required: open a payment channel to node {operator} and attach a voucher")]
    NoChannel { operator: Address },
    #[error("payment channel {0} does not exist on this chain")]
    UnknownChannel(U256),
    #[error("payment channel {channel} pays {node}, not this node ({operator})")]
    NotOurChannel { channel: U256, node: Address, operator: Address },
    #[error(
        "payment channel {0} is closed or closing: top it up to cancel the close, or open another"
    )]
    Closing(U256),
    #[error("payment channel {0} is already in use by another peer")]
    OtherPeer(U256),
    #[error(
        "voucher for {offered} wei on channel {channel} is below the latest accepted {latest} wei (replayed or stale)"
    )]
    Stale { channel: U256, offered: U256, latest: U256 },
    #[error(
        "voucher for channel {channel} is not signed by its payer {payer} for chain {chain_id} and contract {contract} \
         (forged, or signed for another chain or contract): {reason}"
    )]
    BadSignature {
        channel: U256,
        payer: Address,
        chain_id: u64,
        contract: Address,
        reason: VoucherError,
    },
    #[error(
        "payment required: {unpaid} wei of usage on channel {channel} would be unpaid, over the credit of {credit} wei; \
         sign a newer voucher"
    )]
    CreditExceeded { channel: U256, unpaid: U256, credit: U256 },
    #[error(
        "payment required: channel {channel} holds {deposit} wei; this node serves on credit only channels holding \
         at least {minimum} wei and the {owed} wei of usage; attach a voucher covering each step, or top the \
         channel up"
    )]
    NoCredit { channel: U256, deposit: U256, owed: U256, minimum: U256 },
    #[error(
        "payment refused: this peer asked for too many channel lookups on the chain (unknown channels, or \
         vouchers above the known deposit); try again in {retry_after_secs} s"
    )]
    TooManyLookups { retry_after_secs: u64 },
    #[error("cannot read payment channel state: {0}")]
    Chain(#[from] ChainError),
    #[error("payment ledger: {0}")]
    Ledger(#[from] StoreError),
}

impl PaymentError {
    /// The `PaymentRequired` sub-code of a refusal the payer can fix; `None` for a failure
    /// of this node (it cannot read the chain or write its ledger).
    pub fn reason(&self) -> Option<PaymentReason> {
        Some(match self {
            PaymentError::NoChannel { .. } => PaymentReason::NoChannel,
            PaymentError::UnknownChannel(_) => PaymentReason::UnknownChannel,
            PaymentError::NotOurChannel { .. } => PaymentReason::OtherNode,
            PaymentError::Closing(_) => PaymentReason::Closing,
            PaymentError::OtherPeer(_) => PaymentReason::OtherPeer,
            PaymentError::Stale { .. } => PaymentReason::Stale,
            PaymentError::BadSignature { .. } => PaymentReason::BadSignature,
            PaymentError::CreditExceeded { .. } => PaymentReason::CreditExceeded,
            PaymentError::NoCredit { .. } => PaymentReason::NoCredit,
            PaymentError::TooManyLookups { .. } => PaymentReason::TooManyLookups,
            PaymentError::Chain(_) | PaymentError::Ledger(_) => return None,
        })
    }
}

/// A channel as the node tracks it.
#[derive(Debug, Clone)]
struct Channel {
    record: ChannelRecord,
    /// The metering last written to the ledger.
    flushed: u64,
    deposit: U256,
    /// Close requested or finalized: serve no more on it.
    closing: bool,
    /// The peer paying through it (vouchers travel only on authenticated, encrypted
    /// streams, so a second peer presenting one was handed it: refuse).
    peer: Option<PeerId>,
}

impl Channel {
    /// What the node can actually collect: the voucher, capped at the deposit.
    fn collectable(&self) -> U256 {
        self.record.vouched().min(self.deposit)
    }

    /// The terms the channel's metering is priced at (set when the channel is loaded).
    fn terms(&self) -> Tariff {
        self.record.terms.expect("a loaded channel has terms")
    }

    /// Prices what was metered so far at the channel's terms into `settled`, and meters on
    /// at `terms`: a new price applies from here on, never to what was served before.
    fn move_to(&mut self, terms: Tariff) {
        if self.terms() != terms {
            self.record.settled = self.record.owed(terms);
            self.record.metered = 0;
            self.record.terms = Some(terms);
        }
    }
}

/// Work admitted against a channel; give it back with [`Collector::refund`] if the step fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    pub channel: U256,
    pub units: u64,
    /// The terms they were metered at.
    pub terms: Tariff,
}

/// One channel's standing, for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelStanding {
    pub channel: U256,
    pub payer: Address,
    pub metered: u64,
    pub owed: U256,
    pub vouched: U256,
    pub redeemed: U256,
}

#[derive(Default)]
struct Book {
    channels: HashMap<U256, Channel>,
    /// The channel each peer last paid from.
    peers: HashMap<PeerId, U256>,
    /// Vouchers (channel → cumulative amount) the contract refused to redeem for good.
    refused: HashMap<U256, U256>,
}

/// A chain read made for an admission, outside the book's lock.
enum ChainView {
    /// A channel this run had not seen.
    Channel(Box<Channel>),
    /// The current deposit of a known channel.
    Deposit(U256),
}

/// Blocks on top of a redemption before a node stops re-checking it for a reorg.
pub const DEFAULT_CONFIRMATIONS: u64 = 12;

/// Checks vouchers, meters usage and keeps the ledger.
pub struct Collector {
    operator: Address,
    /// The node's registered terms, re-read from the chain while it runs.
    tariff: std::sync::RwLock<Tariff>,
    domain: Domain,
    credit: U256,
    /// Channels holding less get no credit: every step must be covered by a voucher.
    min_deposit: U256,
    /// Blocks on top of a redemption before it counts as final.
    confirmations: u64,
    channels: Channels,
    ledger: Ledger,
    book: Mutex<Book>,
    /// Chain reads each peer's vouchers may still cause.
    lookups: super::LookupBudget,
    /// When each channel's deposit was last re-read for a voucher above it.
    deposit_reads: std::sync::Mutex<HashMap<U256, std::time::Instant>>,
}

/// A channel's deposit is re-read for a voucher above it at most this often.
const DEPOSIT_REREAD: std::time::Duration = std::time::Duration::from_secs(1);

impl Collector {
    /// `credit`: how much usage (wei) a payer may run up beyond its latest voucher, on
    /// channels holding at least as much (a smaller deposit could not cover it).
    pub fn new(
        operator: Address,
        tariff: Tariff,
        domain: Domain,
        credit: U256,
        channels: Channels,
        ledger: Ledger,
    ) -> Self {
        let (min_deposit, confirmations) = (credit, DEFAULT_CONFIRMATIONS);
        Self {
            operator,
            tariff: std::sync::RwLock::new(tariff),
            domain,
            credit,
            min_deposit,
            confirmations,
            channels,
            ledger,
            book: Mutex::default(),
            lookups: super::LookupBudget::default(),
            deposit_reads: std::sync::Mutex::default(),
        }
    }

    /// Counts a redemption final once `blocks` blocks are on top of it (at least 1: mined).
    pub fn with_confirmations(mut self, blocks: u64) -> Self {
        self.confirmations = blocks.max(1);
        self
    }

    /// Gives credit only on channels holding at least `deposit` (default: the credit).
    pub fn with_min_deposit(mut self, deposit: U256) -> Self {
        self.min_deposit = deposit;
        self
    }

    pub fn operator(&self) -> Address {
        self.operator
    }

    /// The node's registered terms now.
    pub fn tariff(&self) -> Tariff {
        *self.tariff.read().expect("tariff")
    }

    /// The node's registered terms changed on-chain: each channel moves to them with the
    /// next voucher its payer sends (`payments.md`, "Price changes"). Returns whether they
    /// changed.
    pub fn set_tariff(&self, tariff: Tariff) -> bool {
        let mut current = self.tariff.write().expect("tariff");
        let changed = *current != tariff;
        *current = tariff;
        changed
    }

    /// `peer`'s account of `channel` (else of the last channel it paid from), as sent back
    /// with each answer; `None` for a channel another peer pays through, or none.
    pub async fn account(&self, peer: PeerId, channel: Option<U256>) -> Option<Account> {
        let book = self.book.lock().await;
        let id = channel.or_else(|| book.peers.get(&peer).copied())?;
        let channel = book.channels.get(&id).filter(|c| c.peer == Some(peer))?;
        let terms = channel.terms();
        Some(Account {
            channel_id: id,
            settled: channel.record.settled,
            metered: channel.record.metered,
            price_per_token: terms.price_per_token,
            span_blocks: terms.span_blocks,
            voucher: channel.record.vouched(),
            // A channel holding less than the minimum is served on vouchers alone.
            credit: if channel.deposit < self.min_deposit { U256::ZERO } else { self.credit },
        })
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub(super) fn channels(&self) -> &Channels {
        &self.channels
    }

    /// Admits a step of `units` block-tokens from `peer`, taking `payment` into account
    /// first. A new voucher is verified and written to the ledger before this returns.
    pub async fn admit(
        &self,
        peer: PeerId,
        payment: Option<&SignedVoucher>,
        units: u64,
    ) -> Result<Charge, PaymentError> {
        // What the chain says is read before the book is locked: one slow RPC must not stall
        // every other peer's admission.
        let fresh = match payment {
            Some(voucher) => self.chain_view(peer, voucher).await?,
            None => None,
        };
        let mut book = self.book.lock().await;
        let id = match payment {
            Some(voucher) => {
                Self::learn(&mut book, voucher.voucher.channel_id, fresh);
                self.accept(&mut book, peer, voucher)?;
                voucher.voucher.channel_id
            }
            None => {
                *book.peers.get(&peer).ok_or(PaymentError::NoChannel { operator: self.operator })?
            }
        };
        let channel = book.channels.get_mut(&id).expect("accepted channels are in the book");
        if channel.closing {
            return Err(PaymentError::Closing(id));
        }
        let metered = channel.record.metered + units;
        let owed = channel.record.settled + channel.terms().amount(metered);
        let unpaid = owed.saturating_sub(channel.collectable());
        // Credit is only worth giving where a voucher could still collect it: on a channel
        // holding the minimum and all the usage.
        if !unpaid.is_zero() && (channel.deposit < self.min_deposit || owed > channel.deposit) {
            let (deposit, minimum) = (channel.deposit, self.min_deposit);
            return Err(PaymentError::NoCredit { channel: id, deposit, owed, minimum });
        }
        if unpaid > self.credit {
            return Err(PaymentError::CreditExceeded { channel: id, unpaid, credit: self.credit });
        }
        channel.record.metered = metered;
        Ok(Charge { channel: id, units, terms: channel.terms() })
    }

    /// Takes back the units of a step that failed: from the metering, or, when the channel
    /// moved to new terms meanwhile (they were priced into `settled`), their price from there.
    pub async fn refund(&self, charge: Charge) {
        if let Some(channel) = self.book.lock().await.channels.get_mut(&charge.channel) {
            let record = &mut channel.record;
            if record.terms == Some(charge.terms) {
                record.metered = record.metered.saturating_sub(charge.units);
            } else {
                record.settled = record.settled.saturating_sub(charge.terms.amount(charge.units));
            }
        }
    }

    /// What the chain must say before `voucher` can be judged, read without the book locked:
    /// the whole channel when this run has not seen it, its deposit when the voucher exceeds
    /// the deposit known (perhaps topped up since), nothing otherwise.
    /// What a read may cost whom. A peer with no lookups left is refused before any read;
    /// a read is charged to it only when it was wasted: the channel does not exist, pays
    /// another node or is closing (an honest gateway's many sessions meeting a restarted node
    /// all look up one real channel, and are not charged). A re-read of a known channel's
    /// deposit needs a voucher its payer signed, and happens at most once a second per
    /// channel; from a peer other than the channel's own, it is charged too.
    async fn chain_view(
        &self,
        peer: PeerId,
        voucher: &SignedVoucher,
    ) -> Result<Option<ChainView>, PaymentError> {
        let id = voucher.voucher.channel_id;
        let known = {
            let book = self.book.lock().await;
            book.channels.get(&id).map(|c| (c.deposit, c.peer, c.record.payer))
        };
        let offered = voucher.voucher.cumulative_amount;
        let Some((deposit, bound, payer)) = known else {
            self.lookup_allowed(peer)?;
            let loaded = self.load(id).await;
            if matches!(
                loaded,
                Err(PaymentError::UnknownChannel(_)
                    | PaymentError::NotOurChannel { .. }
                    | PaymentError::Closing(_))
            ) {
                self.lookups.charge(peer);
            }
            return Ok(Some(ChainView::Channel(Box::new(loaded?))));
        };
        if offered <= deposit || !self.deposit_read_due(id) {
            return Ok(None);
        }
        voucher.verify(&self.domain, payer).map_err(|reason| PaymentError::BadSignature {
            channel: id,
            payer,
            chain_id: self.domain.chain_id,
            contract: self.domain.verifying_contract,
            reason,
        })?;
        if bound != Some(peer) {
            self.lookup_allowed(peer)?;
            self.lookups.charge(peer);
        }
        Ok(Some(ChainView::Deposit(U256::from(self.channels.channel(id).await?.deposit))))
    }

    /// Refuses `peer` when it has no chain lookups left.
    // The admission paths' own error type, as `accept`'s.
    #[allow(clippy::result_large_err)]
    fn lookup_allowed(&self, peer: PeerId) -> Result<(), PaymentError> {
        self.lookups
            .check(peer)
            .map_err(|wait| PaymentError::TooManyLookups { retry_after_secs: wait.as_secs() + 1 })
    }

    /// Whether channel `id`'s deposit may be read again now (at most once a second), and if
    /// so, notes the read.
    fn deposit_read_due(&self, id: U256) -> bool {
        let now = std::time::Instant::now();
        let mut reads = self.deposit_reads.lock().expect("deposit reads");
        if reads.get(&id).is_some_and(|at| now.duration_since(*at) < DEPOSIT_REREAD) {
            return false;
        }
        reads.retain(|_, at| now.duration_since(*at) < DEPOSIT_REREAD);
        reads.insert(id, now);
        true
    }

    fn learn(book: &mut Book, id: U256, fresh: Option<ChainView>) {
        match fresh {
            Some(ChainView::Channel(channel)) => {
                book.channels.entry(id).or_insert(*channel);
            }
            Some(ChainView::Deposit(deposit)) => {
                if let Some(channel) = book.channels.get_mut(&id) {
                    channel.deposit = channel.deposit.max(deposit);
                }
            }
            None => {}
        }
    }

    // The same error type as every admission path returns to the peer; boxing it for this one
    // synchronous helper would only move the allocation.
    #[allow(clippy::result_large_err)]
    fn accept(
        &self,
        book: &mut Book,
        peer: PeerId,
        voucher: &SignedVoucher,
    ) -> Result<(), PaymentError> {
        let id = voucher.voucher.channel_id;
        let channel = book.channels.get_mut(&id).expect("learned before acceptance");
        if channel.peer.is_some_and(|p| p != peer) {
            return Err(PaymentError::OtherPeer(id));
        }
        let offered = voucher.voucher.cumulative_amount;
        let latest = channel.record.vouched().max(channel.record.redeemed);
        let same = channel.record.voucher.as_ref() == Some(voucher);
        if offered < latest || (offered == latest && !same && !latest.is_zero()) {
            // The concurrent sessions of the peer already paying on this channel sign vouchers
            // that may arrive out of order: an older one (not below what the chain already
            // paid) adds nothing and takes nothing, so the step is judged on the credit as if
            // it carried none.
            if offered < latest && offered >= channel.record.redeemed && channel.peer == Some(peer)
            {
                return Ok(());
            }
            return Err(PaymentError::Stale { channel: id, offered, latest });
        }
        if !same {
            voucher.verify(&self.domain, channel.record.payer).map_err(|reason| {
                PaymentError::BadSignature {
                    channel: id,
                    payer: channel.record.payer,
                    chain_id: self.domain.chain_id,
                    contract: self.domain.verifying_contract,
                    reason,
                }
            })?;
            // A voucher signed after a change of terms moves the channel to them.
            channel.move_to(self.tariff());
            channel.record.voucher = Some(voucher.clone());
            self.ledger.put(id, &channel.record)?;
            channel.flushed = channel.record.metered;
        }
        channel.peer = Some(peer);
        book.peers.insert(peer, id);
        Ok(())
    }

    /// Reads a channel from the chain (and the ledger, for what was received before a
    /// restart) and checks that it pays this node and is open.
    async fn load(&self, id: U256) -> Result<Channel, PaymentError> {
        let state = self.channels.channel(id).await?;
        if state.payer.is_zero() {
            return Err(PaymentError::UnknownChannel(id));
        }
        if state.node != self.operator {
            return Err(PaymentError::NotOurChannel {
                channel: id,
                node: state.node,
                operator: self.operator,
            });
        }
        let mut record = self.ledger.get(id)?.unwrap_or(ChannelRecord {
            payer: state.payer,
            voucher: None,
            metered: 0,
            redeemed: U256::from(state.paid),
            settled: U256::ZERO,
            terms: None,
        });
        record.terms.get_or_insert(self.tariff());
        // Finalizing requires a close request first, so this covers closed channels too.
        if state.closesAt != 0 {
            return Err(PaymentError::Closing(id));
        }
        let flushed = record.metered;
        Ok(Channel {
            record,
            flushed,
            deposit: U256::from(state.deposit),
            closing: false,
            peer: None,
        })
    }

    /// Every channel's standing: the ledger's, overlaid with this run's metering. The ledger
    /// is read before the book's lock is taken: a scan of every channel must not
    /// hold up the steps being paid meanwhile (each needs the lock to be admitted).
    pub async fn standings(&self) -> Result<Vec<ChannelStanding>, PaymentError> {
        let mut records = self.ledger.all()?;
        let book = self.book.lock().await;
        for (id, record) in &mut records {
            if let Some(live) = book.channels.get(id) {
                *record = live.record.clone();
            }
        }
        // A channel first paid after the scan is in the book only.
        for (id, live) in &book.channels {
            if !records.iter().any(|(known, _)| known == id) {
                records.push((*id, live.record.clone()));
            }
        }
        Ok(records.into_iter().map(|(id, r)| self.standing(id, &r)).collect())
    }

    fn standing(&self, channel: U256, record: &ChannelRecord) -> ChannelStanding {
        ChannelStanding {
            channel,
            payer: record.payer,
            metered: record.metered,
            owed: record.owed(self.tariff()),
            vouched: record.vouched(),
            redeemed: record.redeemed,
        }
    }

    /// Writes the metering that changed since the last flush to the ledger, in one durable
    /// commit; returns how many channels it wrote. The node flushes every second and on
    /// shutdown, so a `kill -9` loses at most a second of metering. (Under the book's lock,
    /// as every ledger write is: a flush never writes an older record over a newer voucher.)
    pub async fn flush(&self) -> Result<usize, PaymentError> {
        let mut book = self.book.lock().await;
        let changed: Vec<(U256, &mut Channel)> = book
            .channels
            .iter_mut()
            .filter(|(_, c)| c.record.metered != c.flushed)
            .map(|(id, c)| (*id, c))
            .collect();
        if changed.is_empty() {
            return Ok(0);
        }
        self.ledger.put_all(changed.iter().map(|(id, c)| (*id, &c.record)))?;
        let written = changed.len();
        for (_, channel) in changed {
            channel.flushed = channel.record.metered;
        }
        Ok(written)
    }

    /// Whether a payer has used the channel since this node started.
    pub(super) async fn is_live(&self, id: U256) -> bool {
        self.book.lock().await.channels.contains_key(&id)
    }

    /// Remembers, for this run, that the contract will not redeem the voucher for `amount`
    /// on channel `id`: settlement leaves it out until a newer voucher arrives.
    pub(super) async fn refuse(&self, id: U256, amount: U256) {
        self.book.lock().await.refused.insert(id, amount);
    }

    /// Channels redeemed in a block not yet `confirmations` deep at block `head`: re-read
    /// every round, so a redemption a reorg dropped is seen and sent again. The ledger keeps
    /// them, so a restart does not forget them.
    pub(super) fn unconfirmed(
        &self,
        head: u64,
    ) -> Result<std::collections::HashSet<U256>, StoreError> {
        Ok(self.ledger.unconfirmed(head, self.confirmations)?.into_keys().collect())
    }

    /// Remembers channels redeemed in `block`, to re-check until the block is final.
    pub(super) fn redeemed_in(
        &self,
        channels: impl IntoIterator<Item = U256>,
        block: u64,
    ) -> Result<(), StoreError> {
        self.ledger.redeemed_in(channels, block)
    }

    /// Whether the voucher for `amount` on channel `id` was refused by the contract.
    pub(super) async fn is_refused(&self, id: U256, amount: U256) -> bool {
        self.book.lock().await.refused.get(&id) == Some(&amount)
    }

    /// Records the chain's view of a channel: paid so far, deposit, close state.
    pub(super) async fn observe(
        &self,
        id: U256,
        paid: U256,
        deposit: U256,
        closing: bool,
    ) -> Result<(), PaymentError> {
        let mut book = self.book.lock().await;
        let record = match book.channels.get_mut(&id) {
            Some(channel) => {
                channel.deposit = deposit;
                channel.closing = closing;
                if channel.record.redeemed == paid {
                    return Ok(());
                }
                log_reorg(id, channel.record.redeemed, paid);
                channel.record.redeemed = paid;
                channel.flushed = channel.record.metered;
                channel.record.clone()
            }
            None => match self.ledger.get(id)? {
                Some(record) if record.redeemed != paid => {
                    log_reorg(id, record.redeemed, paid);
                    ChannelRecord { redeemed: paid, ..record }
                }
                _ => return Ok(()),
            },
        };
        self.ledger.put(id, &record)?;
        Ok(())
    }
}

/// Says so when the chain has paid less than a redemption booked: a reorg dropped it.
fn log_reorg(id: U256, booked: U256, paid: U256) {
    if paid < booked {
        tracing::warn!(
            channel = %id,
            "the chain paid {paid} wei, not the {booked} wei a redemption booked (a reorg \
             dropped it): redeeming again"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_moves_to_new_terms_pricing_what_was_served_at_the_old() {
        let old = Tariff { price_per_token: U256::from(10), span_blocks: 3 };
        let new = Tariff { price_per_token: U256::from(7), span_blocks: 1 };
        let mut channel = Channel {
            record: ChannelRecord {
                payer: Address::ZERO,
                voucher: None,
                metered: 5,
                redeemed: U256::ZERO,
                settled: U256::from(2),
                terms: Some(old),
            },
            flushed: 0,
            deposit: U256::from(1000),
            closing: false,
            peer: None,
        };
        assert_eq!(channel.record.owed(new), U256::from(2 + 16)); // ⌊10·5/3⌋ at its own terms
        channel.move_to(new);
        assert_eq!((channel.record.settled, channel.record.metered), (U256::from(18), 0));
        channel.record.metered = 3;
        assert_eq!(channel.record.owed(new), U256::from(18 + 21));
    }
}
