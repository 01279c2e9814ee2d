//! A quantized import (`infergrid model import --quantize int8|int4`; `model-format.md`,
//! "Quantized blocks") loads in the engine and tracks the float import of the same
//! checkpoint: over one teacher-forced sequence its most likely token is the float model's
//! at nearly every position and its logits stay close, while its layer matrices take about a
//! quarter (int8) or an eighth (int4) of the bytes. The figures are printed.

use std::path::{Path, PathBuf};
use std::process::Command;

use infergrid::engine::{CacheLimits, Device, Pipeline, Runtime};
use infergrid::generate::argmax;
use infergrid::model::ModelManifest;
use infergrid_e2e::models::make_checkpoint;
use infergrid_e2e::procs::binary;

/// `infergrid model import --hf HF --out OUT --blocks 1 [--quantize Q]`, as an operator runs it.
fn import(hf: &Path, out: PathBuf, quantize: Option<&str>) -> PathBuf {
    let mut cmd = Command::new(binary());
    cmd.args(["model", "import", "--hf"]).arg(hf).arg("--out").arg(&out).args(["--blocks", "1"]);
    if let Some(quantize) = quantize {
        cmd.args(["--quantize", quantize]);
    }
    let done = cmd.output().expect("infergrid runs");
    assert!(done.status.success(), "import: {}", String::from_utf8_lossy(&done.stderr));
    out
}

/// The logits at every position of `ids` (one prefill step), as rows.
fn logits(model: &Path, ids: &[i64]) -> Vec<Vec<f32>> {
    let runtime = Runtime::new(Device::Cpu, None).expect("ONNX Runtime from scripts/setup");
    let pipeline = Pipeline::load(model, &runtime, CacheLimits::default()).expect("loads");
    let out = pipeline.step(1, 0, ids).expect("runs");
    (0..out.rows()).map(|row| out.row(row).to_vec()).collect()
}

/// Bytes of the layers' matrices: the float `…_proj.weight` tensors, or their packed values
/// and scales.
fn matrix_bytes(model: &Path) -> usize {
    let manifest = ModelManifest::load(model).expect("manifest");
    manifest.blocks[0]
        .tensors
        .iter()
        .filter(|t| t.name.contains("_proj.weight"))
        .map(|t| t.length)
        .sum()
}

#[test]
fn quantized_imports_load_and_track_the_float_model() {
    let dir = tempfile::tempdir().unwrap();
    let hf =
        make_checkpoint(dir.path(), "llama", &["--layers", "3", "--hidden", "128", "--seed", "9"])
            .unwrap();
    let float = import(&hf, dir.path().join("float"), None);
    let ids: Vec<i64> = (0..64).map(|i| (i * 37 + 11) % 256).collect();
    let reference = logits(&float, &ids);
    let float_bytes = matrix_bytes(&float);

    // (quantization, most bytes of the float matrices, least top-1 agreement, most logit error
    // as a share of the largest float logit)
    for (quantize, most_bytes, least_agreement, most_error) in
        [("int8", 0.30, 0.95, 0.02), ("int4", 0.17, 0.75, 0.25)]
    {
        let model = import(&hf, dir.path().join(quantize), Some(quantize));
        let manifest = ModelManifest::load(&model).unwrap();
        assert!(
            manifest.blocks[0].tensors.iter().any(|t| t.dtype == "uint8"),
            "{quantize}: packed matrices are uint8 tensors"
        );
        let rows = logits(&model, &ids);
        assert_eq!(rows.len(), reference.len());
        let agree = rows.iter().zip(&reference).filter(|(q, f)| argmax(q) == argmax(f)).count();
        let agreement = agree as f64 / rows.len() as f64;
        let largest = reference.iter().flatten().fold(0.0f32, |m, x| m.max(x.abs()));
        let error = rows
            .iter()
            .flatten()
            .zip(reference.iter().flatten())
            .fold(0.0f32, |m, (q, f)| m.max((q - f).abs()))
            / largest;
        let bytes = matrix_bytes(&model) as f64 / float_bytes as f64;
        eprintln!(
            "{quantize}: top-1 agreement {agree}/{} ({:.1}%), largest logit error {:.2}% of the \
             largest logit, layer matrices {:.1}% of float32's bytes",
            rows.len(),
            agreement * 100.0,
            error * 100.0,
            bytes * 100.0
        );
        assert!(bytes <= most_bytes, "{quantize}: matrices at {bytes:.3} of the float bytes");
        assert!(agreement >= least_agreement, "{quantize}: top-1 agreement {agreement:.3}");
        assert!(error as f64 <= most_error, "{quantize}: logit error {error:.4}");
    }
}

/// A manifest naming a tensor type the format does not have is refused before any graph
/// is loaded.
#[test]
fn a_manifest_with_an_unknown_tensor_type_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hf = make_checkpoint(dir.path(), "llama", &["--layers", "1", "--seed", "3"]).unwrap();
    let model = import(&hf, dir.path().join("int8"), Some("int8"));
    let path = model.join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"dtype\": \"uint8\""), "the packed matrices are listed as uint8");
    std::fs::write(&path, text.replacen("\"dtype\": \"uint8\"", "\"dtype\": \"int4\"", 1)).unwrap();
    let error = ModelManifest::load(&model).expect_err("an unknown tensor type");
    assert!(error.to_string().contains("inconsistent location"), "{error}");
}
