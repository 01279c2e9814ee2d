//! One typed client per contract. Transactions wait for their receipt and decode reverts;
//! views return the contract's own types.

use alloy::eips::BlockId;
use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::providers::{DynProvider, Provider};
use alloy::rpc::types::TransactionReceipt;

use super::bindings::{
    BTT::{self, BTTInstance},
    NodeRegistry::{self, NodeRegistryInstance},
    PaymentChannels::{self, PaymentChannelsInstance},
    Validation::{self, ValidationInstance},
};
use super::{ChainError, send};
use crate::pay::SignedVoucher;
use crate::validate::EpochClock;

type Tx = Result<TransactionReceipt, ChainError>;

/// The BTT token (or any ERC-20 with the same interface).
#[derive(Debug, Clone)]
pub struct Token(BTTInstance<DynProvider>);

impl Token {
    pub fn new(address: Address, provider: DynProvider) -> Self {
        Self(BTT::new(address, provider))
    }
    pub fn address(&self) -> Address {
        *self.0.address()
    }
    /// Mints test tokens (only the test token's owner).
    pub async fn mint(&self, to: Address, amount: U256) -> Tx {
        send(self.0.mint(to, amount)).await
    }
    pub async fn approve(&self, spender: Address, amount: U256) -> Tx {
        send(self.0.approve(spender, amount)).await
    }
    pub async fn transfer(&self, to: Address, amount: U256) -> Tx {
        send(self.0.transfer(to, amount)).await
    }
    pub async fn balance_of(&self, holder: Address) -> Result<U256, ChainError> {
        Ok(self.0.balanceOf(holder).call().await?)
    }
    pub async fn total_supply(&self) -> Result<U256, ChainError> {
        Ok(self.0.totalSupply().call().await?)
    }
}

/// Operators scanned per `NodeRegistry.operators` or `activeNodes` call: each call costs gas
/// linear in the page, which keeps it under the `eth_call` gas caps of public endpoints.
const OPERATOR_PAGE: u64 = 256;

/// What an operator registers for its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRegistration {
    /// A secp256k1 libp2p peer id (see [`crate::identity`]).
    pub peer_id: Bytes,
    /// The peer id key's signature over `peerIdOwnershipDigest(operator)`
    /// ([`crate::identity::NodeIdentity::peer_id_ownership_signature`]).
    pub peer_id_signature: Bytes,
    pub model_id: B256,
    pub first_block: u32,
    pub last_block: u32,
    pub price_per_token: U256,
    pub multiaddrs: Vec<String>,
    pub stake: U256,
}

/// The node registry: stake, registration, unbonding, jailing.
#[derive(Debug, Clone)]
pub struct Registry(NodeRegistryInstance<DynProvider>);

