use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use infergrid::engine::{CacheLimits, Device, Pipeline, Runtime};
use infergrid::generate::{
    ChatFormat, ChatMessage, Prompt, SamplingParams, cosine, embed_texts, generate,
};
use serde_json::json;
use tokenizers::Tokenizer;

/// Options shared by every command that loads a model.
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// The model folder (from `infergrid model import`).
    #[arg(long)]
    pub model: PathBuf,
    /// cpu, cuda or cuda:N (needs the onnxruntime-gpu library and a GPU; falls back to CPU).
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// ONNX Runtime intra-op threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl EngineArgs {
    pub fn load(&self) -> anyhow::Result<(Pipeline, Tokenizer)> {
        let runtime = Runtime::new(self.device, self.threads)?;
        if let Some(reason) = runtime.fallback() {
            eprintln!("warning: {reason}");
        }
        if let Some(gpu) = runtime.gpu() {
            eprintln!(
                "device: {} ({:.1} GiB free)",
                gpu.name,
                gpu.free_bytes as f64 / (1u64 << 30) as f64
            );
        }
        let pipeline = Pipeline::load(&self.model, &runtime, CacheLimits::default())?;
        let tokenizer = load_tokenizer(&self.model, &pipeline.manifest().tokenizer.file)?;
        Ok((pipeline, tokenizer))
    }
}

pub fn load_tokenizer(dir: &Path, file: &str) -> anyhow::Result<Tokenizer> {
    let path = dir.join(file);
    Tokenizer::from_file(&path)
        .map_err(|e| anyhow::anyhow!("cannot load tokenizer {}: {e}", path.display()))
}

#[derive(Debug, Args)]
pub struct InferArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Send the prompt as a user message through the model's chat template (as
    /// /v1/chat/completions does) instead of continuing it as raw text.
    #[arg(long)]
    chat: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep only the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when the output contains this text (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Print one JSON object: token ids, text and per-token top-5 log-probs.
    #[arg(long)]
    json: bool,
}

pub fn infer(args: InferArgs) -> anyhow::Result<()> {
    let (pipeline, tokenizer) = args.engine.load()?;
    let params = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        top_logprobs: 5,
        ..Default::default()
    };
    let stream = !args.json;
    let format = ChatFormat::load(pipeline.manifest(), &tokenizer)?;
    let rendered = if args.chat {
        let message = ChatMessage { role: "user".into(), content: args.prompt.clone() };
        Some(format.render(std::slice::from_ref(&message))?)
    } else {
        None
    };
    let prompt = match &rendered {
        Some(rendered) => format.prompt(rendered),
        None => Prompt::Text(&args.prompt),
    };
    let mut stdout = std::io::stdout();
    let generation = generate(
        &mut &pipeline,
        &tokenizer,
        1,
        prompt,
        args.max_tokens,
        &args.stop,
        params,
        |token| {
            if stream {
                let _ = write!(stdout, "{}", token.text_delta);
                let _ = stdout.flush();
            }
            std::ops::ControlFlow::Continue(())
        },
    )?;
    if args.json {
        let tokens: Vec<_> = generation
            .tokens
            .iter()
            .map(|t| {
                json!({
                    "id": t.choice.id,
                    "text": t.text_delta,
                    "logprob": t.choice.logprob,
                    "top_logprobs": t.choice.top.iter().map(|(id, lp)| json!({"id": id, "logprob": lp})).collect::<Vec<_>>(),
                })
            })
            .collect();
        let out = json!({
            "model_id": pipeline.manifest().model_id,
            "prompt_ids": generation.prompt_ids,
            "token_ids": generation.tokens.iter().map(|t| t.choice.id).collect::<Vec<_>>(),
            "text": generation.text,
            "finish_reason": generation.finish_reason,
            "tokens": tokens,
        });
        println!("{out}");
    } else {
        // Output held back as the possible start of a stop string that never came.
        println!("{}", generation.tail);
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// Print JSON: the embeddings and their pairwise cosine similarities.
    #[arg(long)]
    json: bool,
    /// Sentences to embed.
    #[arg(required = true)]
    sentences: Vec<String>,
}

pub fn embed(args: EmbedArgs) -> anyhow::Result<()> {
    let (pipeline, tokenizer) = args.engine.load()?;
    let embeddings = embed_texts(&pipeline, &tokenizer, &args.sentences).context("embedding")?;
    let n = embeddings.len();
    let similarity: Vec<Vec<f32>> =
        (0..n).map(|i| (0..n).map(|j| cosine(&embeddings[i], &embeddings[j])).collect()).collect();
    if args.json {
        println!(
            "{}",
            json!({"model_id": pipeline.manifest().model_id, "embeddings": embeddings, "cosine": similarity})
        );
    } else {
        for (sentence, e) in args.sentences.iter().zip(&embeddings) {
            let head: Vec<String> = e.iter().take(4).map(|v| format!("{v:.4}")).collect();
            println!("{sentence:?}: [{}, …] ({} dims)", head.join(", "), e.len());
        }
        for (i, row) in similarity.iter().enumerate() {
            for (j, value) in row.iter().enumerate().skip(i + 1) {
                println!("cosine({i}, {j}) = {value:.4}");
            }
        }
    }
    Ok(())
}
