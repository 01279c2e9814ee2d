//! The binary wire format of the inference protocol (`protocol-spec/wire.md`).
//!
//! Everything a peer sends is parsed here with explicit bounds, so a malformed, oversized or
//! truncated message is a [`CodecError`], never a panic or an allocation the peer controls.

use alloy::primitives::{B256, Bytes, U256};

use crate::eip712::keccak256;
use crate::engine::Activation;
use crate::pay::meter::Tariff;
use crate::pay::{SignedVoucher, Voucher};

/// Largest encoded request or response accepted.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// The most bytes of values one answer may carry: a whole message, less room for the answer's
/// other bytes (at most 256) and the transport's framing. A node refuses a step whose answer
/// would carry more before paying for or computing it (`wire.md`, "Size note").
pub const MAX_ANSWER_VALUE_BYTES: usize = MAX_MESSAGE_BYTES - (64 << 10);
/// Highest tensor rank on the wire.
pub const MAX_RANK: usize = 4;
/// Longest error message carried.
pub const MAX_ERROR_MESSAGE: usize = 4096;

const REQUEST_MAGIC: &[u8; 4] = b"IGQ3";
const RESPONSE_MAGIC: &[u8; 4] = b"IGS2";
/// The response magic of versions 1 and 2, which shared one response format: a refusal of a
/// retired version is written in it, so that an old client can read it.
const RETIRED_RESPONSE_MAGIC: &[u8; 4] = b"IGS1";
/// Bytes of an encoded [`Account`].
pub const ACCOUNT_BYTES: usize = 32 * 5 + 8 + 2;

wire_enum! {
    /// What a step does to the session's KV cache on the node.
    pub enum StepKind: u8 {
        /// The first tokens of a session (position 0).
        Prefill = 0,
        /// One more token.
        Decode = 1,
        /// Rebuilding a cache on a replacement node from the inputs the gateway kept.
        Replay = 2,
        /// Drop the session's cache.
        Close = 3,
        /// Guesses from a draft model served whole: the tokens run as a step would run them,
        /// then the model's most likely next tokens, each fed back for the next (`wire.md`,
        /// "Draft steps").
        Draft = 4,
    }
}

impl StepKind {
    /// Its name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            StepKind::Prefill => "prefill",
            StepKind::Decode => "decode",
            StepKind::Replay => "replay",
            StepKind::Close => "close",
            StepKind::Draft => "draft",
        }
    }
}

/// The data of a step: token ids for a span starting at block 0, hidden states otherwise.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Empty,
    Tokens(Vec<i64>),
    Tensor(Activation),
    /// An encoder step: ids or hidden states with the attention mask (and token types for
    /// block 0). Encoders are stateless: no KV cache, positions are ignored.
    Masked {
        input: Box<Payload>,
        attention_mask: Vec<i64>,
        token_type_ids: Vec<i64>,
    },
    /// A draft step's input: token ids run at the step's position, and how many tokens to
    /// guess after them (1..=[`MAX_DRAFT_GUESSES`]).
    Draft {
        tokens: Vec<i64>,
        guesses: u16,
    },
}

impl Payload {
    /// The length of the payload's encoding (tag included).
    pub fn encoded_len(&self) -> usize {
        payload_len(self)
    }

    /// The positions a step with this payload runs: its output has one row per position.
    pub fn positions(&self) -> usize {
        match self {
            Payload::Empty => 0,
            Payload::Tokens(ids) | Payload::Draft { tokens: ids, .. } => ids.len(),
            Payload::Tensor(tensor) => tensor.shape().get(1).copied().unwrap_or(0),
            Payload::Masked { input, .. } => input.positions(),
        }
    }
}

/// The most tokens one draft step may ask for: a draft step runs them one after another, so
/// it must stay short (a verify step checks no more than this either).
pub const MAX_DRAFT_GUESSES: u16 = 16;

/// One step of one session through a span of consecutive blocks served by one node.
#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    pub model_id: [u8; 32],
    pub first_block: u16,
    pub last_block: u16,
    pub session: u64,
    pub position: u32,
    pub kind: StepKind,
    /// The payer's latest cumulative voucher for the channel to this node, when the gateway
    /// signed a new one (or the node asked for it); `None` continues on the last one.
    pub payment: Option<SignedVoucher>,
    pub payload: Payload,
}