impl Registry {
    pub fn new(address: Address, provider: DynProvider) -> Self {
        Self(NodeRegistry::new(address, provider))
    }
    pub fn address(&self) -> Address {
        *self.0.address()
    }
    /// Registers the caller's node, bonding `stake` (approve the registry first).
    pub async fn register(&self, node: &NodeRegistration) -> Tx {
        send(self.0.register(
            node.peer_id.clone(),
            node.peer_id_signature.clone(),
            node.model_id,
            node.first_block,
            node.last_block,
            node.price_per_token,
            node.multiaddrs.clone(),
            node.stake,
        ))
        .await
    }
    pub async fn update_service(
        &self,
        model_id: B256,
        blocks: (u32, u32),
        price: U256,
        multiaddrs: Vec<String>,
    ) -> Tx {
        send(self.0.updateService(model_id, blocks.0, blocks.1, price, multiaddrs)).await
    }
    pub async fn add_stake(&self, amount: U256) -> Tx {
        send(self.0.addStake(amount)).await
    }
    pub async fn request_unbond(&self, amount: U256) -> Tx {
        send(self.0.requestUnbond(amount)).await
    }
    pub async fn withdraw(&self) -> Tx {
        send(self.0.withdraw()).await
    }
    pub async fn unjail(&self) -> Tx {
        send(self.0.unjail()).await
    }
    /// Removes the caller's node and frees its peer id (nothing bonded or unbonding, not jailed).
    pub async fn deregister(&self) -> Tx {
        send(self.0.deregister()).await
    }
    pub async fn node(&self, operator: Address) -> Result<NodeRegistry::Node, ChainError> {
        Ok(self.0.getNode(operator).call().await?)
    }
    pub async fn stake_of(&self, operator: Address) -> Result<U256, ChainError> {
        Ok(self.0.stakeOf(operator).call().await?)
    }
    pub async fn is_active(&self, operator: Address) -> Result<bool, ChainError> {
        Ok(self.0.isActive(operator).call().await?)
    }
    pub async fn operator_of(&self, peer_id: Bytes) -> Result<Address, ChainError> {
        Ok(self.0.operatorOf(peer_id).call().await?)
    }
    /// Every registered operator, in the registry's list order.
    pub async fn operators(&self) -> Result<Vec<Address>, ChainError> {
        registered_operators(&self.0, self.head().await?).await
    }
    /// The active nodes of `model_id` serving layer block `block`.
    pub async fn active_nodes(
        &self,
        model_id: B256,
        block: u32,
    ) -> Result<Vec<Address>, ChainError> {
        let at = self.head().await?;
        paged(&self.0, at, |start, limit| {
            let call = self.0.activeNodes(model_id, block, start, limit).block(at);
            async move { call.call().await }
        })
        .await
    }
    /// The latest block, pinned so that every page of a listing reads the same list: a
    /// deregistration between two pages moves the last operator into the freed position.
    async fn head(&self) -> Result<BlockId, ChainError> {
        Ok(BlockId::number(self.0.provider().get_block_number().await?))
    }
    /// Seconds between `requestUnbond` and `withdraw`.
    pub async fn unbonding_period(&self) -> Result<u64, ChainError> {
        Ok(self.0.unbondingPeriod().call().await?)
    }
    pub async fn min_stake(&self) -> Result<U256, ChainError> {
        Ok(self.0.minStake().call().await?)
    }
    /// The registry's own EIP-712 digest that a peer id's key signs to let `operator`
    /// register it.
    pub async fn peer_id_ownership_digest(&self, operator: Address) -> Result<B256, ChainError> {
        Ok(self.0.peerIdOwnershipDigest(operator).call().await?)
    }
}

/// Every operator registered at block `at`, read page by page.
pub(crate) async fn registered_operators(
    registry: &NodeRegistryInstance<DynProvider>,
    at: BlockId,
) -> Result<Vec<Address>, ChainError> {
    paged(registry, at, |start, limit| {
        let call = registry.operators(start, limit).block(at);
        async move { call.call().await }
    })
    .await
}

/// Concatenates `page(start, OPERATOR_PAGE)` over the positions of the registry's operator
/// list at block `at`; `page` must read at `at` too.
async fn paged<F, Fut>(
    registry: &NodeRegistryInstance<DynProvider>,
    at: BlockId,
    mut page: F,
) -> Result<Vec<Address>, ChainError>
where
    F: FnMut(U256, U256) -> Fut,
    Fut: Future<Output = Result<Vec<Address>, alloy::contract::Error>>,
{
    let count = registry.operatorCount().block(at).call().await?;
    let limit = U256::from(OPERATOR_PAGE);
    let mut all = Vec::new();
    let mut start = U256::ZERO;
    while start < count {
        all.extend(page(start, limit).await?);
        start += limit;
    }
    Ok(all)
}

/// Payment channels: deposits, vouchers, redemption, close and refund.
#[derive(Debug, Clone)]
pub struct Channels(PaymentChannelsInstance<DynProvider>);

