use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use infergrid::model::{ModelManifest, verify_held, verify_model};
use infergrid::tools;

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Turn a Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer.json)
    /// into InferGrid layer blocks: a manifest plus one ONNX graph and weights file per block.
    /// Llama, GPT-2 and BERT-style encoders; float32, float16 or bfloat16 weights. Or a
    /// llama.cpp GGUF file (llama architecture, F32/F16/BF16 or Q4/Q5/Q8 and K-quant weights),
    /// dequantized and converted to such a folder first.
    Import(ImportArgs),
    /// Fetch blocks of a model from the peers that seed them (the registry's nodes on those
    /// blocks, DHT provider records, --fetch-from peers): pieces from several peers at
    /// once, each checked against the model id; a stopped fetch resumes where it was.
    Fetch(super::fetch::FetchArgs),
    /// Check every file of a model folder against the hashes in its manifest.
    Verify {
        /// The model folder (holding manifest.json).
        dir: PathBuf,
        /// A folder holding some blocks only (fetched): check the files there and say which
        /// blocks they are, instead of failing on the others.
        #[arg(long)]
        partial: bool,
    },
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Hugging Face checkpoint folder.
    #[arg(long, conflicts_with = "gguf", required_unless_present = "gguf")]
    hf: Option<PathBuf>,
    /// llama.cpp GGUF file; converted into a temporary folder beside --out, then imported.
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// With --gguf: the dtype the quantized weights are dequantized to before the import
    /// (f16 halves the temporary folder; the blocks are float32 either way).
    #[arg(long, value_enum)]
    dtype: Option<GgufDtype>,
    /// Output model folder.
    #[arg(long)]
    out: PathBuf,
    /// Split the layers evenly into N blocks.
    #[arg(long, conflicts_with = "layers", required_unless_present = "layers")]
    blocks: Option<usize>,
    /// Explicit inclusive layer ranges, e.g. 0-3,4-7,8-11.
    #[arg(long)]
    layers: Option<String>,
    /// Model name recorded in the manifest (default: the checkpoint folder's name, or the
    /// GGUF file's name without .gguf).
    #[arg(long)]
    name: Option<String>,
    /// Bytes per piece, the unit nodes fetch from each other and check one at a time: a
    /// power of two from 16384 to 4194304.
    #[arg(long, default_value_t = infergrid::model::pieces::DEFAULT_PIECE_BYTES)]
    piece_bytes: u64,
    /// Store the layers' matrices quantized (blocks of 32 weights with a float scale each,
    /// ONNX Runtime's MatMulNBits): a smaller, faster copy, e.g. a draft model. Embeddings,
    /// norms and the head stay float32.
    #[arg(long, value_enum)]
    quantize: Option<Quantize>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Quantize {
    /// 8 bits a weight.
    Int8,
    /// 4 bits a weight.
    Int4,
}

impl Quantize {
    /// The importer's spelling.
    pub(super) const fn importer_name(self) -> &'static str {
        match self {
            Self::Int8 => "int8",
            Self::Int4 => "int4",
        }
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum GgufDtype {
    F32,
    F16,
}

impl GgufDtype {
    /// The importer's spelling.
    const fn importer_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F16 => "float16",
        }
    }
}

pub async fn run(cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Import(args) => import(args),
        ModelCommand::Fetch(args) => super::fetch::run(args).await,
        ModelCommand::Verify { dir, partial } => {
            let manifest = ModelManifest::load(&dir)?;
            if !partial {
                verify_model(&manifest)?;
                println!(
                    "{}: {} files OK, model id {}",
                    dir.display(),
                    manifest.files.len(),
                    manifest.model_id
                );
            } else {
                let held = verify_held(&manifest)?;
                let present = manifest.files.keys().filter(|f| manifest.path(f).exists()).count();
                println!(
                    "{}: {present} of {} files here, all OK (blocks {held:?} of {}), model id {}",
                    dir.display(),
                    manifest.files.len(),
                    manifest.blocks.len(),
                    manifest.model_id
                );
            }
            Ok(())
        }
    }
}

/// The graphs are built by the Python importer in `scripts/model/` (ONNX's own protobuf
/// tooling); this command drives it and checks what it wrote.
fn import(args: ImportArgs) -> anyhow::Result<()> {
    let root = tools::repo_root().context("`model import` runs scripts/import-model: run it inside the InferGrid repository after scripts/setup")?;
    let script = root.join("scripts/import-model");
    let mut cmd = Command::new("bash");
    cmd.arg(&script).arg("--out").arg(&args.out);
    match (&args.hf, &args.gguf) {
        (Some(hf), None) => cmd.arg("--hf").arg(hf),
        (None, Some(gguf)) => cmd.arg("--gguf").arg(gguf),
        _ => bail!("give exactly one of --hf DIR and --gguf FILE"),
    };
    if let Some(dtype) = args.dtype {
        cmd.arg("--dtype").arg(dtype.importer_name());
    }
    if let Some(blocks) = args.blocks {
        cmd.arg("--blocks").arg(blocks.to_string());
    }
    if let Some(layers) = &args.layers {
        cmd.arg("--layers").arg(layers);
    }
    if let Some(name) = &args.name {
        cmd.arg("--name").arg(name);
    }
    cmd.arg("--piece-bytes").arg(args.piece_bytes.to_string());
    if let Some(quantize) = args.quantize {
        cmd.arg("--quantize").arg(quantize.importer_name());
    }
    // Progress lines pass through as they come; the importer's own error line becomes ours.
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", script.display()))?;
    let mut failure = None;
    for line in BufReader::new(child.stderr.take().expect("piped")).lines() {
        let line = line?;
        match line.strip_prefix("error: ") {
            Some(message) => failure = Some(message.to_owned()),
            None => eprintln!("{line}"),
        }
    }
    if !child.wait()?.success() {
        bail!(
            "import failed: {}",
            failure.unwrap_or_else(|| "the importer exited with an error".into())
        );
    }
    let manifest = ModelManifest::load(&args.out)?;
    verify_model(&manifest)?;
    println!(
        "{}: {} model, {} blocks, model id {}",
        args.out.display(),
        serde_json::to_value(manifest.architecture)?.as_str().unwrap_or_default(),
        manifest.blocks.len(),
        manifest.model_id
    );
    Ok(())
}