wire_enum! {
    /// Why a node refused or failed a request.
    pub enum ErrorCode: u16 {
        Malformed = 1,
        NotAdmitted = 2,
        UnknownModel = 3,
        BlocksNotServed = 4,
        BadInput = 5,
        SessionLost = 6,
        Overloaded = 7,
        Internal = 8,
        PaymentRequired = 9,
    }
}

impl ErrorCode {
    /// Its name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::NotAdmitted => "not_admitted",
            ErrorCode::UnknownModel => "unknown_model",
            ErrorCode::BlocksNotServed => "blocks_not_served",
            ErrorCode::BadInput => "bad_input",
            ErrorCode::SessionLost => "session_lost",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Internal => "internal",
            ErrorCode::PaymentRequired => "payment_required",
        }
    }
}

wire_enum! {
    /// Why a `PaymentRequired` refusal was sent: its sub-code (`wire.md`, "PaymentRequired").
    pub enum PaymentReason: u8 {
        /// No voucher, and no channel from this peer yet.
        NoChannel = 1,
        /// The voucher's channel does not exist on this chain.
        UnknownChannel = 2,
        /// The channel pays another node.
        OtherNode = 3,
        /// A close was requested on the channel, or it is closed.
        Closing = 4,
        /// Another peer already pays through this channel.
        OtherPeer = 5,
        /// The voucher is below the latest accepted one (replayed or stale).
        Stale = 6,
        /// The voucher is not signed by the channel's payer for this chain and contract.
        BadSignature = 7,
        /// Usage not covered by vouchers would exceed the credit: sign a newer voucher.
        CreditExceeded = 8,
        /// The channel holds too little to be served on credit: every step needs a voucher.
        NoCredit = 9,
        /// Too many channel lookups on the chain from this peer: try again later.
        TooManyLookups = 10,
    }
}

/// A paid node's account of one payment channel, as it stands after the step it comes with
/// (`wire.md`, "Account"): what the node counts as owed, so that a payer can see, and agree
/// again after, a disagreement (an answer lost on the way, a price change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    pub channel_id: U256,
    /// Wei owed for block-tokens metered under earlier terms (a price or span since changed).
    pub settled: U256,
    /// Block-tokens metered under the current terms.
    pub metered: u64,
    /// The current terms: wei per token through the registered span of `span_blocks` blocks.
    pub price_per_token: U256,
    pub span_blocks: u16,
    /// The latest voucher the node accepted on the channel (0: none).
    pub voucher: U256,
    /// How much usage (wei) the node serves beyond the voucher.
    pub credit: U256,
}

impl Account {
    /// The terms `metered` is priced at.
    pub fn terms(&self) -> Tariff {
        Tariff { price_per_token: self.price_per_token, span_blocks: self.span_blocks }
    }

    /// What the node counts as owed: `settled + ⌊price · metered / span⌋`; `None` past
    /// 2²⁵⁶ (a node's figures are not trusted to be sane).
    pub fn owed(&self) -> Option<U256> {
        let metered = self.price_per_token.checked_mul(U256::from(self.metered))?;
        self.settled.checked_add(metered / U256::from(self.span_blocks.max(1)))
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.channel_id.to_be_bytes::<32>());
        out.extend_from_slice(&self.settled.to_be_bytes::<32>());
        out.extend_from_slice(&self.metered.to_le_bytes());
        out.extend_from_slice(&self.price_per_token.to_be_bytes::<32>());
        out.extend_from_slice(&self.span_blocks.to_le_bytes());
        out.extend_from_slice(&self.voucher.to_be_bytes::<32>());
        out.extend_from_slice(&self.credit.to_be_bytes::<32>());
    }

    fn decode(r: &mut Reader<'_>) -> Result<Option<Self>, CodecError> {
        match r.u8()? {
            0 => Ok(None),
            1 => Ok(Some(Self {
                channel_id: r.u256()?,
                settled: r.u256()?,
                metered: r.u64()?,
                price_per_token: r.u256()?,
                span_blocks: r.u16()?,
                voucher: r.u256()?,
                credit: r.u256()?,
            })),
            other => Err(CodecError::UnknownAccountFlag(other)),
        }
    }
}

fn encode_account(account: &Option<Account>, out: &mut Vec<u8>) {
    match account {
        None => out.push(0),
        Some(account) => {
            out.push(1);
            account.encode(out);
        }
    }
}