impl Channels {
    pub fn new(address: Address, provider: DynProvider) -> Self {
        Self(PaymentChannels::new(address, provider))
    }
    pub fn address(&self) -> Address {
        *self.0.address()
    }
    /// Opens a channel to `node` with `deposit` (approve the channels contract first) and
    /// returns its id, read from the `ChannelOpened` event.
    pub async fn open(&self, node: Address, deposit: U256) -> Result<U256, ChainError> {
        let receipt = send(self.0.open(node, deposit)).await?;
        receipt
            .decoded_log::<PaymentChannels::ChannelOpened>()
            .map(|log| log.channelId)
            .ok_or_else(|| ChainError::Rpc("open() emitted no ChannelOpened event".into()))
    }
    pub async fn top_up(&self, channel_id: U256, amount: U256) -> Tx {
        send(self.0.topUp(channel_id, amount)).await
    }
    /// Redeems one voucher (only the channel's node).
    pub async fn redeem(&self, voucher: &SignedVoucher) -> Tx {
        let v = voucher.voucher;
        send(self.0.redeem(v.channel_id, v.cumulative_amount, voucher.signature.clone())).await
    }
    /// Redeems the latest voucher of many channels in one transaction and one transfer. The
    /// contract skips, rather than reverts on, a voucher that cannot pay: the result says
    /// which paid and which were skipped, from the receipt's events.
    pub async fn redeem_batch(
        &self,
        vouchers: &[SignedVoucher],
    ) -> Result<BatchRedemption, ChainError> {
        let batch = vouchers
            .iter()
            .map(|v| PaymentChannels::SignedVoucher {
                channelId: v.voucher.channel_id,
                cumulativeAmount: v.voucher.cumulative_amount,
                signature: v.signature.clone(),
            })
            .collect();
        let receipt = send(self.0.redeemBatch(batch)).await?;
        Ok(BatchRedemption::from_receipt(receipt, self.address()))
    }
    pub async fn request_close(&self, channel_id: U256) -> Tx {
        send(self.0.requestClose(channel_id)).await
    }
    pub async fn finalize_close(&self, channel_id: U256) -> Tx {
        send(self.0.finalizeClose(channel_id)).await
    }
    pub async fn channel(&self, channel_id: U256) -> Result<PaymentChannels::Channel, ChainError> {
        Ok(self.0.getChannel(channel_id).call().await?)
    }
    /// Ids of the channels `payer` opened, oldest first (from `ChannelOpened`, indexed by payer).
    pub async fn opened_by(
        &self,
        payer: Address,
        from_block: u64,
    ) -> Result<Vec<U256>, ChainError> {
        let logs = self
            .0
            .ChannelOpened_filter()
            .topic2(payer.into_word())
            .from_block(from_block)
            .query()
            .await?;
        Ok(logs.into_iter().map(|(event, _)| event.channelId).collect())
    }
    /// What `finalizeClose` refunded to the payer of a closed channel (`ChannelClosed`), or
    /// `None` while it is not closed.
    pub async fn refunded(
        &self,
        channel_id: U256,
        from_block: u64,
    ) -> Result<Option<U256>, ChainError> {
        let logs =
            self.0.ChannelClosed_filter().topic1(channel_id).from_block(from_block).query().await?;
        Ok(logs.first().map(|(event, _)| event.refund))
    }
    /// Whether `finalizeClose` has run on the channel.
    pub async fn is_closed(&self, channel_id: U256) -> Result<bool, ChainError> {
        Ok(self.0.isClosed(channel_id).call().await?)
    }
    /// The gas price and the latest block's timestamp: what a transaction costs now, and
    /// the chain's clock that close windows run on.
    pub async fn gas_price_and_time(&self) -> Result<(u128, u64), ChainError> {
        let (gas_price, time, _) = self.gas_price_and_head().await?;
        Ok((gas_price, time))
    }

    /// The gas price, and the latest block's time and number.
    pub async fn gas_price_and_head(&self) -> Result<(u128, u64, u64), ChainError> {
        let provider = self.0.provider();
        let gas_price = provider.get_gas_price().await?;
        let (time, number) = latest_block(provider).await?;
        Ok((gas_price, time, number))
    }
    /// The contract's own EIP-712 digest of a voucher.
    pub async fn voucher_digest(
        &self,
        channel_id: U256,
        cumulative_amount: U256,
    ) -> Result<B256, ChainError> {
        Ok(self.0.voucherDigest(channel_id, cumulative_amount).call().await?)
    }
}

