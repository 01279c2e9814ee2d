use super::kv::CacheLimits;
use super::{Activation, BlockInput, BlockRunner, EncoderMask, EngineError, Runtime};
use crate::model::{ModelManifest, verify_block_files};

/// All blocks of one model chained in this process, through the same [`BlockRunner`] calls a
/// node makes for requests from peers: the reference the network path must match.
#[derive(Debug)]
pub struct Pipeline {
    manifest: ModelManifest,
    blocks: Vec<BlockRunner>,
}

impl Pipeline {
    /// Loads every block of the model in `dir`, after checking each block file's hash.
    pub fn load(
        dir: &std::path::Path,
        runtime: &Runtime,
        limits: CacheLimits,
    ) -> Result<Self, EngineError> {
        let manifest = ModelManifest::load(dir)?;
        let blocks = (0..manifest.blocks.len())
            .map(|i| {
                verify_block_files(&manifest, &manifest.blocks[i])?;
                BlockRunner::load(&manifest, i, runtime, limits)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { manifest, blocks })
    }

    pub fn manifest(&self) -> &ModelManifest {
        &self.manifest
    }

    pub fn blocks(&self) -> &[BlockRunner] {
        &self.blocks
    }

    /// Bytes of weights mapped by all blocks.
    pub fn weight_bytes(&self) -> usize {
        self.blocks.iter().map(BlockRunner::weight_bytes).sum()
    }

    /// Runs `tokens` (positions `position..`) of `session` through every block and returns
    /// the logits `[1, len, vocab]`.
    pub fn step(
        &self,
        session: u64,
        position: usize,
        tokens: &[i64],
    ) -> Result<Activation, EngineError> {
        let mut input = BlockInput::Tokens(tokens.to_vec());
        let mut output = None;
        for block in &self.blocks {
            let out = block.forward(session, position, input)?;
            input = BlockInput::Hidden(out.clone());
            output = Some(out);
        }
        output.ok_or(EngineError::NoSuchBlock { index: 0, count: 0 })
    }

    /// Runs an encoder over one tokenized input; returns `token_embeddings` `[1, S, hidden]`.
    pub fn encode(&self, ids: &[i64], mask: &EncoderMask) -> Result<Activation, EngineError> {
        let mut input = BlockInput::Tokens(ids.to_vec());
        let mut output = None;
        for block in &self.blocks {
            let out = block.encode(input, mask)?;
            input = BlockInput::Hidden(out.clone());
            output = Some(out);
        }
        output.ok_or(EngineError::NoSuchBlock { index: 0, count: 0 })
    }

    /// Forgets `session` in every block.
    pub fn close(&self, session: u64) {
        for block in &self.blocks {
            block.close(session);
        }
    }
}