/// A typed refusal, as sent to the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
    /// The sub-code of a `PaymentRequired` refusal; none for the other codes.
    pub reason: Option<PaymentReason>,
    /// The node's account of the channel, when a paid node refuses a paying peer (boxed:
    /// refusals travel in `Result`s, and most have none).
    pub account: Option<Box<Account>>,
}

/// What a refusal of a retired protocol version says after the version's id: its marker
/// (`wire.md`, "Versions").
pub const RETIRED_MARK: &str = " is retired: ";

impl WireError {
    /// Whether this is a node's refusal of the protocol version it was spoken to in: the
    /// node speaks a newer one, which is no failure of the node.
    pub fn is_retired_version(&self) -> bool {
        self.code == ErrorCode::Malformed
            && self.message.starts_with("malformed request: /infergrid/infer/")
            && self.message.contains(RETIRED_MARK)
    }

    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE {
            let mut cut = MAX_ERROR_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Self { code, message, reason: None, account: None }
    }

    /// A `PaymentRequired` refusal, with its sub-code and the node's account of the channel.
    pub fn payment(
        reason: PaymentReason,
        message: impl Into<String>,
        account: Option<Account>,
    ) -> Self {
        let account = account.map(Box::new);
        Self { reason: Some(reason), account, ..Self::new(ErrorCode::PaymentRequired, message) }
    }

    /// This refusal in the response format of retired versions 1 and 2 (magic `IGS1`, no
    /// sub-code or account), which an old client decodes.
    pub fn encode_retired(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(11 + self.message.len());
        out.extend_from_slice(RETIRED_RESPONSE_MAGIC);
        out.push(1);
        self.encode_text(&mut out);
        out
    }

    fn encode_text(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.code as u16).to_le_bytes());
        out.extend_from_slice(&(self.message.len() as u32).to_le_bytes());
        out.extend_from_slice(self.message.as_bytes());
    }
}

/// A node's answer: the output payload with its signature over (request, output), or a
/// typed error; either way, from a paid node to a paying peer, the node's account of the
/// channel.
#[derive(Debug, Clone, PartialEq)]
pub enum InferResponse {
    Ok { output: Payload, signature: [u8; 65], account: Option<Box<Account>> },
    Err(WireError),
}

/// Why bytes are not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("message truncated")]
    Truncated,
    #[error("bad magic bytes")]
    BadMagic,
    #[error("unknown step kind {0}")]
    UnknownKind(u8),
    #[error("unknown payload tag {0}")]
    UnknownTag(u8),
    #[error("unknown payment flag {0}")]
    UnknownPaymentFlag(u8),
    #[error("unknown status {0}")]
    UnknownStatus(u8),
    #[error("unknown error code {0}")]
    UnknownErrorCode(u16),
    #[error("payment reason {reason} with error code {code}")]
    UnknownReason { code: u16, reason: u8 },
    #[error("unknown account flag {0}")]
    UnknownAccountFlag(u8),
    #[error("an answer in a message of steps carries a signature of its own")]
    SignedInMessage,
    #[error("tensor rank {0} outside 1..={MAX_RANK}")]
    Rank(u8),
    #[error("message of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("{0} trailing bytes")]
    Trailing(usize),
    #[error("error message is not UTF-8")]
    Utf8,
    #[error("{0} steps in one message, 1..={max} allowed", max = super::steps::MAX_STEPS_PER_MESSAGE)]
    StepCount(usize),
    /// A request over a protocol version this node no longer serves.
    #[error(
        "{retired}{RETIRED_MARK}this node speaks {current} (protocol-spec/wire.md, \"Versions\"); upgrade"
    )]
    Retired { retired: String, current: String },
}

impl InferRequest {
    pub fn encode(&self) -> Vec<u8> {
        self.encode_with(self.payment.as_ref())
    }

    /// The length of [`InferRequest::encode`]'s bytes, without encoding.
    pub fn encoded_len(&self) -> usize {
        const HEADER: usize = 4 + 1 + 32 + 2 + 2 + 8 + 4 + 1;
        const VOUCHER: usize = 32 + 32 + 65;
        HEADER + if self.payment.is_some() { VOUCHER } else { 0 } + payload_len(&self.payload)
    }

    /// What a node's `Response` signature binds (`wire.md`, "Response signature"): keccak-256
    /// of the request encoded with the payment field empty. The answer depends on the
    /// computation asked for, not on how it was paid, so a validator can commit the hashes of
    /// its challenges before it knows which steps will carry vouchers.
    pub fn request_hash(&self) -> B256 {
        keccak256(&self.encode_with(None))
    }

