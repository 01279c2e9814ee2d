"""A second, minimal InferGrid client written from `protocol-spec/` alone.

It exists to prove the specification is complete enough to interoperate with the Rust
node: its own libp2p stack (multistream-select, Noise XX, yamux), the inference wire
codec, EIP-712 vouchers and answer signatures over its own secp256k1 arithmetic, and a
checker of `protocol-spec/test-vectors.json`. Run its tools from the repository root:
`python -m scripts.interop.client …`, `python -m scripts.interop.vectors`.
"""
