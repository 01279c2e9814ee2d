//! Text generation and embeddings on top of any forward function: the in-process
//! [`crate::engine::Pipeline`] today, a route through the network tomorrow.

mod chat;
mod embed;
mod sampler;
mod text;

pub use chat::{ChatFormat, ChatMessage, ChatTemplateError};
pub use embed::{TokenEncoder, cosine, embed_texts, pool_texts};
pub use sampler::{Sampler, SamplingParams, TokenChoice, argmax};
pub use text::{
    FinishReason, GeneratedToken, Generation, GenerationError, Prompt, TextModel, generate,
};
