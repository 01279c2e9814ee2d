//! The gateway's side of payment: one channel per node it routes through, opened (or
//! reused, and topped up) from a budget, and cumulative vouchers signed for exactly the
//! block-tokens each node served (`protocol-spec/payments.md`, "Voucher flow").

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::Path;

use alloy::primitives::{Address, B256, U256};
use redb::{Database, ReadableDatabase, TableDefinition};
use tokio::sync::Mutex;

use super::meter::Tariff;
use super::store::{self, StoreError};
use super::{SignedVoucher, Voucher};
use crate::chain::{ChainError, Channels, Token};
use crate::eip712::{Domain, Eip712Signer};

/// node operator (20 bytes) → channel id 32 ‖ signed amount 32 ‖ metered u64 LE.
const TABS: TableDefinition<&[u8; 20], &[u8]> = TableDefinition::new("tabs");

/// Who a node is on-chain and what it charges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeTerms {
    pub operator: Address,
    pub tariff: Tariff,
}

/// How a gateway spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalletConfig {
    /// Deposit of a new channel, and the amount of each top-up.
    pub deposit: U256,
    /// Most the gateway deposits across all channels in this run.
    pub budget: U256,
    /// Sign a new voucher for a node once this many tokens' worth (at its price) is unpaid.
    pub sign_every_tokens: u64,
}

/// What the gateway owes one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tab {
    pub operator: Address,
    pub channel: U256,
    pub deposit: U256,
    /// Block-tokens the node served.
    pub metered: u64,
    /// Their price.
    pub owed: U256,
    /// The latest voucher signed.
    pub signed: U256,
}

