//! OpenAI response bodies and stream chunks, built from generated tokens.

use serde_json::{Value, json};
use tokenizers::Tokenizer;

use super::request::Output;
use crate::generate::{FinishReason, GeneratedToken, Generation};

/// Names tokens in log-probabilities: by their text, or `token_id:N` (vLLM's
/// `return_tokens_as_token_ids`, for clients that need ids where texts collide).
pub struct TokenNames<'a> {
    pub tokenizer: &'a Tokenizer,
    pub as_ids: bool,
}

impl TokenNames<'_> {
    fn name(&self, id: u32) -> String {
        if self.as_ids {
            format!("token_id:{id}")
        } else {
            self.tokenizer.decode(&[id], false).unwrap_or_default()
        }
    }
}

/// Identifies one answer: its id, model and creation time, on every chunk.
pub struct Answer<'a> {
    pub id: &'a str,
    pub model: &'a str,
    pub created: u64,
}

fn finish(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

/// Token usage of the choices (`per_prompt` for each prompt): each prompt counts once.
fn choices_usage(generations: &[Generation], per_prompt: usize) -> Value {
    let prompt: usize =
        generations.iter().step_by(per_prompt.max(1)).map(|g| g.prompt_ids.len()).sum();
    let completion: usize = generations.iter().map(|g| g.tokens.len()).sum();
    let mut usage = json!({
        "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
    });
    // An extension: what speculative decoding drafted and the model accepted.
    let drafted: usize = generations.iter().map(|g| g.drafted).sum();
    if drafted > 0 {
        let accepted: usize = generations.iter().map(|g| g.accepted).sum();
        let steps: usize = generations.iter().map(|g| g.verify_steps).sum();
        usage["speculation"] =
            json!({"drafted_tokens": drafted, "accepted_tokens": accepted, "verify_steps": steps});
    }
    usage
}

/// A completion's `logprobs` for `tokens`, whose text starts at character `offset` of the
/// output (`text_offset` counts characters, as OpenAI's does).
fn completion_logprobs(tokens: &[GeneratedToken], mut offset: usize, names: &TokenNames) -> Value {
    let offsets: Vec<usize> = tokens
        .iter()
        .map(|t| {
            let at = offset;
            offset += t.text_delta.chars().count();
            at
        })
        .collect();
    json!({
        "tokens": tokens.iter().map(|t| names.name(t.choice.id)).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| t.choice.logprob).collect::<Vec<_>>(),
        "top_logprobs": tokens.iter().map(|t| {
            t.choice.top.iter().map(|(id, lp)| (names.name(*id), json!(lp))).collect::<serde_json::Map<_, _>>()
        }).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

/// Puts the prompt's tokens before the completion's in `logprobs` (`echo`): the first has no
/// log-probability (nothing comes before it), the others the model's given those before.
fn echo_logprobs(logprobs: &mut Value, g: &Generation, names: &TokenNames) {
    let prompt = &g.prompt_ids;
    let mut offsets = Vec::with_capacity(prompt.len());
    let mut decoded = 0;
    for end in 1..=prompt.len() {
        offsets.push(decoded);
        decoded =
            names.tokenizer.decode(&prompt[..end], true).map_or(decoded, |t| t.chars().count());
    }
    let scored = std::iter::once(None).chain(g.prompt_logprobs.iter().map(Some));
    let mut prepend = |key: &str, prompt_values: Vec<Value>| {
        let completion = logprobs[key].as_array().cloned().unwrap_or_default();
        logprobs[key] = prompt_values.into_iter().chain(completion).collect();
    };
    let (mut tokens, mut token_logprobs, mut top) = (Vec::new(), Vec::new(), Vec::new());
    for (&id, choice) in prompt.iter().zip(scored) {
        tokens.push(json!(names.name(id)));
        token_logprobs.push(choice.map_or(Value::Null, |c| json!(c.logprob)));
        top.push(choice.map_or(Value::Null, |c| {
            c.top
                .iter()
                .map(|(id, lp)| (names.name(*id), json!(lp)))
                .collect::<serde_json::Map<_, _>>()
                .into()
        }));
    }
    prepend("tokens", tokens);
    prepend("token_logprobs", token_logprobs);
    prepend("top_logprobs", top);
    prepend("text_offset", offsets.into_iter().map(Value::from).collect());
}

/// A chat answer's `logprobs` for `tokens`.
fn chat_logprobs(tokens: &[GeneratedToken], names: &TokenNames) -> Value {
    let entry = |id: u32, logprob: f32| {
        let token = names.name(id);
        json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()})
    };
    json!({"content": tokens.iter().map(|t| {
        let mut chosen = entry(t.choice.id, t.choice.logprob);
        chosen["top_logprobs"] = t.choice.top.iter().map(|&(id, lp)| entry(id, lp)).collect();
        chosen
    }).collect::<Vec<_>>()})
}

/// The whole answer of `/v1/completions`: one choice per generation.
pub fn completion_response(
    answer: &Answer,
    generations: &[Generation],
    output: &Output,
    names: &TokenNames,
) -> Value {
    let choices: Vec<Value> = generations
        .iter()
        .enumerate()
        .map(|(index, g)| {
            let prompt = index / output.choices_per_prompt.max(1);
            let echo = output.echo.get(prompt).map_or("", String::as_str);
            let mut logprobs = output
                .logprobs
                .map(|_| completion_logprobs(&g.tokens, echo.chars().count(), names));
            if let (Some(logprobs), false) = (&mut logprobs, output.echo.is_empty()) {
                echo_logprobs(logprobs, g, names);
            }
            json!({
                "index": index, "text": format!("{echo}{}", g.text), "logprobs": logprobs,
                "finish_reason": finish(g.finish_reason),
                // Extension: the generated token ids, for clients comparing outputs exactly.
                "token_ids": g.tokens.iter().map(|t| t.choice.id).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "id": answer.id, "object": "text_completion", "created": answer.created, "model": answer.model,
        "choices": choices, "usage": choices_usage(generations, output.choices_per_prompt),
    })
}

/// The whole answer of `/v1/chat/completions`: one choice per generation.
pub fn chat_response(
    answer: &Answer,
    generations: &[Generation],
    output: &Output,
    names: &TokenNames,
) -> Value {
    let choices: Vec<Value> = generations
        .iter()
        .enumerate()
        .map(|(index, g)| {
            let logprobs = output.logprobs.map(|_| chat_logprobs(&g.tokens, names));
            json!({
                "index": index,
                "message": {"role": "assistant", "content": g.text},
                "logprobs": logprobs,
                "finish_reason": finish(g.finish_reason),
            })
        })
        .collect();
    json!({
        "id": answer.id, "object": "chat.completion", "created": answer.created, "model": answer.model,
        "choices": choices, "usage": choices_usage(generations, output.choices_per_prompt),
    })
}

/// What one streamed chunk carries.
pub struct Delta<'a> {
    /// The choice it belongs to.
    pub index: usize,
    /// Text to append (a token's, or the held-back tail with the finish).
    pub text: &'a str,
    /// The token it came from, if any.
    pub token: Option<&'a GeneratedToken>,
    /// Character offset of `text` in the output (completions' `text_offset`).
    pub offset: usize,
    pub finish: Option<FinishReason>,
}

/// One chunk of a `/v1/completions` stream.
pub fn completion_chunk(
    answer: &Answer,
    delta: &Delta,
    output: &Output,
    names: &TokenNames,
) -> Value {
    let tokens = delta.token.map(std::slice::from_ref).unwrap_or_default();
    let logprobs = output.logprobs.map(|_| completion_logprobs(tokens, delta.offset, names));
    let choice = json!({
        "index": delta.index, "text": delta.text, "logprobs": logprobs, "finish_reason": delta.finish.map(finish),
        // Extension, as in the whole answer: the chunk's token ids.
        "token_ids": tokens.iter().map(|t| t.choice.id).collect::<Vec<_>>(),
    });
    stream_chunk(answer, "text_completion", choice, output)
}

/// A streamed chunk around one `choice`: with `include_usage`, every chunk but the last
/// carries `usage: null`.
fn stream_chunk(answer: &Answer, object: &str, choice: Value, output: &Output) -> Value {
    let mut chunk = json!({
        "id": answer.id, "object": object, "created": answer.created, "model": answer.model,
        "choices": [choice],
    });
    if output.include_usage {
        chunk["usage"] = Value::Null;
    }
    chunk
}

/// One chunk of a `/v1/chat/completions` stream; the first one carries the role.
pub fn chat_chunk(
    answer: &Answer,
    delta: &Delta,
    output: &Output,
    names: &TokenNames,
    first: bool,
) -> Value {
    let tokens = delta.token.map(std::slice::from_ref).unwrap_or_default();
    let mut message = serde_json::Map::new();
    if first {
        message.insert("role".into(), json!("assistant"));
    }
    if delta.finish.is_none() || !delta.text.is_empty() {
        message.insert("content".into(), json!(delta.text));
    }
    let logprobs =
        output.logprobs.filter(|_| !tokens.is_empty()).map(|_| chat_logprobs(tokens, names));
    let choice = json!({
        "index": delta.index, "delta": message, "logprobs": logprobs, "finish_reason": delta.finish.map(finish),
    });
    stream_chunk(answer, "chat.completion.chunk", choice, output)
}

/// The chunk that ends a stream with `stream_options.include_usage`: no choices, the usage.
pub fn usage_chunk(
    answer: &Answer,
    object: &str,
    generations: &[Generation],
    output: &Output,
) -> Value {
    json!({
        "id": answer.id, "object": object, "created": answer.created, "model": answer.model,
        "choices": [], "usage": choices_usage(generations, output.choices_per_prompt),
    })
}

pub fn embedding_response(
    model: &str,
    embeddings: &[Vec<f32>],
    tokens: usize,
    base64: bool,
) -> Value {
    use base64::Engine;
    let data: Vec<Value> = embeddings
        .iter()
        .enumerate()
        .map(|(index, e)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = e.iter().flat_map(|v| v.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(e)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
}
