//! The gateway's side of payment: one channel per node it routes through, opened (or
//! reused, and topped up) from a budget, and cumulative vouchers signed for exactly the
//! block-tokens each node served (`protocol-spec/payments.md`, "Voucher flow").

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use alloy::primitives::{Address, B256, U256};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::Mutex;

use super::meter::{SETTLED_TERMS_BYTES, Tariff, decode_settled_terms, encode_settled_terms};
use super::store::{self, StoreError};
use super::{SignedVoucher, Voucher};
use crate::blocking::without_stalling;
use crate::chain::{ChainError, Channels, Token};
use crate::eip712::{Domain, Eip712Signer};
use crate::net::codec::Account;

/// node operator (20 bytes) → channel id 32 ‖ signed amount 32 ‖ metered u64 LE ‖ settled 32
/// ‖ price 32 ‖ span u16 LE (wallets written before terms were kept end after `metered`).
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
    /// The terms `metered` is priced at: the node's terms for this channel, which move to new
    /// registered ones when the node's account says it moved (`payments.md`, "Price changes").
    tariff: Tariff,
    /// Wei owed for block-tokens metered under earlier terms.
    settled: U256,
    metered: u64,
    /// Block-tokens of steps sent and not yet answered, over all concurrent sessions: the node
    /// has metered them already, so they count against its credit.
    in_flight: u64,
    /// Block-tokens of steps whose answer never came (a timeout, a dropped stream): the node
    /// may have metered them or not. Its account settles it (see [`Wallet::record`]).
    uncertain: u64,
    /// Whether the count and the node's may differ, or what was agreed is not signed yet: the
    /// gateway asks the node for its account and pays it (see [`Wallet::unsettled`]).
    settle_due: bool,
    signed: U256,
    /// Whether the node has had a voucher from this run (it binds the channel to this peer).
    introduced: bool,
    /// How much more than this run's count the node last claimed without grounds (logged
    /// once per claim, not at every answer).
    disputed: U256,
    /// Block-tokens the node has certainly metered at the current terms: the most its
    /// accounts at these terms have shown. A move to new terms must leave at least these at
    /// the old price.
    old_floor: u64,
    /// Accounts asked for in vain since the last agreement (see [`Wallet::unsettled`]).
    probes: u32,
}

/// Fruitless asks for a node's account before the gateway stops asking (a node that lost
/// metering in a crash counts less for good).
const MAX_PROBES: u32 = 5;

/// How an account compares with this run's count.
#[derive(Debug, PartialEq, Eq)]
enum Agreement {
    /// Already equal, or taken: the counts are the same now.
    Agreed,
    /// The node counts less: perhaps an account taken before a step that was answered first;
    /// not taken, asked again later.
    Behind,
    /// The node counts more than the steps sent (or answers this run refused): not taken.
    Disputed,
}

impl Open {
    /// What the answered steps, and `more` block-tokens after them, cost.
    fn owed(&self, more: u64) -> U256 {
        self.settled + self.tariff.amount(self.metered + more)
    }

    /// Whether `account` is at this run's terms, since the same move.
    fn same_terms(&self, account: &Account) -> bool {
        account.terms() == self.tariff && account.settled == self.settled
    }

    /// Follows the node to its new `registered` terms when its `account` shows it moved there
    /// (`payments.md`, "Price changes"). The wei it settled at the old terms must be exactly the
    /// old price of `k` block-tokens, with `k` no fewer than its accounts at the old terms had
    /// shown metered, and no more than this run counted (answered, in flight or lost); those
    /// `k` then leave `metered`. Returns whether it moved.
    fn follow_move(&mut self, account: &Account, registered: Tariff) -> bool {
        let node_terms = account.terms();
        if node_terms == self.tariff || node_terms != registered || account.settled < self.settled {
            return false;
        }
        let counted = self.metered + self.in_flight + self.uncertain;
        let Some(moved) = self.tariff.units_worth(account.settled - self.settled) else {
            return false;
        };
        if moved < self.old_floor || moved > counted {
            return false;
        }
        self.settled = account.settled;
        self.metered = self.metered.saturating_sub(moved);
        self.tariff = node_terms;
        self.old_floor = 0;
        true
    }

