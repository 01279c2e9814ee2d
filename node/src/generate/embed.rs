use tokenizers::Tokenizer;

use crate::engine::{EncoderMask, EngineError, Pipeline};

/// Sentence embeddings from an encoder model: mean over the attended positions, then L2
/// normalization when the manifest's pooling asks for it.
pub fn embed_texts(
    pipeline: &Pipeline,
    tokenizer: &Tokenizer,
    texts: &[String],
) -> Result<Vec<Vec<f32>>, EngineError> {
    let manifest = pipeline.manifest();
    let pooling = manifest.pooling.as_ref().ok_or(EngineError::WrongKind {
        found: "decoder",
        wanted: "embeddings need an encoder model",
    })?;
    texts
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
            let tokens = pipeline.encode(&ids, &mask)?;
            let hidden = manifest.config.hidden_size;
            let mut pooled = vec![0f64; hidden];
            let mut count = 0f64;
            for (row, &m) in tokens.data().chunks_exact(hidden).zip(&mask.attention_mask) {
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
        .collect()
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let na: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    (dot / (na * nb).max(1e-12)) as f32
}