    fn encode_with(&self, payment: Option<&SignedVoucher>) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(REQUEST_MAGIC);
        out.push(self.kind as u8);
        out.extend_from_slice(&self.model_id);
        out.extend_from_slice(&self.first_block.to_le_bytes());
        out.extend_from_slice(&self.last_block.to_le_bytes());
        out.extend_from_slice(&self.session.to_le_bytes());
        out.extend_from_slice(&self.position.to_le_bytes());
        match payment {
            None => out.push(0),
            Some(payment) => {
                out.push(1);
                out.extend_from_slice(&payment.voucher.channel_id.to_be_bytes::<32>());
                out.extend_from_slice(&payment.voucher.cumulative_amount.to_be_bytes::<32>());
                // The field is 65 bytes: a signature of another length (`Voucher::sign` never
                // makes one) is zero-padded or cut here, and then fails verification on the node.
                let mut signature = [0u8; 65];
                let n = payment.signature.len().min(65);
                signature[..n].copy_from_slice(&payment.signature[..n]);
                out.extend_from_slice(&signature);
            }
        }
        encode_payload(&self.payload, &mut out);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(bytes)?;
        if r.take(4)? != REQUEST_MAGIC {
            return Err(CodecError::BadMagic);
        }
        let raw_kind = r.u8()?;
        let kind = StepKind::from_wire(raw_kind).ok_or(CodecError::UnknownKind(raw_kind))?;
        let model_id = r.take(32)?.try_into().expect("32 bytes");
        let first_block = r.u16()?;
        let last_block = r.u16()?;
        let session = r.u64()?;
        let position = r.u32()?;
        let payment = match r.u8()? {
            0 => None,
            1 => {
                let channel_id = r.u256()?;
                let cumulative_amount = r.u256()?;
                let signature = Bytes::copy_from_slice(r.take(65)?);
                Some(SignedVoucher {
                    voucher: Voucher { channel_id, cumulative_amount },
                    signature,
                })
            }
            other => return Err(CodecError::UnknownPaymentFlag(other)),
        };
        let payload = decode_payload(&mut r)?;
        r.finish()?;
        Ok(Self { model_id, first_block, last_block, session, position, kind, payment, payload })
    }
}