    /// Compares the node's `account`, at this run's terms, with this run's count when the
    /// account covers exactly the steps sent (none other in flight). It is taken when it
    /// claims more by at most the steps whose answers were lost; the node ran those.
    fn agree(&mut self, account: &Account) -> Agreement {
        let bound = self.owed(0) + self.tariff.amount(self.uncertain);
        if !self.same_terms(account) || account.owed().is_none_or(|theirs| theirs > bound) {
            return Agreement::Disputed;
        }
        if account.metered < self.metered {
            return Agreement::Behind;
        }
        self.metered = account.metered;
        self.uncertain = 0;
        self.probes = 0;
        Agreement::Agreed
    }
}

#[derive(Default)]
struct Tabs {
    open: HashMap<Address, Open>,
    /// Deposited in this run, counted against the budget.
    deposited: U256,
}

/// A payer's channels and vouchers.
///
/// Three kinds of lock: `tabs`, held for moments (accounting, never across I/O); one per
/// node in `chain_work`, held while that node's channel is opened or topped up and a voucher
/// to it is written and signed, so that a slow transaction holds up only the vouchers to that
/// node (they need its deposit), not those to the others nor steps that sign nothing; and
/// `deposits`, held across each approve-and-deposit pair of transactions, because `approve`
/// sets the token allowance rather than adding to it: two channels funded at once would both
/// spend one allowance.
pub struct Wallet {
    payer: Eip712Signer,
    domain: Domain,
    token: Token,
    channels: Channels,
    config: WalletConfig,
    db: Database,
    tabs: Mutex<Tabs>,
    chain_work: std::sync::Mutex<HashMap<Address, Arc<Mutex<()>>>>,
    deposits: Mutex<()>,
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
        Ok(Self {
            payer,
            domain,
            token,
            channels,
            config,
            db,
            tabs: Mutex::default(),
            chain_work: std::sync::Mutex::default(),
            deposits: Mutex::default(),
        })
    }

    /// Sends a step of `units` block-tokens to `node`: counts it in flight until
    /// [`Wallet::record`] (answered) or [`Wallet::release`] (not), and returns the voucher to
    /// attach, if one is due: on the first step to the node in this run, when the unpaid
    /// amount reaches the signing threshold, when `settle` (the end of a request), or when
    /// `force`d (the step is a whole request). Opens or tops up the node's channel first
    /// when needed.
    ///
    /// A voucher pays for the answers received and for the steps other sessions have in
    /// flight to the node (the node metered those on admission, so they count against its
    /// credit); this step too when forced, or when it alone is worth the signing threshold
    /// (a long prefill, a replay), which a node's credit may not cover.
    pub async fn voucher(
        &self,
        node: NodeTerms,
        units: u64,
        settle: bool,
        force: bool,
    ) -> Result<Option<SignedVoucher>, WalletError> {
        let threshold = node.tariff.price_per_token * U256::from(self.config.sign_every_tokens);
        let ahead = force || node.tariff.amount(units) >= threshold;
        let due = |tab: &Open| {
            let ahead_units = if ahead { units } else { 0 };
            let owed = tab.owed(tab.in_flight + ahead_units);
            let unpaid = owed.saturating_sub(tab.signed);
            let due =
                force || !tab.introduced || (!unpaid.is_zero() && (settle || unpaid >= threshold));
            due.then_some(owed)
        };
        // Most steps sign nothing: they go in flight under the tabs lock alone, not behind
        // the node's chain work, where another session's voucher may be being written to disk
        // (a busy gateway's sessions stepping together would all wait for it). One that
        // finds a voucher due decides again there, once that voucher is counted as signed.
        if let Some(tab) = self.tabs.lock().await.open.get_mut(&node.operator)
            && due(tab).is_none()
        {
            tab.in_flight += units;
            return Ok(None);
        }
        self.pay(node, units, due).await
    }

    /// The node refused a step already in flight for lack of payment (it restarted, keeps a
    /// smaller credit, or saw this run's vouchers out of order): a voucher for everything
    /// answered and in flight, this step included. With nothing else in flight, the node's
    /// `account` (which leaves the refused step out) is taken first where it may differ only
    /// by lost answers.
    pub async fn repay(
        &self,
        node: NodeTerms,
        units: u64,
        account: Option<&Account>,
    ) -> Result<SignedVoucher, WalletError> {
        if let Some(account) = account
            && let Some(tab) = self.tabs.lock().await.open.get_mut(&node.operator)
        {
            reconcile(tab, node, account, units);
        }
        let owed = |tab: &Open| Some(tab.owed(tab.in_flight));
        Ok(self.pay(node, 0, owed).await?.expect("a repayment always signs"))
    }

    /// With `node`'s chain work serialized and its tab opened if new: `amount` decides what
    /// to sign, if anything, and `reserve` block-tokens go in flight. The voucher signs at
    /// least what was signed before, after topping the channel up to cover it with room for
    /// the signing threshold; if that fails nothing is reserved.
    async fn pay(
        &self,
        node: NodeTerms,
        reserve: u64,
        amount: impl FnOnce(&Open) -> Option<U256>,
    ) -> Result<Option<SignedVoucher>, WalletError> {
        let operator = node.operator;
        let chain_work = self.chain_work(operator);
        // Held to the end: what is decided below stays true while the channel is topped up
        // (only this node's payments change its signed amount and deposit).
        let _serialized = chain_work.lock().await;
        if !self.tabs.lock().await.open.contains_key(&operator) {
            let opened = self.resume_or_open(node).await?;
            self.tabs.lock().await.open.insert(operator, opened);
        }
        let (owed, channel, mut deposit, signed) = {
            let mut tabs = self.tabs.lock().await;
            let tab = tabs.open.get_mut(&operator).expect("opened above");
            let owed = amount(tab);
            tab.in_flight += reserve;
            (owed, tab.channel, tab.deposit, tab.signed)
        };
        let Some(owed) = owed else {
            return Ok(None);
        };
        let threshold = node.tariff.price_per_token * U256::from(self.config.sign_every_tokens);
        let amount = owed.max(signed);
        while deposit < amount + threshold {
            if let Err(e) = self.top_up(channel).await {
                self.release(operator, reserve).await;
                return Err(e);
            }
            deposit += self.config.deposit;
            self.tabs.lock().await.open.get_mut(&operator).expect("opened above").deposit = deposit;
        }
        let count = self.tabs.lock().await.open.get(&operator).map(|t| Count {
            metered: t.metered,
            settled: t.settled,
            tariff: Some(t.tariff),
        });
        if let Err(e) = self.save(operator, channel, amount, count.unwrap_or_default()) {
            self.release(operator, reserve).await;
            return Err(e.into());
        }
        if let Some(tab) = self.tabs.lock().await.open.get_mut(&operator) {
            tab.signed = amount;
            tab.introduced = true;
            tab.settle_due &= tab.uncertain > 0 || tab.owed(0) > amount;
        }
        tracing::info!(%operator, %channel, wei = %amount, "voucher signed");
        let voucher = Voucher { channel_id: channel, cumulative_amount: amount };
        Ok(Some(voucher.sign(&self.domain, &self.payer)))
    }

    /// The lock serializing `operator`'s channel transactions.
    fn chain_work(&self, operator: Address) -> Arc<Mutex<()>> {
        self.chain_work.lock().expect("chain work").entry(operator).or_default().clone()
    }

    /// Deposits [`WalletConfig::deposit`] more into `channel`, within the budget.
    async fn top_up(&self, channel: U256) -> Result<(), WalletError> {
        let deposit = self.config.deposit;
        self.spend(deposit).await?;
        let topped_up = async {
            let _one_allowance = self.deposits.lock().await;
            self.token.approve(self.channels.address(), deposit).await?;
            self.channels.top_up(channel, deposit).await
        };
        let result = topped_up.await;
        if result.is_ok() {
            tracing::info!(%channel, deposit_wei = %deposit, "channel topped up");
        }
        if let Err(e) = &result {
            self.unspend_unless_sent(deposit, e).await;
        }
        result?;
        Ok(())
    }

    /// Counts `units` block-tokens that `operator`'s node served: a step sent with
    /// [`Wallet::voucher`] was answered, with the node's `account` of the channel after it.
    /// When nothing else is in flight and the two counts may differ (an answer was lost, the
    /// terms moved), the node's account is taken if it claims at most the lost steps more
    /// (`payments.md`, "Reconciliation"); a claim beyond that is logged and not paid.
    pub async fn record(&self, node: NodeTerms, units: u64, account: Option<&Account>) {
        let mut tabs = self.tabs.lock().await;
        let Some(tab) = tabs.open.get_mut(&node.operator) else { return };
        tab.in_flight = tab.in_flight.saturating_sub(units);
        tab.metered += units;
        match account {
            Some(account) => reconcile(tab, node, account, 0),
            // The node does not charge this run (it serves it free): nothing to settle.
            None => {
                tab.uncertain = 0;
                tab.settle_due = false;
            }
        }
    }

    /// A step sent with [`Wallet::voucher`] was refused, or its answer failed the checks: it
    /// is no longer in flight (the node refunds a step it refused; an answer refused here is
    /// not paid).
    pub async fn release(&self, operator: Address, units: u64) {
        if let Some(tab) = self.tabs.lock().await.open.get_mut(&operator) {
            tab.in_flight = tab.in_flight.saturating_sub(units);
        }
    }

    /// A step sent with [`Wallet::voucher`] got no answer at all (a timeout, a dropped
    /// stream): the node may have computed and metered it. Counted as uncertain until the
    /// node's account settles it.
    pub async fn lose(&self, operator: Address, units: u64) {
        if let Some(tab) = self.tabs.lock().await.open.get_mut(&operator) {
            tab.in_flight = tab.in_flight.saturating_sub(units);
            tab.uncertain += units;
            tab.settle_due = true;
        }
    }

    /// Nodes whose account should be asked for and paid now: an answer to them was lost, or
    /// their account was taken and is not signed for yet; and nothing is in flight to them.
    /// After [`MAX_PROBES`] asks without agreeing, a node is no longer asked: the lost steps
    /// stay unpaid (its credit bounds what it can lose).
    pub async fn unsettled(&self) -> Vec<Address> {
        let mut tabs = self.tabs.lock().await;
        let mut due = Vec::new();
        let waiting = tabs.open.iter_mut().filter(|(_, t)| t.settle_due && t.in_flight == 0);
        for (operator, tab) in waiting {
            if tab.probes >= MAX_PROBES {
                tracing::warn!(
                    %operator, channel = %tab.channel, uncertain = tab.uncertain,
                    "no agreement with the node's account after {MAX_PROBES} asks: the lost \
                     steps stay unpaid"
                );
                (tab.uncertain, tab.settle_due, tab.probes) = (0, false, 0);
                continue;
            }
            tab.probes += 1;
            due.push(*operator);
        }
        due
    }

    /// The latest voucher signed on each channel (channel id → cumulative amount), read from
    /// the wallet file at `path` whatever its deployment, opened read-only. Fails while a
    /// gateway has it open.
    pub fn signed_in(path: &Path) -> Result<HashMap<U256, U256>, StoreError> {
        let db = redb::ReadOnlyDatabase::open(path).map_err(redb::Error::from)?;
        let txn = db.begin_read()?;
        let table = match txn.open_table(TABS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(HashMap::new()),
            Err(e) => return Err(e.into()),
        };
        let mut signed = HashMap::new();
        for entry in table.iter()? {
            let (operator, value) = entry?;
            let operator = Address::from(*operator.value());
            let (channel, amount, _) = decode_tab(value.value())
                .ok_or_else(|| StoreError::Corrupt(format!("the tab of node {operator}")))?;
            signed.insert(channel, amount);
        }
        Ok(signed)
    }

    /// Whether this run pays `operator` through a channel already (paying it deposits
    /// nothing new).
    pub async fn has_channel(&self, operator: Address) -> bool {
        self.tabs.lock().await.open.contains_key(&operator)
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
                owed: t.owed(0),
                signed: t.signed,
            })
            .collect();
        out.sort_by_key(|t| t.channel);
        out
    }

    /// The stored channel to `node` if it is still open on-chain, or a new one. Called with
    /// the node's chain work serialized and no other lock held.
    async fn resume_or_open(&self, node: NodeTerms) -> Result<Open, WalletError> {
        let operator = node.operator;
        let tariff = node.tariff;
        let fresh = |channel, deposit, signed, count: Count| Open {
            channel,
            deposit,
            tariff: count.tariff.unwrap_or(tariff),
            settled: count.settled,
            metered: count.metered,
            in_flight: 0,
            uncertain: 0,
            settle_due: false,
            signed,
            introduced: false,
            disputed: U256::ZERO,
            old_floor: 0,
            probes: 0,
        };
        if let Some((channel, signed, count)) = self.load(operator)? {
            let state = self.channels.channel(channel).await?;
            if state.payer == self.payer.address() && state.node == operator && state.closesAt == 0
            {
                return Ok(fresh(channel, U256::from(state.deposit), signed, count));
            }
        }
        let deposit = self.config.deposit;
        self.spend(deposit).await?;
        let opened = async {
            let _one_allowance = self.deposits.lock().await;
            self.token.approve(self.channels.address(), deposit).await?;
            self.channels.open(operator, deposit).await
        };
        let channel = match opened.await {
            Ok(channel) => channel,
            Err(e) => {
                self.unspend_unless_sent(deposit, &e).await;
                return Err(e.into());
            }
        };
        self.save(operator, channel, U256::ZERO, Count::default())?;
        tracing::info!(%operator, %channel, deposit_wei = %deposit, "channel opened");
        Ok(fresh(channel, deposit, U256::ZERO, Count::default()))
    }

    /// Counts `amount` against the budget, or refuses it.
    async fn spend(&self, amount: U256) -> Result<(), WalletError> {
        let deposited = &mut self.tabs.lock().await.deposited;
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

    /// Gives back to the budget a deposit whose transaction certainly moved nothing: refused
    /// before it was sent (the gas estimate reverted) or mined reverted. After any other
    /// error (a timeout, a dropped connection) the deposit may have landed: it stays counted,
    /// so that retries cannot take the wallet past its budget.
    async fn unspend_unless_sent(&self, amount: U256, error: &ChainError) {
        if matches!(error, ChainError::Reverted(_) | ChainError::MinedRevert(_)) {
            let deposited = &mut self.tabs.lock().await.deposited;
            *deposited = deposited.saturating_sub(amount);
        }
    }

    fn save(
        &self,
        operator: Address,
        channel: U256,
        signed: U256,
        count: Count,
    ) -> Result<(), StoreError> {
        let mut value = Vec::with_capacity(TAB_BYTES);
        value.extend_from_slice(&channel.to_be_bytes::<32>());
        value.extend_from_slice(&signed.to_be_bytes::<32>());
        value.extend_from_slice(&count.metered.to_le_bytes());
        if let Some(tariff) = count.tariff {
            encode_settled_terms(count.settled, tariff, &mut value);
        }
        // Vouchers are signed, and channels opened, from sessions' route tasks: runtime workers.
        without_stalling(|| {
            let txn = self.db.begin_write()?;
            txn.open_table(TABS)?.insert(&operator.0.0, value.as_slice())?;
            txn.commit()?;
            Ok(())
        })
    }

    /// The stored (channel, signed amount, count) of `operator`'s node.
    fn load(&self, operator: Address) -> Result<Option<(U256, U256, Count)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TABS)?;
        let Some(value) = table.get(&operator.0.0)? else { return Ok(None) };
        decode_tab(value.value())
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt(format!("the tab of node {operator}")))
    }
}

