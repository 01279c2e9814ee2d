//! Several steps in one message (`/infergrid/steps/2`, `wire.md`, "Several steps in one
//! message"): a gateway serving many users sends the steps its sessions have for one node
//! together, and the node answers them together. Each step is exactly an `/infergrid/infer/3`
//! request, answered as if it had come on a stream of its own, so request hashes, payment and
//! outputs do not change. What is shared is the stream, its negotiation and its framing, which
//! cost more than a decode step's own bytes, and the signature: the node signs its answers
//! once, as `Responses(root, epoch)` over the Merkle tree of their leaves, instead of one
//! `Response` each — a secp256k1 signature and its recovery cost more than a small decode
//! step's compute.

use std::sync::atomic::{AtomicUsize, Ordering};

use futures::{AsyncRead, AsyncWrite};
use libp2p::StreamProtocol;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use super::codec::{CodecError, InferRequest, InferResponse, MAX_MESSAGE_BYTES, Reader};
use super::protocol::{invalid_data, invalid_input, read_limited, write_message};

/// The versioned protocol id.
pub const STEPS_PROTOCOL: StreamProtocol = StreamProtocol::new("/infergrid/steps/2");

/// The most steps one message carries: the gateway's default limit on sessions at once.
pub const MAX_STEPS_PER_MESSAGE: usize = 64;

/// The most bytes of values the answers to one message may carry together: a whole message,
/// less room for every answer's other bytes (64 refusals of up to 4 KiB of text) and the
/// envelope.
pub const MAX_MESSAGE_ANSWER_VALUE_BYTES: usize = MAX_MESSAGE_BYTES - (512 << 10);

/// What is left of a message's [`MAX_MESSAGE_ANSWER_VALUE_BYTES`] for its answers: the node
/// takes each step's share in the message's order, before any of them runs, and refuses a
/// step that does not fit, so that a message cannot make it hold answers it could not send
/// (a few thousand token ids ask for gigabytes of logits).
#[derive(Debug)]
pub struct AnswerRoom(AtomicUsize);

impl Default for AnswerRoom {
    fn default() -> Self {
        Self(AtomicUsize::new(MAX_MESSAGE_ANSWER_VALUE_BYTES))
    }
}

impl AnswerRoom {
    /// Takes `bytes` of the room if that many are left; says whether it did.
    pub fn take(&self, bytes: usize) -> bool {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(bytes))
            .is_ok()
    }
}

const STEPS_MAGIC: &[u8; 4] = b"IGB1";
const ANSWERS_MAGIC: &[u8; 4] = b"IGA2";

/// Bytes the envelope adds to a message of `count` steps: magic, count, and each item's
/// length (answers add the message's signature, [`SEAL_BYTES`]).
pub const fn envelope_bytes(count: usize) -> usize {
    4 + 2 + 4 * count
}

/// The message's signature after its answers: `r ‖ s ‖ v`.
pub const SEAL_BYTES: usize = 65;

/// The answers to a message of steps, in its order, and the node's one signature over the Ok
/// ones among them (`seal_answers`): all zeros when none is Ok. Each Ok answer's own
/// signature field is all zeros.
#[derive(Debug, Clone, PartialEq)]
pub struct SealedAnswers {
    pub answers: Vec<InferResponse>,
    pub seal: [u8; 65],
}

impl SealedAnswers {
    /// A message refused whole: one refusal, nothing signed.
    pub fn refused(refusal: super::codec::WireError) -> Self {
        Self { answers: vec![InferResponse::Err(refusal)], seal: [0; 65] }
    }
}

/// The steps of one message, each decoded on its own: a step that does not decode is
/// answered `Malformed` while the others run.
pub type Steps = Vec<Result<InferRequest, CodecError>>;

/// Encodes `steps` (at most [`MAX_STEPS_PER_MESSAGE`]) into one message.
pub fn encode_steps(steps: &[InferRequest]) -> Vec<u8> {
    let encoded: Vec<Vec<u8>> = steps.iter().map(InferRequest::encode).collect();
    frame(STEPS_MAGIC, &encoded)
}

/// Decodes a message of steps. The envelope must be whole (magic, a count of 1 to
/// [`MAX_STEPS_PER_MESSAGE`], that many length-prefixed items, nothing after); each item is
/// then decoded as a request of its own.
pub fn decode_steps(bytes: &[u8]) -> Result<Steps, CodecError> {
    let (items, _) = unframe(STEPS_MAGIC, bytes, 0)?;
    Ok(items.into_iter().map(InferRequest::decode).collect())
}

