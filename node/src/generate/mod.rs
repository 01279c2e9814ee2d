//! Text generation and embeddings on top of any forward function: the in-process
//! [`crate::engine::Pipeline`] today, a route through the network tomorrow.

mod chat;
mod draft;
mod embed;
mod sampler;
mod speculate;
mod text;

pub use chat::{ChatFormat, ChatMessage, ChatTemplateError};
pub use draft::{DraftError, ModelDrafter, check_draft, resume_at};
pub use embed::{TokenEncoder, cosine, embed_texts, pool_texts};
pub use sampler::{Sampler, SamplingParams, TokenChoice, argmax};
pub use speculate::{Drafter, PromptLookup, Speculation, verify};
pub use text::{
    FinishReason, GeneratedToken, Generation, GenerationError, Prompt, Request, TextModel,
    generate, generate_speculating,
};