/// A voucher `redeemBatch` paid: the `VoucherRedeemed` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedeemedVoucher {
    pub channel: U256,
    /// Paid by this transaction.
    pub amount: U256,
    /// What the channel has paid its node in all, this transaction included.
    pub cumulative_paid: U256,
}

/// A voucher `redeemBatch` left out: the `VoucherSkipped` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkippedVoucher {
    pub channel: U256,
    pub cumulative_amount: U256,
    pub reason: SkipReason,
}

/// Why `redeemBatch` skipped a voucher: `PaymentChannels.SkipReason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    UnknownChannel,
    NotChannelNode,
    ChannelExpired,
    AlreadyRedeemed,
    InvalidSignature,
    /// A reason this client does not know (a newer contract).
    Other(u8),
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownChannel => f.write_str("no such channel"),
            Self::NotChannelNode => f.write_str("the channel pays another node"),
            Self::ChannelExpired => f.write_str("the channel's close window has ended"),
            Self::AlreadyRedeemed => f.write_str("the channel has already paid at least this much"),
            Self::InvalidSignature => f.write_str("not signed by the channel's payer"),
            Self::Other(code) => write!(f, "reason {code}"),
        }
    }
}

impl From<u8> for SkipReason {
    fn from(code: u8) -> Self {
        match code {
            1 => Self::UnknownChannel,
            2 => Self::NotChannelNode,
            3 => Self::ChannelExpired,
            4 => Self::AlreadyRedeemed,
            5 => Self::InvalidSignature,
            other => Self::Other(other),
        }
    }
}

/// What a mined `redeemBatch` did.
#[derive(Debug, Clone)]
pub struct BatchRedemption {
    pub receipt: TransactionReceipt,
    pub redeemed: Vec<RedeemedVoucher>,
    pub skipped: Vec<SkippedVoucher>,
}

impl BatchRedemption {
    /// Reads the `VoucherRedeemed` and `VoucherSkipped` events `channels` emitted in `receipt`.
    fn from_receipt(receipt: TransactionReceipt, channels: Address) -> Self {
        let (mut redeemed, mut skipped) = (Vec::new(), Vec::new());
        for log in receipt.inner.logs().iter().filter(|log| log.address() == channels) {
            if let Ok(event) = log.log_decode::<PaymentChannels::VoucherRedeemed>() {
                let e = event.inner.data;
                redeemed.push(RedeemedVoucher {
                    channel: e.channelId,
                    amount: e.amount,
                    cumulative_paid: e.cumulativePaid,
                });
            } else if let Ok(event) = log.log_decode::<PaymentChannels::VoucherSkipped>() {
                let e = event.inner.data;
                skipped.push(SkippedVoucher {
                    channel: e.channelId,
                    cumulative_amount: e.cumulativeAmount,
                    reason: e.reason.into(),
                });
            }
        }
        Self { receipt, redeemed, skipped }
    }

    /// The total paid to the node: `redeemBatch`'s return value.
    pub fn total(&self) -> U256 {
        self.redeemed.iter().map(|r| r.amount).sum()
    }
}

/// Validators, challenge commitments, result quorums, fault reports and reputation.
#[derive(Debug, Clone)]
pub struct ValidationClient(ValidationInstance<DynProvider>);

