use alloy::primitives::{Address, B256};
use serde::Deserialize;

/// The role a well-known development account plays on a devnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Deployer,
    Operator,
    Validator,
    Payer,
    Treasury,
}

/// One of anvil's well-known development accounts.
#[derive(Debug, Clone, Deserialize)]
pub struct DevAccount {
    pub index: u32,
    pub role: Role,
    pub address: Address,
    pub private_key: B256,
}

#[derive(Deserialize)]
struct DevAccountsFile {
    accounts: Vec<DevAccount>,
}

/// The accounts of `anvil-fixtures/dev-accounts.json` (anvil's default mnemonic), with the
/// role each plays: 1 deployer, 16 operators, 5 validators, 6 payers (a gateway and one per validator), 1 treasury (a devnet
/// registers the first few of each: `Staffing`).
pub fn dev_accounts() -> Vec<DevAccount> {
    let file: DevAccountsFile =
        serde_json::from_str(include_str!("../../../anvil-fixtures/dev-accounts.json"))
            .expect("anvil-fixtures/dev-accounts.json is valid");
    file.accounts
}

/// The development accounts with `role`, in index order.
pub fn accounts_with(role: Role) -> Vec<DevAccount> {
    dev_accounts().into_iter().filter(|a| a.role == role).collect()
}