/// Encodes the answers to a message of steps, in the steps' order, then their signature.
pub fn encode_answers(sealed: &SealedAnswers) -> Vec<u8> {
    let encoded: Vec<Vec<u8>> = sealed.answers.iter().map(InferResponse::encode).collect();
    let mut out = frame(ANSWERS_MAGIC, &encoded);
    out.extend_from_slice(&sealed.seal);
    out
}

/// Decodes the answers to a message of steps; any item that does not decode, or an Ok one
/// that carries a signature of its own, fails them all, as one garbled response would.
pub fn decode_answers(bytes: &[u8]) -> Result<SealedAnswers, CodecError> {
    let (items, seal) = unframe(ANSWERS_MAGIC, bytes, SEAL_BYTES)?;
    let answers = items.into_iter().map(InferResponse::decode).collect::<Result<Vec<_>, _>>()?;
    if answers
        .iter()
        .any(|a| matches!(a, InferResponse::Ok { signature, .. } if *signature != [0; 65]))
    {
        return Err(CodecError::SignedInMessage);
    }
    Ok(SealedAnswers { answers, seal: seal.try_into().expect("SEAL_BYTES") })
}

fn frame(magic: &[u8; 4], items: &[Vec<u8>]) -> Vec<u8> {
    let body: usize = items.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(envelope_bytes(items.len()) + body);
    out.extend_from_slice(magic);
    out.extend_from_slice(&(items.len() as u16).to_le_bytes());
    for item in items {
        out.extend_from_slice(&(item.len() as u32).to_le_bytes());
        out.extend_from_slice(item);
    }
    out
}