impl InferResponse {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(RESPONSE_MAGIC);
        match self {
            InferResponse::Ok { output, signature, account } => {
                out.push(0);
                encode_payload(output, &mut out);
                out.extend_from_slice(signature);
                encode_account(&account.as_deref().copied(), &mut out);
            }
            InferResponse::Err(err) => {
                out.push(1);
                err.encode_text(&mut out);
                out.push(err.reason.map_or(0, |r| r as u8));
                encode_account(&err.account.as_deref().copied(), &mut out);
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(bytes)?;
        if r.take(4)? != RESPONSE_MAGIC {
            return Err(CodecError::BadMagic);
        }
        let response = match r.u8()? {
            0 => {
                let output = decode_payload(&mut r)?;
                let signature = r.take(65)?.try_into().expect("65 bytes");
                let account = Account::decode(&mut r)?.map(Box::new);
                InferResponse::Ok { output, signature, account }
            }
            1 => {
                let raw = r.u16()?;
                let code = ErrorCode::from_wire(raw).ok_or(CodecError::UnknownErrorCode(raw))?;
                let len = r.u32()? as usize;
                if len > MAX_ERROR_MESSAGE {
                    return Err(CodecError::TooLarge(len));
                }
                let message =
                    std::str::from_utf8(r.take(len)?).map_err(|_| CodecError::Utf8)?.to_owned();
                // A sub-code only with PaymentRequired, and always with it.
                let raw_reason = r.u8()?;
                let reason = match (code, raw_reason) {
                    (ErrorCode::PaymentRequired, r) => Some(PaymentReason::from_wire(r)),
                    (_, 0) => None,
                    _ => Some(None),
                };
                let reason = reason
                    .map(|r| r.ok_or(CodecError::UnknownReason { code: raw, reason: raw_reason }))
                    .transpose()?;
                let account = Account::decode(&mut r)?.map(Box::new);
                InferResponse::Err(WireError { code, message, reason, account })
            }
            other => return Err(CodecError::UnknownStatus(other)),
        };
        r.finish()?;
        Ok(response)
    }
}

/// The bytes a node's signature covers for an output: the encoded payload.
pub fn payload_bytes(payload: &Payload) -> Vec<u8> {
    let mut out = Vec::new();
    encode_payload(payload, &mut out);
    out
}

fn payload_len(payload: &Payload) -> usize {
    match payload {
        Payload::Empty => 1,
        Payload::Tokens(t) => 5 + 8 * t.len(),
        Payload::Tensor(a) => 2 + 4 * a.shape().len() + 4 * a.data().len(),
        Payload::Masked { input, attention_mask, token_type_ids } => {
            9 + payload_len(input) + 8 * (attention_mask.len() + token_type_ids.len())
        }
        Payload::Draft { tokens, .. } => 7 + 8 * tokens.len(),
    }
}

const TAG_EMPTY: u8 = 0;
const TAG_TOKENS: u8 = 1;
const TAG_F32: u8 = 2;
const TAG_MASKED: u8 = 3;
const TAG_DRAFT: u8 = 4;

fn encode_ints(ints: &[i64], out: &mut Vec<u8>) {
    out.extend_from_slice(&(ints.len() as u32).to_le_bytes());
    ints.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
}

fn encode_payload(payload: &Payload, out: &mut Vec<u8>) {
    match payload {
        Payload::Empty => out.push(TAG_EMPTY),
        Payload::Tokens(ids) => {
            out.push(TAG_TOKENS);
            encode_ints(ids, out);
        }
        Payload::Tensor(a) => {
            out.push(TAG_F32);
            out.push(a.shape().len() as u8);
            a.shape().iter().for_each(|&d| out.extend_from_slice(&(d as u32).to_le_bytes()));
            out.extend_from_slice(&a.to_le_bytes());
        }
        Payload::Masked { input, attention_mask, token_type_ids } => {
            out.push(TAG_MASKED);
            encode_payload(input, out);
            encode_ints(attention_mask, out);
            encode_ints(token_type_ids, out);
        }
        Payload::Draft { tokens, guesses } => {
            out.push(TAG_DRAFT);
            out.extend_from_slice(&guesses.to_le_bytes());
            encode_ints(tokens, out);
        }
    }
}

fn decode_ints(r: &mut Reader<'_>) -> Result<Vec<i64>, CodecError> {
    let count = r.u32()? as usize;
    let bytes = r.take(count.checked_mul(8).ok_or(CodecError::TooLarge(usize::MAX))?)?;
    Ok(bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
}

fn decode_payload(r: &mut Reader<'_>) -> Result<Payload, CodecError> {
    decode_payload_nested(r, false)
}

/// Decodes a payload; a `Masked` payload may only appear at the top, and the check comes
/// before any recursion, so nested tags cannot exhaust the stack.
fn decode_payload_nested(r: &mut Reader<'_>, inside_mask: bool) -> Result<Payload, CodecError> {
    Ok(match r.u8()? {
        TAG_EMPTY => Payload::Empty,
        TAG_TOKENS => Payload::Tokens(decode_ints(r)?),
        TAG_DRAFT => {
            let guesses = r.u16()?;
            Payload::Draft { tokens: decode_ints(r)?, guesses }
        }
        TAG_MASKED if inside_mask => return Err(CodecError::UnknownTag(TAG_MASKED)),
        TAG_MASKED => {
            // One level only: the inner payload is ids or a tensor, never another mask.
            let input = match decode_payload_nested(r, true)? {
                inner @ (Payload::Tokens(_) | Payload::Tensor(_)) => inner,
                _ => return Err(CodecError::UnknownTag(TAG_MASKED)),
            };
            let attention_mask = decode_ints(r)?;
            let token_type_ids = decode_ints(r)?;
            Payload::Masked { input: Box::new(input), attention_mask, token_type_ids }
        }
        TAG_F32 => {
            let rank = r.u8()?;
            if rank == 0 || rank as usize > MAX_RANK {
                return Err(CodecError::Rank(rank));
            }
            let shape: Vec<usize> =
                (0..rank).map(|_| r.u32().map(|d| d as usize)).collect::<Result<_, _>>()?;
            let elements = shape
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .ok_or(CodecError::TooLarge(usize::MAX))?;
            let bytes = r.take(elements.checked_mul(4).ok_or(CodecError::TooLarge(usize::MAX))?)?;
            Payload::Tensor(
                Activation::from_le_bytes(shape, bytes).map_err(|_| CodecError::Truncated)?,
            )
        }
        other => return Err(CodecError::UnknownTag(other)),
    })
}

/// A bounds-checked cursor.
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Result<Self, CodecError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(CodecError::TooLarge(bytes.len()));
        }
        Ok(Self { bytes, at: 0 })
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(CodecError::Truncated)?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    pub(super) fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    pub(super) fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    pub(super) fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    /// A uint256, big-endian as the EVM's words (amounts and channel ids).
    fn u256(&mut self) -> Result<U256, CodecError> {
        Ok(U256::from_be_slice(self.take(32)?))
    }

