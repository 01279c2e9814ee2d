//! Paying nodes: cumulative EIP-712 vouchers against on-chain payment channels.
//!
//! - [`meter`]: what a step costs (block-tokens at a node's registered price);
//! - [`Collector`]: a node checking, storing ([`Ledger`]) and redeeming vouchers;
//! - [`Wallet`]: a gateway opening channels and signing vouchers for what it used.

mod collector;
mod ledger;
mod lookups;
pub mod meter;
mod settle;
mod store;
mod voucher;
mod wallet;

pub use collector::{ChannelStanding, Charge, Collector, DEFAULT_CONFIRMATIONS, PaymentError};
pub use ledger::{ChannelRecord, Ledger};
pub use lookups::{LOOKUP_BURST, LOOKUP_REFILL, LookupBudget};
pub use settle::{RedeemPolicy, Settlement, batch_gas};
pub use store::StoreError;
pub use voucher::{SignedVoucher, Voucher, VoucherError, channels_domain};
pub use wallet::{NodeTerms, Tab, Wallet, WalletConfig, WalletError};
