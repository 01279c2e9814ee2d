//! Paying nodes: cumulative EIP-712 vouchers against on-chain payment channels.

mod voucher;

pub use voucher::{SignedVoucher, Voucher, VoucherError, channels_domain};
