//! The validators: every address that ever registered (from `ValidatorRegistered`), with its
//! stake, unbonding and record as of the pinned block.

use alloy::primitives::{Address, U256};
use alloy::rpc::types::Filter;
use alloy::sol_types::SolEvent;

use super::{AuditError, Auditor};
use crate::chain::bindings::Validation as V;

/// One validator as the chain holds it at the pinned block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatorAudit {
    pub validator: Address,
    /// Bonded stake: its weight in quorums.
    pub stake: U256,
    pub unbonding: U256,
    pub unbonding_ends_at: u64,
    /// Whether it may commit results and vote (stake at least the minimum).
    pub active: bool,
    /// Results committed and never revealed, in rounds that did not finalize.
    pub missed_reveals: u32,
    /// Votes against a report's final verdict.
    pub dissents: u32,
    pub total_penalized: U256,
}

impl Auditor {
    /// Every validator that registered up to the pinned block, in registration order.
    pub async fn validators(&self) -> Result<Vec<ValidatorAudit>, AuditError> {
        let registered = Filter::new()
            .address(*self.validation.address())
            .event_signature(V::ValidatorRegistered::SIGNATURE_HASH);
        let mut validators: Vec<Address> = Vec::new();
        for log in self.logs(registered).await? {
            if let Some(topic) = log.topics().get(1) {
                let validator = Address::from_word(*topic);
                if !validators.contains(&validator) {
                    validators.push(validator);
                }
            }
        }
        let at = self.at();
        let mut out = Vec::with_capacity(validators.len());
        for validator in validators {
            let v = &self.validation;
            let (stake, unbonding, active, record) = futures::try_join!(
                async { v.validatorStake(validator).block(at).call().await },
                async { v.validatorUnbonding(validator).block(at).call().await },
                async { v.isValidator(validator).block(at).call().await },
                async { v.getValidatorRecord(validator).block(at).call().await },
            )?;
            out.push(ValidatorAudit {
                validator,
                stake,
                unbonding: unbonding.amount,
                unbonding_ends_at: unbonding.endsAt,
                active,
                missed_reveals: record.missedReveals,
                dissents: record.dissents,
                total_penalized: record.totalPenalized,
            });
        }
        Ok(out)
    }
}
