//! The inference engine: layer blocks run by ONNX Runtime from memory-mapped weights,
//! kept resident, with a bounded per-session KV cache.

mod batch;
mod block;
mod error;
mod kv;
mod pipeline;
mod runtime;
mod tensor;

pub use block::{BatchStep, BlockRunner, EncoderMask};
pub use error::EngineError;
pub use kv::CacheLimits;
pub use pipeline::{Pipeline, run_chain};
pub use runtime::{Device, GpuInfo, Optimization, Runtime};
pub use tensor::{Activation, ActivationError, BlockInput};
