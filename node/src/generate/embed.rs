use tokenizers::Tokenizer;

use crate::engine::{Activation, EncoderMask, EngineError, Pipeline};
use crate::model::Pooling;

/// Anything that runs an encoder over one tokenized input and returns the final token
/// embeddings `[1, S, hidden]`: the in-process pipeline, or a route through the swarm.
pub trait TokenEncoder {
    fn encode_tokens(&self, ids: &[i64], mask: &EncoderMask) -> Result<Activation, EngineError>;
}

impl TokenEncoder for Pipeline {
    fn encode_tokens(&self, ids: &[i64], mask: &EncoderMask) -> Result<Activation, EngineError> {
        self.encode(ids, mask)
    }
}

/// Sentence embeddings from a local encoder model, pooled as its manifest says.
pub fn embed_texts(
    pipeline: &Pipeline,
    tokenizer: &Tokenizer,
    texts: &[String],
) -> Result<Vec<Vec<f32>>, EngineError> {
    let pooling = pipeline.manifest().pooling.clone().ok_or(EngineError::WrongKind {
        found: "decoder",
        wanted: "embeddings need an encoder model",
    })?;
    Ok(pool_texts(pipeline, tokenizer, &pooling, texts)?.0)
}

/// Sentence embeddings through any encoder: mean over the attended positions, then L2
/// normalization when `pooling` asks for it. Also returns the number of input tokens.
pub fn pool_texts(
    encoder: &dyn TokenEncoder,
    tokenizer: &Tokenizer,
    pooling: &Pooling,
    texts: &[String],
) -> Result<(Vec<Vec<f32>>, usize), EngineError> {
    let mut tokens_used = 0;
    let embeddings = texts
        .iter()
        .map(|text| {
            let enc = tokenizer
                .encode(text.as_str(), true)
                .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
            let ids: Vec<i64> = enc.get_ids().iter().map(|&i| i as i64).collect();
            let mask = EncoderMask {
                attention_mask: enc.get_attention_mask().iter().map(|&m| m as i64).collect(),
                token_type_ids: enc.get_type_ids().iter().map(|&t| t as i64).collect(),
            };
            tokens_used += mask.attention_mask.iter().filter(|&&m| m != 0).count();
            let tokens = encoder.encode_tokens(&ids, &mask)?;
            let hidden = *tokens.shape().last().unwrap_or(&0);
            let mut pooled = vec![0f64; hidden];
            let mut count = 0f64;
            for (row, &m) in tokens.data().chunks_exact(hidden.max(1)).zip(&mask.attention_mask) {
                if m != 0 {
                    count += 1.0;
                    pooled.iter_mut().zip(row).for_each(|(p, &v)| *p += v as f64);
                }
            }
            pooled.iter_mut().for_each(|p| *p /= count.max(1.0));
            if pooling.normalize {
                let norm = pooled.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
                pooled.iter_mut().for_each(|p| *p /= norm);
            }
            Ok(pooled.into_iter().map(|v| v as f32).collect())
        })
        .collect::<Result<_, EngineError>>()?;
    Ok((embeddings, tokens_used))
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let na: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    (dot / (na * nb).max(1e-12)) as f32
}
