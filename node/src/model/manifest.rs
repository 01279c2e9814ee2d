use std::path::{Path, PathBuf};

use alloy::primitives::B256;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The manifest format this node reads.
pub const FORMAT: &str = "infergrid-model/1";

/// Model families the importer produces and the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Llama,
    Gpt2,
    Bert,
}

impl Architecture {
    /// Decoders generate text with a KV cache; encoders produce embeddings.
    pub fn is_decoder(self) -> bool {
        matches!(self, Architecture::Llama | Architecture::Gpt2)
    }
}

/// Dimensions of the whole model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub intermediate_size: usize,
    pub max_positions: usize,
    pub norm_eps: f64,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    pub tie_word_embeddings: bool,
    pub source_dtype: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizerSpec {
    pub file: String,
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// The model's Jinja chat template file, if it has one (listed in `files`).
    #[serde(default)]
    pub chat_template: Option<String>,
}

/// Sentence-embedding pooling of an encoder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pooling {
    pub mode: String,
    pub normalize: bool,
}

/// A graph input or output: name, element type and shape (numbers, or symbolic dims such as
/// `"seq"`, `"past"`, `"total"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<Value>,
}

impl TensorSpec {
    /// The fixed size of dimension `axis`, or `None` when it is symbolic.
    pub fn fixed_dim(&self, axis: usize) -> Option<usize> {
        self.shape.get(axis).and_then(Value::as_u64).map(|d| d as usize)
    }
}

/// Where one weight lives in a block's weights file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorLocation {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub length: usize,
}

/// One layer block: an ONNX graph plus its weights file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockSpec {
    pub index: usize,
    pub first_layer: usize,
    pub last_layer: usize,
    pub graph: String,
    pub weights: String,
    pub weight_bytes: u64,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub tensors: Vec<TensorLocation>,
}

impl BlockSpec {
    /// Global indices of the layers this block runs.
    pub fn layers(&self) -> std::ops::RangeInclusive<usize> {
        self.first_layer..=self.last_layer
    }
}

/// `manifest.json` of an imported model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelManifest {
    pub format: String,
    pub model_id: String,
    pub name: String,
    pub architecture: Architecture,
    pub config: ModelConfig,
    pub tokenizer: TokenizerSpec,
    pub pooling: Option<Pooling>,
    pub blocks: Vec<BlockSpec>,
    pub files: std::collections::BTreeMap<String, String>,
    /// Every file cut into pieces with their hashes, under the model id: what nodes fetch
    /// from each other. Imports from before pieces have none (and cannot be seeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pieces: Option<super::Pieces>,
    /// The folder the manifest was read from (not serialized).
    #[serde(skip)]
    pub dir: PathBuf,
    /// The bytes it was read from: a manifest with pieces is identified by them.
    #[serde(skip)]
    pub bytes: Vec<u8>,
}

/// A model folder that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not an InferGrid model manifest: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{path}: unsupported architecture {found:?}; supported: llama, gpt2, bert (import with `infergrid model import`)"
    )]
    UnsupportedArchitecture { path: PathBuf, found: String },
}

impl ModelManifest {
    /// Reads `DIR/manifest.json` and checks that it is internally consistent.
    pub fn load(dir: &Path) -> Result<Self, ManifestError> {
        let path = dir.join("manifest.json");
        let bytes = std::fs::read(&path)
            .map_err(|source| ManifestError::Io { path: path.clone(), source })?;
        Self::from_bytes(&bytes, dir)
    }

    fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("format {:?}, expected {FORMAT:?}", self.format));
        }
        if self.model_id.parse::<B256>().is_err() {
            return Err(format!("model id {:?} is not 0x and 64 hex digits", self.model_id));
        }
        if self.blocks.is_empty() {
            return Err("no blocks".into());
        }
        if let Some(template) = &self.tokenizer.chat_template
            && !self.files.contains_key(template)
        {
            return Err(format!("chat template {template} has no hash"));
        }
        if let Some(bad) = self.files.keys().find(|name| !is_plain_file_name(name)) {
            return Err(format!("file name {bad:?} is not a plain file name"));
        }
        if let Some(pieces) = &self.pieces {
            pieces.check(&self.files)?;
        }
        let mut next_layer = 0;
        for (i, block) in self.blocks.iter().enumerate() {
            if block.index != i
                || block.first_layer != next_layer
                || block.last_layer < block.first_layer
            {
                return Err(format!(
                    "block {i} does not continue the layer ranges at layer {next_layer}"
                ));
            }
            next_layer = block.last_layer + 1;
            for file in [&block.graph, &block.weights] {
                if !self.files.contains_key(file) {
                    return Err(format!("block {i} file {file} has no hash"));
                }
            }
            for t in &block.tensors {
                let elements: usize = t.shape.iter().product();
                // float32 weights, or the packed bytes of a quantized matrix.
                let element_bytes = match t.dtype.as_str() {
                    "float32" => 4,
                    "uint8" => 1,
                    _ => 0,
                };
                if element_bytes == 0
                    || t.length != elements * element_bytes
                    || t.offset as u64 + t.length as u64 > block.weight_bytes
                {
                    return Err(format!(
                        "block {i} tensor {} has an inconsistent location",
                        t.name
                    ));
                }
            }
        }
        if next_layer != self.config.num_layers {
            return Err(format!(
                "blocks cover {next_layer} layers, the model has {}",
                self.config.num_layers
            ));
        }
        Ok(())
    }

    /// Parses and checks a manifest read as `bytes` (from `dir`, or from a peer for `dir`).
    /// One parse for both, so a manifest a node loads is one its fetchers take: the struct
    /// straight from the bytes (a duplicated key is refused), after the architecture is
    /// checked for a clearer error.
    pub fn from_bytes(bytes: &[u8], dir: &Path) -> Result<Self, ManifestError> {
        let path = dir.join("manifest.json");
        let invalid = |reason: String| ManifestError::Invalid { path: path.clone(), reason };
        let raw: Value = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        if let Some(found) = raw.get("architecture").and_then(Value::as_str)
            && !["llama", "gpt2", "bert"].contains(&found)
        {
            let found = found.to_owned();
            return Err(ManifestError::UnsupportedArchitecture { path, found });
        }
        let mut manifest: ModelManifest =
            serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        manifest.dir = dir.to_path_buf();
        manifest.bytes = bytes.to_vec();
        manifest.check().map_err(invalid)?;
        Ok(manifest)
    }

    /// The model id its contents derive (`model-format.md`, "Model id"), which a manifest
    /// from a peer must carry (and the caller must have asked for): of its bytes when it
    /// lists pieces, of its file hashes when it is an earlier import's.
    pub fn derived_id(&self) -> Result<String, String> {
        match self.pieces {
            Some(_) => super::manifest_model_id(&self.bytes, &self.model_id),
            None => Ok(super::files_model_id(&self.files)),
        }
    }

    /// The model id as 32 bytes (checked when the manifest is loaded).
    pub fn id(&self) -> B256 {
        self.model_id.parse().expect("checked at load")
    }

    /// The block with `index`.
    pub fn block(&self, index: usize) -> Option<&BlockSpec> {
        self.blocks.get(index)
    }

    /// Path of a file of this model.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

/// A name that stays inside the model folder and keeps the model id's lines unambiguous:
/// no path separators, no whitespace, not `.`/`..`, not the manifest itself.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !matches!(name, "." | ".." | "manifest.json")
        && !name.chars().any(|c| c == '/' || c == '\\' || c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::is_plain_file_name;

    #[test]
    fn file_names_stay_in_the_model_folder() {
        for good in ["block-0.onnx", "tokenizer.json", "chat_template.jinja", ".hidden"] {
            assert!(is_plain_file_name(good), "{good}");
        }
        let long = "a".repeat(256);
        for bad in ["", ".", "..", "manifest.json", "../x", "a/b", "a\\b", "a b", "a\nb", &long] {
            assert!(!is_plain_file_name(bad), "{bad:?}");
        }
    }
}
