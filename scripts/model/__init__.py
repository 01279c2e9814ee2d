"""InferGrid model tooling: fixture generator, Hugging Face → ONNX layer-block importer,
independent numpy reference forward pass, and the ONNX Runtime Python baseline.

Run the tools through the thin wrappers in scripts/ (make-fixture, import-model,
reference-forward, ort-baseline); they use the project's venv python."""
