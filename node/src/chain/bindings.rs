//! Contract bindings generated from the ABI + bytecode artifacts committed in
//! `node/artifacts/` (written by `scripts/export-artifacts` from `forge build`).

#![allow(missing_docs, clippy::too_many_arguments)]

alloy::sol!(
    #[sol(rpc, all_derives)]
    BTT,
    "artifacts/BTT.json"
);
alloy::sol!(
    #[sol(rpc, all_derives)]
    NodeRegistry,
    "artifacts/NodeRegistry.json"
);
alloy::sol!(
    #[sol(rpc, all_derives)]
    PaymentChannels,
    "artifacts/PaymentChannels.json"
);
alloy::sol!(
    #[sol(rpc, all_derives)]
    Validation,
    "artifacts/Validation.json"
);