/// Follows `node` to new registered terms its `account` shows it moved to, and notes what the
/// account proves metered at the current terms; then, if the only steps in flight are
/// `excluded` block-tokens the account leaves out, compares it with the tab's count
/// (`payments.md`, "Reconciliation"). Called under the wallet's lock, with the tab already
/// updated for the step the account came with, so that nothing comes between.
fn reconcile(tab: &mut Open, node: NodeTerms, account: &Account, excluded: u64) {
    let operator = node.operator;
    if account.channel_id != tab.channel {
        return;
    }
    if tab.follow_move(account, node.tariff) {
        tracing::info!(
            %operator, channel = %tab.channel, price_per_token = %account.price_per_token,
            span_blocks = account.span_blocks, "the node moved to its new terms: so does this run"
        );
    }
    if tab.same_terms(account) {
        tab.old_floor = tab.old_floor.max(account.metered);
    }
    if tab.in_flight != excluded {
        return;
    }
    let ours = tab.owed(0);
    if account.owed() == Some(ours) && tab.uncertain == 0 {
        tab.settle_due &= ours > tab.signed;
        return;
    }
    match tab.agree(account) {
        Agreement::Agreed => {
            let theirs = tab.owed(0);
            if theirs != ours {
                tracing::info!(
                    %operator, channel = %tab.channel, ours = %ours, theirs = %theirs,
                    "took the node's account of the channel (answers lost on the way)"
                );
            }
        }
        Agreement::Behind => {}
        Agreement::Disputed => {
            let claim = account.owed().unwrap_or(U256::MAX).saturating_sub(ours);
            if tab.disputed != claim {
                tracing::warn!(
                    %operator, channel = %tab.channel, ours = %ours, claim = ?account,
                    uncertain = tab.uncertain,
                    "the node counts more than the steps this gateway sent (or answers it \
                     refused), or at other terms: not taken"
                );
                tab.disputed = claim;
            }
            tab.uncertain = 0;
        }
    }
    // Asked and agreed (or given up on): settled once what is owed is signed.
    tab.settle_due = tab.uncertain > 0 || tab.owed(0) > tab.signed;
}