impl ValidationClient {
    pub fn new(address: Address, provider: DynProvider) -> Self {
        Self(Validation::new(address, provider))
    }
    pub fn address(&self) -> Address {
        *self.0.address()
    }
    pub async fn register_validator(&self, stake: U256) -> Tx {
        send(self.0.registerValidator(stake)).await
    }
    pub async fn add_validator_stake(&self, amount: U256) -> Tx {
        send(self.0.addValidatorStake(amount)).await
    }
    pub async fn request_validator_unbond(&self, amount: U256) -> Tx {
        send(self.0.requestValidatorUnbond(amount)).await
    }
    pub async fn withdraw_validator_stake(&self) -> Tx {
        send(self.0.withdrawValidatorStake()).await
    }
    /// What a validator's stake and record are now.
    pub async fn validator(&self, validator: Address) -> Result<ValidatorStanding, ChainError> {
        let (unbonding, unbonding_ends_at) = {
            let u = self.0.validatorUnbonding(validator).call().await?;
            (u.amount, u.endsAt)
        };
        let record = self.0.getValidatorRecord(validator).call().await?;
        Ok(ValidatorStanding {
            stake: self.0.validatorStake(validator).call().await?,
            unbonding,
            unbonding_ends_at,
            active: self.0.isValidator(validator).call().await?,
            total_active_stake: self.0.totalValidatorStake().call().await?,
            missed_reveals: record.missedReveals,
            dissents: record.dissents,
            total_penalized: record.totalPenalized,
        })
    }
    /// The contract's epochs: `genesis` and `epochDuration`, both fixed at deployment.
    pub async fn epoch_clock(&self) -> Result<EpochClock, ChainError> {
        let duration = self.0.epochDuration().call().await?;
        if duration == 0 {
            return Err(ChainError::Rpc(format!(
                "Validation at {} reports an epoch duration of 0: not a Validation contract",
                self.address()
            )));
        }
        Ok(EpochClock { genesis: self.0.genesis().call().await?, duration })
    }
    /// The deployment's parameters: windows, quorum, bond, slash share.
    pub async fn params(&self) -> Result<Validation::Params, ChainError> {
        Ok(self.0.params().call().await?)
    }
    pub async fn current_epoch(&self) -> Result<u64, ChainError> {
        Ok(self.0.currentEpoch().call().await?)
    }
    pub async fn epoch_end(&self, epoch: u64) -> Result<u64, ChainError> {
        Ok(self.0.epochEnd(epoch).call().await?)
    }
    pub async fn commit_challenge_root(&self, epoch: u64, root: B256) -> Tx {
        send(self.0.commitChallengeRoot(epoch, root)).await
    }
    pub async fn result_commitment(
        &self,
        node: Address,
        epoch: u64,
        tally: Tally,
        validator: Address,
    ) -> Result<B256, ChainError> {
        Ok(self
            .0
            .resultCommitment(node, epoch, tally.passed, tally.failed, tally.salt, validator)
            .call()
            .await?)
    }
    pub async fn commit_result(&self, node: Address, epoch: u64, commitment: B256) -> Tx {
        send(self.0.commitResult(node, epoch, commitment)).await
    }
    pub async fn reveal_result(&self, node: Address, epoch: u64, tally: Tally) -> Tx {
        send(self.0.revealResult(node, epoch, tally.passed, tally.failed, tally.salt)).await
    }
    /// Reports a fault and returns the report id, read from the `FaultReported` event.
    pub async fn report_fault(
        &self,
        node: Address,
        epoch: u64,
        evidence: Validation::Evidence,
    ) -> Result<U256, ChainError> {
        let receipt = send(self.0.reportFault(node, epoch, evidence)).await?;
        receipt
            .decoded_log::<Validation::FaultReported>()
            .map(|log| log.reportId)
            .ok_or_else(|| ChainError::Rpc("reportFault() emitted no FaultReported event".into()))
    }
    pub async fn vote_on_fault(&self, report_id: U256, guilty: bool) -> Tx {
        send(self.0.voteOnFault(report_id, guilty)).await
    }
    pub async fn finalize_fault(&self, report_id: U256) -> Tx {
        send(self.0.finalizeFault(report_id)).await
    }
    pub async fn fault_report(
        &self,
        report_id: U256,
    ) -> Result<Validation::FaultReport, ChainError> {
        Ok(self.0.getFaultReport(report_id).call().await?)
    }
    /// Whether a quorum revealed `node`'s result for `epoch`.
    pub async fn result_finalized(&self, node: Address, epoch: u64) -> Result<bool, ChainError> {
        Ok(self.0.getEpochResult(node, epoch).call().await?.finalized)
    }
    /// Validators that committed a result about `node` for `epoch` and have not revealed it
    /// (from the `ResultCommitted` and `ResultRevealed` events, indexed by node and epoch).
    pub async fn withheld_reveals(
        &self,
        node: Address,
        epoch: u64,
    ) -> Result<Vec<Address>, ChainError> {
        let committed =
            self.round_validators(node, epoch, |e: &Validation::ResultCommitted| e.validator);
        let revealed =
            self.round_validators(node, epoch, |e: &Validation::ResultRevealed| e.validator);
        let (committed, revealed) = futures::try_join!(committed, revealed)?;
        Ok(committed.into_iter().filter(|validator| !revealed.contains(validator)).collect())
    }
    /// The validators named by the `E` events about `node`'s result round of `epoch` (events
    /// indexed by validator, node and epoch).
    async fn round_validators<E: alloy::sol_types::SolEvent>(
        &self,
        node: Address,
        epoch: u64,
        validator: fn(&E) -> Address,
    ) -> Result<Vec<Address>, ChainError> {
        let logs = self
            .0
            .event_filter::<E>()
            .topic2(node.into_word())
            .topic3(B256::from(U256::from(epoch)))
            .from_block(0)
            .query()
            .await?;
        Ok(logs.iter().map(|(event, _)| validator(event)).collect())
    }
    pub async fn penalize_missed_reveal(
        &self,
        validator: Address,
        node: Address,
        epoch: u64,
    ) -> Tx {
        send(self.0.penalizeMissedReveal(validator, node, epoch)).await
    }
    /// How many fault reports have been filed (ids run from 1 to this).
    pub async fn fault_report_count(&self) -> Result<u64, ChainError> {
        let count = self.0.faultReportCount().call().await?;
        Ok(u64::try_from(count).unwrap_or(u64::MAX))
    }
    /// The `FaultReported` event of a report: what the node's signed answer hashed to, which
    /// the report's storage does not keep.
    pub async fn fault_reported(
        &self,
        report_id: U256,
    ) -> Result<Option<Validation::FaultReported>, ChainError> {
        let logs = self.0.FaultReported_filter().topic1(report_id).from_block(0).query().await?;
        Ok(logs.into_iter().next().map(|(event, _)| event))
    }
    pub async fn node_record(&self, node: Address) -> Result<Validation::NodeRecord, ChainError> {
        Ok(self.0.getNodeRecord(node).call().await?)
    }
    pub async fn reputation_of(&self, node: Address) -> Result<u32, ChainError> {
        Ok(self.0.reputationOf(node).call().await?)
    }
    pub async fn response_digest(
        &self,
        request_hash: B256,
        output_hash: B256,
        epoch: u64,
    ) -> Result<B256, ChainError> {
        Ok(self.0.responseDigest(request_hash, output_hash, epoch).call().await?)
    }
}

/// A validator's stake and conduct, as `Validation` records them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatorStanding {
    pub stake: U256,
    pub unbonding: U256,
    pub unbonding_ends_at: u64,
    /// Bonded stake non-zero and at least `minValidatorStake`.
    pub active: bool,
    /// The active stake of all validators, which quorums are measured against.
    pub total_active_stake: U256,
    pub missed_reveals: u32,
    pub dissents: u32,
    pub total_penalized: U256,
}

/// A validator's challenge results for one node in one epoch, with the salt that hides
/// them until the reveal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub passed: u32,
    pub failed: u32,
    pub salt: B256,
}

/// The latest block's timestamp: the chain's clock, which close windows and epochs run on.
pub async fn latest_block_time(provider: &DynProvider) -> Result<u64, ChainError> {
    Ok(latest_block(provider).await?.0)
}

/// The latest block's time and number.
async fn latest_block(provider: &DynProvider) -> Result<(u64, u64), ChainError> {
    let block = provider
        .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
        .await?
        .ok_or_else(|| ChainError::Rpc("no latest block".into()))?;
    Ok((block.header.timestamp, block.header.number))
}
