//! `infergrid validator`: a validator's stake in the `Validation` contract. Validators weigh
//! in every result round and fault vote by the stake they had at the round's snapshot.

use alloy::primitives::{Address, U256};
use clap::{Args, Subcommand};
use infergrid::chain::ValidationClient;
use infergrid::chain::audit::format_tokens;

use super::keys::KeyArgs;
use super::operator::{parse_amount, report};

/// Where and as whom a validator command runs.
#[derive(Debug, Args)]
#[command(mut_arg("key_env", |a| a.default_value("INFERGRID_VALIDATOR_KEY")))]
pub struct ValidatorArgs {
    #[command(flatten)]
    chain: super::ChainTarget,
    /// The validator's key: its address holds the stake (challenges are paid from other
    /// payer accounts, so nodes cannot tell them from user traffic).
    #[command(flatten)]
    key: KeyArgs,
    #[command(subcommand)]
    command: ValidatorCommand,
}

#[derive(Debug, Subcommand)]
enum ValidatorCommand {
    /// Stake and register as a validator (at least the contract's minValidatorStake).
    Register {
        /// Stake to bond, e.g. `1000BTT`.
        #[arg(long)]
        stake: String,
    },
    /// Add stake.
    Stake { amount: String },
    /// Move stake into unbonding. It keeps weighing in, and can be penalized in, the rounds
    /// whose snapshot it was part of; it can be withdrawn after the unbonding period.
    Unbond { amount: String },
    /// Withdraw stake whose unbonding period has passed.
    Withdraw,
    /// Print the validator's stake, weight and record (default: this validator's).
    Status {
        #[arg(long)]
        address: Option<Address>,
    },
}

pub async fn run(args: ValidatorArgs) -> anyhow::Result<()> {
    let key = args.key.secret()?;
    let (deployment, account) = args.chain.account(&key).await?;
    let c = account.contracts(&deployment);
    let validation = deployment.contracts.validation;
    match args.command {
        ValidatorCommand::Register { stake } => {
            let stake = parse_amount(&stake)?;
            report("approve", &c.token.approve(validation, stake).await?);
            report("register", &c.validation.register_validator(stake).await?);
        }
        ValidatorCommand::Stake { amount } => {
            let amount = parse_amount(&amount)?;
            report("approve", &c.token.approve(validation, amount).await?);
            report("stake", &c.validation.add_validator_stake(amount).await?);
        }
        ValidatorCommand::Unbond { amount } => {
            report("unbond", &c.validation.request_validator_unbond(parse_amount(&amount)?).await?)
        }
        ValidatorCommand::Withdraw => {
            report("withdraw", &c.validation.withdraw_validator_stake().await?)
        }
        ValidatorCommand::Status { address } => {
            return status(&c.validation, address.unwrap_or(account.address)).await;
        }
    }
    status(&c.validation, account.address).await
}

/// The validator's standing, with its share of the quorum weight.
async fn status(validation: &ValidationClient, validator: Address) -> anyhow::Result<()> {
    let v = validation.validator(validator).await?;
    let clock = validation.epoch_clock().await?;
    let epoch = validation.current_epoch().await?;
    let share = if v.active && !v.total_active_stake.is_zero() {
        let bps = v.stake * U256::from(10_000) / v.total_active_stake;
        format!("{:.2}%", bps.to::<u64>() as f64 / 100.0)
    } else {
        "0%".into()
    };
    println!("validator {validator}");
    println!("  stake            {}", format_tokens(v.stake));
    println!("  active           {}", v.active);
    println!(
        "  weight           {share} of the active validator stake ({})",
        format_tokens(v.total_active_stake)
    );
    println!("  unbonding        {}", format_tokens(v.unbonding));
    if !v.unbonding.is_zero() {
        println!("  withdrawable at  {} (unix time)", v.unbonding_ends_at);
    }
    println!(
        "  record           {} missed reveals, {} dissents, {} penalized",
        v.missed_reveals,
        v.dissents,
        format_tokens(v.total_penalized)
    );
    println!("  epoch            {epoch} ({} s each, genesis {})", clock.duration, clock.genesis);
    Ok(())
}