/// Why the gateway could not pay.
#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    #[error(
        "payment budget exhausted: {deposited} wei deposited, a further {needed} wei would exceed the budget of {budget} wei"
    )]
    Budget { deposited: U256, needed: U256, budget: U256 },
    #[error("payment channel transaction failed: {0}")]
    Chain(#[from] ChainError),
    #[error("gateway wallet: {0}")]
    Store(#[from] StoreError),
}

/// A channel to one node, as this run knows it.
#[derive(Debug)]
struct Open {
    channel: U256,
    deposit: U256,
    /// The node's price, as of the latest step.
    tariff: Tariff,
    metered: u64,
    signed: U256,
    /// Whether the node has had a voucher from this run (it binds the channel to this peer).
    introduced: bool,
}

#[derive(Default)]
struct Tabs {
    open: HashMap<Address, Open>,
    /// Deposited in this run, counted against the budget.
    deposited: U256,
}

/// A payer's channels and vouchers.
pub struct Wallet {
    payer: Eip712Signer,
    domain: Domain,
    token: Token,
    channels: Channels,
    config: WalletConfig,
    db: Database,
    tabs: Mutex<Tabs>,
}

impl Wallet {
    /// `token` and `channels` sign as the payer; `path` keeps what was signed across restarts
    /// (a voucher below one already sent would be refused as stale), for the deployment
    /// `fingerprint` ([`crate::chain::deployment_fingerprint`]).
    pub fn open(
        payer: Eip712Signer,
        domain: Domain,
        token: Token,
        channels: Channels,
        config: WalletConfig,
        path: &Path,
        fingerprint: B256,
    ) -> Result<Self, WalletError> {
        let db = store::open(path, fingerprint, TABS)?;
        Ok(Self { payer, domain, token, channels, config, db, tabs: Mutex::default() })
    }

    /// The voucher to attach to a step of `units` block-tokens for `node`, if one is due:
    /// on the first step to the node in this run, when the unpaid amount for the answers
    /// received reaches the signing threshold, when `settle` (the end of a request), or when
    /// `force`d (the node asked for payment, or the step is a whole request). A forced
    /// voucher, and one for a step worth the threshold on its own, also covers this step.
    /// Opens or tops up the node's channel first when needed.
    pub async fn voucher(
        &self,
        node: NodeTerms,
        units: u64,
        settle: bool,
        force: bool,
    ) -> Result<Option<SignedVoucher>, WalletError> {
        let mut tabs = self.tabs.lock().await;
        let Tabs { open, deposited } = &mut *tabs;
        let tab = match open.entry(node.operator) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(slot) => slot.insert(self.resume_or_open(node, deposited).await?),
        };
        tab.tariff = node.tariff;
        // Vouchers pay for answers already received and checked. The step being sent is paid
        // ahead when `force`d (the node refused it for lack of payment, or it is a whole
        // request with no later step to settle it) or when it alone is worth the signing
        // threshold (a long prefill, a replay), which a node's credit may not cover.
        let threshold = node.tariff.price_per_token * U256::from(self.config.sign_every_tokens);
        let ahead = force || node.tariff.amount(units) >= threshold;
        let owed = node.tariff.amount(tab.metered + if ahead { units } else { 0 });
        let unpaid = owed.saturating_sub(tab.signed);
        let due =
            force || !tab.introduced || (!unpaid.is_zero() && (settle || unpaid >= threshold));
        if !due {
            return Ok(None);
        }
        let amount = owed.max(tab.signed);
        while tab.deposit < amount + threshold {
            self.spend(deposited, self.config.deposit)?;
            self.token.approve(self.channels.address(), self.config.deposit).await?;
            self.channels.top_up(tab.channel, self.config.deposit).await?;
            tab.deposit += self.config.deposit;
        }
        tab.signed = amount;
        tab.introduced = true;
        self.save(node.operator, tab)?;
        let voucher = Voucher { channel_id: tab.channel, cumulative_amount: amount };
        Ok(Some(voucher.sign(&self.domain, &self.payer)))
    }

    /// Counts `units` block-tokens that `operator`'s node served.
    pub async fn record(&self, operator: Address, units: u64) {
        if let Some(tab) = self.tabs.lock().await.open.get_mut(&operator) {
            tab.metered += units;
        }
    }

    /// Every node's tab in this run.
    pub async fn tabs(&self) -> Vec<Tab> {
        let tabs = self.tabs.lock().await;
        let mut out: Vec<Tab> = tabs
            .open
            .iter()
            .map(|(operator, t)| Tab {
                operator: *operator,
                channel: t.channel,
                deposit: t.deposit,
                metered: t.metered,
                owed: t.tariff.amount(t.metered),
                signed: t.signed,
            })
            .collect();
        out.sort_by_key(|t| t.channel);
        out
    }

    /// The stored channel to `node` if it is still open on-chain, or a new one.
    async fn resume_or_open(
        &self,
        node: NodeTerms,
        deposited: &mut U256,
    ) -> Result<Open, WalletError> {
        let operator = node.operator;
        if let Some((channel, signed, metered)) = self.load(operator)? {
            let state = self.channels.channel(channel).await?;
            if state.payer == self.payer.address() && state.node == operator && state.closesAt == 0
            {
                let deposit = U256::from(state.deposit);
                let tariff = node.tariff;
                return Ok(Open { channel, deposit, tariff, metered, signed, introduced: false });
            }
        }
        self.spend(deposited, self.config.deposit)?;
        self.token.approve(self.channels.address(), self.config.deposit).await?;
        let channel = self.channels.open(operator, self.config.deposit).await?;
        let open = Open {
            channel,
            deposit: self.config.deposit,
            tariff: node.tariff,
            metered: 0,
            signed: U256::ZERO,
            introduced: false,
        };
        self.save(operator, &open)?;
        Ok(open)
    }

    fn spend(&self, deposited: &mut U256, amount: U256) -> Result<(), WalletError> {
        if *deposited + amount > self.config.budget {
            return Err(WalletError::Budget {
                deposited: *deposited,
                needed: amount,
                budget: self.config.budget,
            });
        }
        *deposited += amount;
        Ok(())
    }

    fn save(&self, operator: Address, tab: &Open) -> Result<(), StoreError> {
        let mut value = Vec::with_capacity(72);
        value.extend_from_slice(&tab.channel.to_be_bytes::<32>());
        value.extend_from_slice(&tab.signed.to_be_bytes::<32>());
        value.extend_from_slice(&tab.metered.to_le_bytes());
        let txn = self.db.begin_write()?;
        txn.open_table(TABS)?.insert(&operator.0.0, value.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// The stored (channel, signed amount, metered block-tokens) of `operator`'s node.
    fn load(&self, operator: Address) -> Result<Option<(U256, U256, u64)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TABS)?;
        let Some(value) = table.get(&operator.0.0)? else { return Ok(None) };
        let bytes = value.value();
        if bytes.len() != 72 {
            return Err(StoreError::Corrupt(format!("the tab of node {operator}")));
        }
        Ok(Some((
            U256::from_be_slice(&bytes[..32]),
            U256::from_be_slice(&bytes[32..64]),
            u64::from_le_bytes(bytes[64..72].try_into().expect("8 bytes")),
        )))
    }
}
