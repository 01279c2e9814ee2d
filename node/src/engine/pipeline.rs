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
        run_chain(&self.blocks, BlockInput::Tokens(tokens.to_vec()), |block, input| {
            block.forward(session, position, input)
        })
    }

    /// Runs an encoder over one tokenized input; returns `token_embeddings` `[1, S, hidden]`.
    pub fn encode(&self, ids: &[i64], mask: &EncoderMask) -> Result<Activation, EngineError> {
        run_chain(&self.blocks, BlockInput::Tokens(ids.to_vec()), |block, input| {
            block.encode(input, mask)
        })
    }

    /// Forgets `session` in every block.
    pub fn close(&self, session: u64) {
        for block in &self.blocks {
            block.close(session);
        }
    }
}

/// Runs `input` through consecutive `blocks`, each block's output moving into the next, and
/// returns the last output: the chaining both the in-process pipeline and a node's span use.
pub fn run_chain<'a>(
    blocks: impl IntoIterator<Item = &'a BlockRunner>,
    input: BlockInput,
    mut run: impl FnMut(&BlockRunner, BlockInput) -> Result<Activation, EngineError>,
) -> Result<Activation, EngineError> {
    let mut blocks = blocks.into_iter();
    let first = blocks.next().ok_or(EngineError::NoSuchBlock { index: 0, count: 0 })?;
    blocks.try_fold(run(first, input)?, |output, block| run(block, BlockInput::Hidden(output)))
}