/// The items of an envelope and the `trailer` bytes after them, checked whole before any is
/// decoded.
fn unframe<'a>(
    magic: &[u8; 4],
    bytes: &'a [u8],
    trailer: usize,
) -> Result<(Vec<&'a [u8]>, &'a [u8]), CodecError> {
    let mut r = Reader::new(bytes)?;
    if r.take(4)? != magic {
        return Err(CodecError::BadMagic);
    }
    let count = usize::from(r.u16()?);
    if !(1..=MAX_STEPS_PER_MESSAGE).contains(&count) {
        return Err(CodecError::StepCount(count));
    }
    let items = (0..count)
        .map(|_| {
            let len = r.u32()? as usize;
            r.take(len)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let trailer = r.take(trailer)?;
    r.finish()?;
    Ok((items, trailer))
}

/// Messages of steps this peer sent, and the steps they carried: their ratio is how many
/// sessions share a message on average.
#[derive(Debug, Clone, Default)]
pub struct StepsSent {
    messages: Counter,
    steps: Counter,
}

impl StepsSent {
    /// Counters registered in `registry` (`infergrid_steps_messages_total`,
    /// `infergrid_steps_sent_total`).
    pub fn registered(registry: &mut Registry) -> Self {
        let sent = Self::default();
        let registry = registry.sub_registry_with_prefix("infergrid_steps");
        registry.register(
            "messages",
            "Messages of several steps sent (/infergrid/steps/2)",
            sent.messages.clone(),
        );
        registry.register("sent", "Steps sent in messages of steps", sent.steps.clone());
        sent
    }

    pub(super) fn count(&self, steps: usize) {
        self.messages.inc();
        self.steps.inc_by(steps as u64);
    }

    /// (messages sent, steps they carried).
    pub fn read(&self) -> (u64, u64) {
        (self.messages.get(), self.steps.get())
    }
}

/// The libp2p request-response codec of [`STEPS_PROTOCOL`]: one message each way per stream,
/// read to the end (at most [`MAX_MESSAGE_BYTES`]). A message whose envelope does not decode
/// is still delivered, as an error, so the node can refuse it.
#[derive(Debug, Clone, Default)]
pub struct StepsCodec;

impl libp2p::request_response::Codec for StepsCodec {
    type Protocol = StreamProtocol;
    type Request = Result<Steps, CodecError>;
    type Response = SealedAnswers;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Self::Request> {
        Ok(decode_steps(&read_limited(io, MAX_MESSAGE_BYTES).await?))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Self::Response> {
        decode_answers(&read_limited(io, MAX_MESSAGE_BYTES).await?).map_err(invalid_data)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        steps: Self::Request,
    ) -> std::io::Result<()> {
        let steps: Vec<InferRequest> = steps
            .map_err(invalid_input)?
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(invalid_input)?;
        write_message(io, &encode_steps(&steps)).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        answers: Self::Response,
    ) -> std::io::Result<()> {
        write_message(io, &encode_answers(&answers)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::codec::{ErrorCode, Payload, StepKind, WireError};

    #[test]
    fn a_message_s_answers_take_its_room_until_it_is_full() {
        let room = AnswerRoom::default();
        assert!(room.take(MAX_MESSAGE_ANSWER_VALUE_BYTES - 10));
        // What does not fit takes nothing: a smaller answer after it still fits.
        assert!(!room.take(11));
        assert!(room.take(10));
        assert!(!room.take(1));
        assert!(room.take(0), "steps answered without values always fit");
    }

    fn step(session: u64) -> InferRequest {
        InferRequest {
            model_id: [7; 32],
            first_block: 0,
            last_block: 2,
            session,
            position: 5,
            kind: StepKind::Decode,
            payment: None,
            payload: Payload::Tokens(vec![42]),
        }
    }

    #[test]
    fn steps_and_answers_round_trip_in_order() {
        let steps: Vec<InferRequest> = (1..=3).map(step).collect();
        let bytes = encode_steps(&steps);
        assert_eq!(
            bytes.len(),
            envelope_bytes(3) + steps.iter().map(InferRequest::encoded_len).sum::<usize>()
        );
        let decoded = decode_steps(&bytes).unwrap();
        assert_eq!(decoded, steps.into_iter().map(Ok).collect::<Steps>());
        let ok = InferResponse::Ok {
            output: Payload::Tokens(vec![1]),
            signature: [0; 65],
            account: None,
        };
        let sealed = SealedAnswers {
            answers: vec![ok, InferResponse::Err(WireError::new(ErrorCode::Overloaded, "busy"))],
            seal: [3; 65],
        };
        let bytes = encode_answers(&sealed);
        assert_eq!(bytes[bytes.len() - SEAL_BYTES..], [3; 65]);
        assert_eq!(decode_answers(&bytes), Ok(sealed.clone()));
        // The message's signature is whole, and nothing follows it.
        assert_eq!(decode_answers(&bytes[..bytes.len() - 1]), Err(CodecError::Truncated));
        assert_eq!(decode_answers(&[&bytes[..], &[0]].concat()), Err(CodecError::Trailing(1)));
    }

    #[test]
    fn an_answer_signed_on_its_own_inside_a_message_is_refused() {
        let signed = InferResponse::Ok {
            output: Payload::Tokens(vec![1]),
            signature: [3; 65],
            account: None,
        };
        let sealed = SealedAnswers { answers: vec![signed], seal: [3; 65] };
        assert_eq!(decode_answers(&encode_answers(&sealed)), Err(CodecError::SignedInMessage));
    }

    #[test]
    fn a_step_that_does_not_decode_spoils_only_itself() {
        let mut bytes = encode_steps(&[step(1), step(2)]);
        // The second item's magic: the first step still decodes.
        let second = envelope_bytes(1) + step(1).encoded_len() + 4;
        bytes[second] = b'X';
        let decoded = decode_steps(&bytes).unwrap();
        assert_eq!(decoded[0], Ok(step(1)));
        assert_eq!(decoded[1], Err(CodecError::BadMagic));
    }

    #[test]
    fn a_bad_envelope_is_refused_whole() {
        assert_eq!(decode_steps(b"IGB1\0\0"), Err(CodecError::StepCount(0)));
        let many: Vec<InferRequest> = (0..=MAX_STEPS_PER_MESSAGE as u64).map(step).collect();
        assert_eq!(
            decode_steps(&encode_steps(&many)),
            Err(CodecError::StepCount(MAX_STEPS_PER_MESSAGE + 1))
        );
        let one = encode_steps(&[step(1)]);
        assert_eq!(decode_steps(&one[..one.len() - 1]), Err(CodecError::Truncated));
        assert_eq!(decode_steps(&[&one[..], &[0]].concat()), Err(CodecError::Trailing(1)));
        // A length pointing past the end is truncated, not an allocation of that size.
        let mut huge = one.clone();
        huge[6..10].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_steps(&huge), Err(CodecError::Truncated));
        // A single-step request is not a message of steps, nor the answers' magic.
        assert_eq!(decode_steps(&step(1).encode()), Err(CodecError::BadMagic));
        assert_eq!(decode_answers(&one), Err(CodecError::BadMagic));
        let oversized = vec![0u8; MAX_MESSAGE_BYTES + 1];
        assert_eq!(decode_steps(&oversized), Err(CodecError::TooLarge(MAX_MESSAGE_BYTES + 1)));
    }

    #[test]
    fn one_garbled_answer_fails_them_all() {
        let answers = vec![InferResponse::Err(WireError::new(ErrorCode::Overloaded, "busy")); 2];
        let mut bytes = encode_answers(&SealedAnswers { answers, seal: [0; 65] });
        let last = bytes.len() - 1 - SEAL_BYTES;
        bytes[last] = 9; // the second answer's account flag
        assert_eq!(decode_answers(&bytes), Err(CodecError::UnknownAccountFlag(9)));
    }
}
