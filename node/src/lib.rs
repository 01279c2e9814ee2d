//! InferGrid: a node of a decentralized inference network paid per token in BTT.
//!
//! - [`chain`]: contract bindings, deployment and typed clients;
//! - [`pay`]: EIP-712 vouchers against payment channels;
//! - [`validate`]: response attestations, challenge sets, the judge, result books;
//! - [`validator`]: challenges sent through the swarm and judged;
//! - [`devnet`]: a local anvil chain with every role provisioned;
//! - [`tools`]: where `scripts/setup` put anvil, forge and `libonnxruntime`.

pub mod api;
pub mod blocking;
pub mod chain;
pub mod dashboard;
pub mod devnet;
pub mod eip712;
pub mod engine;
pub mod gateway;
pub mod generate;
pub mod identity;
pub mod model;
pub mod net;
pub mod netlab;
pub mod pay;
pub mod route;
pub mod serve;
pub mod share;
pub mod telemetry;
pub mod tools;
pub mod validate;
pub mod validator;
pub mod when;
