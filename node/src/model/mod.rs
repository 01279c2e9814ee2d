//! Models split into layer blocks: the manifest, its hashes and the model id
//! (`protocol-spec/model-format.md`).

mod manifest;
pub mod pieces;
mod verify;

pub use manifest::{
    Architecture, BlockSpec, ManifestError, ModelConfig, ModelManifest, Pooling, TensorLocation,
    TensorSpec, TokenizerSpec,
};
pub use pieces::{FilePieces, Pieces};
pub use verify::{
    MODEL_ID_PLACEHOLDER, VerifyError, file_sha3, files_model_id, manifest_model_id,
    verify_block_files, verify_held, verify_model,
};