    pub(super) fn finish(self) -> Result<(), CodecError> {
        match self.bytes.len() - self.at {
            0 => Ok(()),
            n => Err(CodecError::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn payload() -> impl Strategy<Value = Payload> {
        prop_oneof![
            Just(Payload::Empty),
            proptest::collection::vec(any::<i64>(), 0..64).prop_map(Payload::Tokens),
            (1usize..4, 1usize..8, 1usize..16).prop_flat_map(|(a, b, c)| {
                proptest::collection::vec(
                    any::<f32>().prop_filter("NaN breaks equality", |v| !v.is_nan()),
                    a * b * c,
                )
                .prop_map(move |data| {
                    Payload::Tensor(Activation::new(vec![a, b, c], data).expect("shape"))
                })
            }),
            (
                proptest::collection::vec(any::<i64>(), 1..16),
                proptest::collection::vec(0i64..2, 0..16),
                proptest::collection::vec(0i64..2, 0..16),
            )
                .prop_map(|(ids, attention_mask, token_type_ids)| Payload::Masked {
                    input: Box::new(Payload::Tokens(ids)),
                    attention_mask,
                    token_type_ids,
                }),
            (proptest::collection::vec(any::<i64>(), 0..16), any::<u16>())
                .prop_map(|(tokens, guesses)| Payload::Draft { tokens, guesses }),
        ]
    }

    fn account() -> impl Strategy<Value = Account> {
        (any::<[u8; 32]>(), any::<u128>(), any::<u64>(), any::<u128>(), any::<u16>(), any::<u128>())
            .prop_map(|(channel, settled, metered, price, span_blocks, voucher)| Account {
                channel_id: U256::from_be_bytes(channel),
                settled: U256::from(settled),
                metered,
                price_per_token: U256::from(price),
                span_blocks,
                voucher: U256::from(voucher),
                credit: U256::from(price) * U256::from(256),
            })
    }

    fn request() -> impl Strategy<Value = InferRequest> {
        (
            any::<[u8; 32]>(),
            any::<u16>(),
            any::<u16>(),
            any::<u64>(),
            any::<u32>(),
            0u8..5,
            proptest::option::of((any::<[u8; 32]>(), any::<[u8; 32]>(), any::<[u8; 32]>())),
            payload(),
        )
            .prop_map(
                |(model_id, first_block, last_block, session, position, kind, paid, payload)| {
                    InferRequest {
                        model_id,
                        first_block,
                        last_block,
                        session,
                        position,
                        kind: StepKind::from_wire(kind).expect("0..5"),
                        payment: paid.map(|(channel, amount, r)| SignedVoucher {
                            voucher: Voucher {
                                channel_id: U256::from_be_bytes(channel),
                                cumulative_amount: U256::from_be_bytes(amount),
                            },
                            signature: [&r[..], &r[..], &[27u8]].concat().into(),
                        }),
                        payload,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn requests_round_trip(req in request()) {
            prop_assert_eq!(req.encoded_len(), req.encode().len());
            prop_assert_eq!(InferRequest::decode(&req.encode()), Ok(req));
        }

        #[test]
        fn responses_round_trip(output in payload(), sig in proptest::collection::vec(any::<u8>(), 65), code in 1u16..10, reason in 1u8..=10, msg in ".{0,64}", account in proptest::option::of(account())) {
            let ok = InferResponse::Ok { output, signature: sig.try_into().unwrap(), account: account.map(Box::new) };
            prop_assert_eq!(InferResponse::decode(&ok.encode()), Ok(ok));
            let code = ErrorCode::from_wire(code).unwrap();
            let err = if code == ErrorCode::PaymentRequired {
                WireError::payment(PaymentReason::from_wire(reason).unwrap(), msg, account)
            } else {
                WireError { account: account.map(Box::new), ..WireError::new(code, msg) }
            };
            let err = InferResponse::Err(err);
            prop_assert_eq!(InferResponse::decode(&err.encode()), Ok(err));
        }

        /// Arbitrary bytes never panic the decoders.
        #[test]
        fn garbage_is_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = InferRequest::decode(&bytes);
            let _ = InferResponse::decode(&bytes);
        }

        /// Valid messages with a corrupted byte or cut short decode to an error or a value, never a panic.
        #[test]
        fn mutated_messages_never_panic(req in request(), at in any::<usize>(), flip in 1u8..=255, cut in any::<usize>()) {
            let mut bytes = req.encode();
            let i = at % bytes.len();
            bytes[i] ^= flip;
            let _ = InferRequest::decode(&bytes);
            let _ = InferRequest::decode(&bytes[..cut % bytes.len()]);
        }
    }

    /// The worked examples of `protocol-spec/wire.md` ("Worked example"), byte for byte: if
    /// this fails, the wire format changed; update the spec with it.
    #[test]
    fn spec_worked_example_is_current() {
        let hash = |bytes: &[u8]| crate::eip712::keccak256(bytes).to_string();
        let mut model_id = [0u8; 32];
        model_id.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        let request = InferRequest {
            model_id,
            first_block: 0,
            last_block: 1,
            session: 0x0123_4567_89ab_cdef,
            position: 0,
            kind: StepKind::Prefill,
            payment: None,
            payload: Payload::Tokens(vec![1, 500]),
        };
        let spec = "49475133 00 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f                     0000 0100 efcdab8967452301 00000000 00                     01 02000000 0100000000000000 f401000000000000";
        let spec = hex::decode(spec.replace(' ', "")).expect("hex");
        let bytes = request.encode();
        assert_eq!(bytes.len(), 75);
        assert_eq!(bytes, spec);
        assert_eq!(InferRequest::decode(&spec), Ok(request.clone()));
        assert_eq!(
            hash(&bytes),
            "0x7efd27428b3454696a807b8b69898baef4bdef5ccc9ff4d2ac79ff4601f152b3"
        );

        // The payment field with a voucher: flag 1, channel 1, 1000 wei, a 65-byte signature;
        // the payload follows at offset 183.
        let signature = [0xaa; 65];
        let paid = InferRequest {
            payment: Some(SignedVoucher {
                voucher: Voucher {
                    channel_id: U256::from(1u64),
                    cumulative_amount: U256::from(1000u64),
                },
                signature: signature.to_vec().into(),
            }),
            ..request.clone()
        };
        let field = "01                      0000000000000000000000000000000000000000000000000000000000000001                      00000000000000000000000000000000000000000000000000000000000003e8";
        let mut field = hex::decode(field.replace(' ', "")).expect("hex");
        field.extend_from_slice(&signature);
        let paid_bytes = paid.encode();
        assert_eq!(paid_bytes.len(), 75 + 129);
        assert_eq!(paid_bytes[..53], bytes[..53]);
        assert_eq!(paid_bytes[53..183], field[..]);
        assert_eq!(paid_bytes[183..], bytes[54..]);
        assert_eq!(InferRequest::decode(&paid_bytes), Ok(paid.clone()));
        // The signed request hash leaves the payment out: paid or not, the same computation.
        assert_eq!(request.request_hash().to_string(), hash(&bytes));
        assert_eq!(paid.request_hash(), request.request_hash());
        let mut bad_flag = bytes.clone();
        bad_flag[53] = 2;
        assert_eq!(InferRequest::decode(&bad_flag), Err(CodecError::UnknownPaymentFlag(2)));

        // A Tensor output [1, 1, 2] = [1.0, -2.0], and the Empty output of a Close answer.
        let output =
            Payload::Tensor(Activation::new(vec![1, 1, 2], vec![1.0, -2.0]).expect("shape"));
        let out = payload_bytes(&output);
        assert_eq!(hex::encode(&out), "02030100000001000000020000000000803f000000c0");
        assert_eq!(
            hash(&out),
            "0x99851f04313f75ea2407fd56cf39aa1234ce9152319220489c9eb5f86282a06f"
        );
        assert_eq!(
            hash(&payload_bytes(&Payload::Empty)),
            "0xbc36789e7a1e281436464229828f817d6612f7b477d66591ff96a9e064bcc98a"
        );
        // A SessionLost refusal with message "lost": no sub-code, no account.
        let lost = InferResponse::Err(WireError::new(ErrorCode::SessionLost, "lost"));
        assert_eq!(hex::encode(lost.encode()), "49475332010600040000006c6f73740000");
        // The same refusal as a node writes it on a retired version (1 or 2).
        let InferResponse::Err(refusal) = &lost else { unreachable!() };
        assert_eq!(hex::encode(refusal.encode_retired()), "49475331010600040000006c6f7374");

        // A CreditExceeded refusal with message "pay", and the account of channel 1: 100 wei
        // settled, 7 block-tokens at 30 wei per token over 3 blocks, voucher 90, credit 7680.
        let account = Account {
            channel_id: U256::from(1),
            settled: U256::from(100),
            metered: 7,
            price_per_token: U256::from(30),
            span_blocks: 3,
            voucher: U256::from(90),
            credit: U256::from(7680),
        };
        assert_eq!(account.owed(), Some(U256::from(170)));
        let refusal = InferResponse::Err(WireError::payment(
            PaymentReason::CreditExceeded,
            "pay",
            Some(account),
        ));
        let word = |v: u64| format!("{v:064x}");
        let spec = format!(
            "49475332 01 0900 03000000 706179 08 01 {} {} 0700000000000000 {} 0300 {} {}",
            word(1),
            word(100),
            word(30),
            word(90),
            word(7680)
        );
        let bytes = refusal.encode();
        assert_eq!(bytes.len(), 4 + 1 + 2 + 4 + 3 + 1 + 1 + ACCOUNT_BYTES);
        assert_eq!(hex::encode(&bytes), spec.replace(' ', ""));
        assert_eq!(InferResponse::decode(&bytes), Ok(refusal));
    }

    #[test]
    fn sub_codes_and_accounts_are_checked() {
        let with = |code: u16, reason: u8, flag: u8| {
            let mut bytes = b"IGS2\x01".to_vec();
            bytes.extend_from_slice(&code.to_le_bytes());
            bytes.extend_from_slice(&0u32.to_le_bytes());
            bytes.extend_from_slice(&[reason, flag]);
            InferResponse::decode(&bytes)
        };
        // PaymentRequired needs a known sub-code; every other code has none.
        assert_eq!(with(9, 0, 0), Err(CodecError::UnknownReason { code: 9, reason: 0 }));
        assert_eq!(with(9, 11, 0), Err(CodecError::UnknownReason { code: 9, reason: 11 }));
        assert_eq!(with(6, 1, 0), Err(CodecError::UnknownReason { code: 6, reason: 1 }));
        assert!(matches!(
            with(9, 8, 0),
            Ok(InferResponse::Err(WireError { reason: Some(PaymentReason::CreditExceeded), .. }))
        ));
        assert_eq!(with(6, 0, 2), Err(CodecError::UnknownAccountFlag(2)));
        // An account flag with the account cut short.
        assert_eq!(with(6, 0, 1), Err(CodecError::Truncated));
    }

    #[test]
    fn hostile_sizes_are_refused_without_allocating() {
        // Claims 2^32-1 tokens in a 30-byte message.
        let mut bytes = InferRequest {
            model_id: [0; 32],
            first_block: 0,
            last_block: 0,
            session: 1,
            position: 0,
            kind: StepKind::Prefill,
            payment: None,
            payload: Payload::Tokens(vec![]),
        }
        .encode();
        let n = bytes.len();
        bytes[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(InferRequest::decode(&bytes), Err(CodecError::Truncated));
        assert_eq!(
            InferRequest::decode(&vec![0u8; MAX_MESSAGE_BYTES + 1]),
            Err(CodecError::TooLarge(MAX_MESSAGE_BYTES + 1))
        );
        let mut trailing = InferResponse::Err(WireError::new(ErrorCode::Internal, "x")).encode();
        trailing.push(0);
        assert_eq!(InferResponse::decode(&trailing), Err(CodecError::Trailing(1)));
        let mut trailing =
            InferResponse::Ok { output: Payload::Empty, signature: [0; 65], account: None }
                .encode();
        trailing.push(0);
        assert_eq!(InferResponse::decode(&trailing), Err(CodecError::Trailing(1)));
        // A payload of nested mask tags is refused at the second tag, not by recursion.
        let mut nested = bytes[..bytes.len() - 5].to_vec();
        nested.extend(std::iter::repeat_n(TAG_MASKED, 1 << 20));
        assert_eq!(InferRequest::decode(&nested), Err(CodecError::UnknownTag(TAG_MASKED)));
    }
}