/// Bytes of a stored tab with its terms; one written before terms were kept has 72.
const TAB_BYTES: usize = 72 + SETTLED_TERMS_BYTES;

/// What a tab counts: block-tokens at its terms, and wei owed under earlier ones.
#[derive(Debug, Clone, Copy, Default)]
struct Count {
    metered: u64,
    settled: U256,
    /// `None` in a wallet written before terms were kept: the node's current terms apply.
    tariff: Option<Tariff>,
}

/// A stored tab: (channel id, signed amount, count), or `None` if malformed.
fn decode_tab(bytes: &[u8]) -> Option<(U256, U256, Count)> {
    if bytes.len() != 72 && bytes.len() != TAB_BYTES {
        return None;
    }
    let mut count =
        Count { metered: u64::from_le_bytes(bytes[64..72].try_into().ok()?), ..Count::default() };
    if bytes.len() == TAB_BYTES {
        let (settled, tariff) = decode_settled_terms(&bytes[72..])?;
        (count.settled, count.tariff) = (settled, Some(tariff));
    }
    Some((U256::from_be_slice(&bytes[..32]), U256::from_be_slice(&bytes[32..64]), count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tab(tariff: Tariff, metered: u64) -> Open {
        Open {
            channel: U256::from(1),
            deposit: U256::from(1_000_000),
            tariff,
            settled: U256::ZERO,
            metered,
            in_flight: 0,
            uncertain: 0,
            settle_due: false,
            signed: U256::ZERO,
            introduced: true,
            disputed: U256::ZERO,
            old_floor: 0,
            probes: 0,
        }
    }

    fn account(tab: &Open, settled: u64, metered: u64, tariff: Tariff) -> Account {
        Account {
            channel_id: tab.channel,
            settled: U256::from(settled),
            metered,
            price_per_token: tariff.price_per_token,
            span_blocks: tariff.span_blocks,
            voucher: tab.signed,
            credit: U256::from(1000),
        }
    }

    const TEN_OVER_THREE: Tariff =
        Tariff { price_per_token: U256::from_limbs([10, 0, 0, 0]), span_blocks: 3 };
    const THIRTY_OVER_THREE: Tariff =
        Tariff { price_per_token: U256::from_limbs([30, 0, 0, 0]), span_blocks: 3 };
    const NODE: NodeTerms = NodeTerms { operator: Address::ZERO, tariff: TEN_OVER_THREE };

    #[test]
    fn a_run_follows_the_node_to_new_terms_only_as_it_moved() {
        // 4 block-tokens answered at the old terms, then the node moved with a voucher and
        // metered 2 at the new ones (counted here too, still at the old terms).
        let mut open = tab(TEN_OVER_THREE, 6);
        let moved = account(&open, 13, 2, THIRTY_OVER_THREE); // ⌊10·4/3⌋ = 13 settled
        // Terms the registry does not show (yet) are not followed.
        assert!(!open.follow_move(&moved, TEN_OVER_THREE));
        assert!(open.follow_move(&moved, THIRTY_OVER_THREE));
        assert_eq!(
            (open.settled, open.metered, open.tariff),
            (U256::from(13), 2, THIRTY_OVER_THREE)
        );
        assert_eq!(Some(open.owed(0)), moved.owed());
        assert!(!open.follow_move(&moved, THIRTY_OVER_THREE), "already there");

        // A node settling more than this run ever sent it is not followed.
        let mut open = tab(TEN_OVER_THREE, 6);
        assert!(!open.follow_move(&account(&open, 23, 0, THIRTY_OVER_THREE), THIRTY_OVER_THREE));
        // Nor one settling an amount no count of block-tokens is worth.
        assert!(!open.follow_move(&account(&open, 4, 0, THIRTY_OVER_THREE), THIRTY_OVER_THREE));
        // Nor one leaving at the old price fewer block-tokens than its own accounts at the old
        // terms showed metered: it would re-price past usage at the new one.
        open.old_floor = 4;
        assert!(!open.follow_move(&account(&open, 6, 4, THIRTY_OVER_THREE), THIRTY_OVER_THREE));
        assert_eq!((open.settled, open.metered), (U256::ZERO, 6));
        assert!(open.follow_move(&account(&open, 13, 2, THIRTY_OVER_THREE), THIRTY_OVER_THREE));
    }

    #[test]
    fn the_nodes_account_is_taken_only_within_the_lost_steps() {
        // 6 block-tokens answered, 3 lost: the node may claim 6 to 9.
        let mut open = tab(TEN_OVER_THREE, 6);
        open.uncertain = 3;
        assert_eq!(open.agree(&account(&open, 0, 9, TEN_OVER_THREE)), Agreement::Agreed);
        assert_eq!((open.metered, open.uncertain, open.owed(0)), (9, 0, U256::from(30)));

        // One block-token more than the lost steps: not taken.
        let mut open = tab(TEN_OVER_THREE, 6);
        open.uncertain = 3;
        let greedy = account(&open, 0, 10, TEN_OVER_THREE);
        assert_eq!(open.agree(&greedy), Agreement::Disputed);
        assert_eq!((open.metered, open.owed(0)), (6, U256::from(20)));
        // Nothing lost: a node counting more (answers this run refused) is not paid.
        let mut open = tab(TEN_OVER_THREE, 6);
        assert_eq!(open.agree(&account(&open, 0, 7, TEN_OVER_THREE)), Agreement::Disputed);
        // Terms of its own making are never taken, even for a smaller amount.
        let mut open = tab(TEN_OVER_THREE, 6);
        open.uncertain = 3;
        let dear = Tariff { price_per_token: U256::from(10).pow(U256::from(30)), span_blocks: 1 };
        assert_eq!(open.agree(&account(&open, 19, 0, dear)), Agreement::Disputed);
        assert_eq!(open.tariff, TEN_OVER_THREE);
        // Nor figures past 2^256.
        let mut huge = account(&open, 0, 7, TEN_OVER_THREE);
        huge.settled = U256::MAX;
        assert_eq!(open.agree(&huge), Agreement::Disputed);
        // A node counting less (an account taken before a step answered first) is not taken
        // either: it is asked again.
        let mut open = tab(TEN_OVER_THREE, 6);
        open.uncertain = 1;
        assert_eq!(open.agree(&account(&open, 0, 5, TEN_OVER_THREE)), Agreement::Behind);
        assert_eq!((open.metered, open.uncertain), (6, 1));
    }

    #[test]
    fn a_lost_answer_is_settled_once_the_agreed_count_is_signed() {
        let mut open = tab(TEN_OVER_THREE, 6);
        (open.uncertain, open.settle_due, open.signed) = (3, true, U256::from(20));
        let nine = account(&open, 0, 9, TEN_OVER_THREE);
        reconcile(&mut open, NODE, &nine, 0);
        assert_eq!((open.metered, open.uncertain), (9, 0));
        assert!(open.settle_due, "30 wei agreed, 20 signed");
        open.signed = U256::from(30);
        let nine = account(&open, 0, 9, TEN_OVER_THREE);
        reconcile(&mut open, NODE, &nine, 0);
        assert!(!open.settle_due);
        // With another step in flight the account may not cover it: only compared later.
        let mut open = tab(TEN_OVER_THREE, 6);
        (open.uncertain, open.in_flight) = (3, 1);
        let nine = account(&open, 0, 9, TEN_OVER_THREE);
        reconcile(&mut open, NODE, &nine, 0);
        assert_eq!((open.metered, open.uncertain, open.old_floor), (6, 3, 9));
    }
}
