//! `/infergrid/pieces/1`: a model's manifest and the pieces of its files, asked of a peer
//! one per stream (`wire.md`, "Pieces"). The bytes are checked by the asker against the
//! model id, never trusted; this module only moves them.

use futures::{AsyncRead, AsyncWrite};
use libp2p::StreamProtocol;

use super::protocol::{invalid_data, invalid_input, read_limited, write_message};
use crate::model::pieces::MAX_PIECE_BYTES;

/// The versioned protocol id.
pub const PIECES_PROTOCOL: StreamProtocol = StreamProtocol::new("/infergrid/pieces/1");

/// The largest manifest a peer sends or takes.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// The largest request: kind, model id, a 255-byte file name and an index.
const MAX_REQUEST_BYTES: usize = 1 + 32 + 1 + 255 + 4;
/// The largest response: a tag and a piece or a manifest.
const MAX_RESPONSE_BYTES: usize = 1 + if MAX_MANIFEST_BYTES > MAX_PIECE_BYTES as usize {
    MAX_MANIFEST_BYTES
} else {
    MAX_PIECE_BYTES as usize
};

/// What one stream asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PieceRequest {
    /// The manifest of `model`, as the seeder holds it.
    Manifest { model: [u8; 32] },
    /// Piece `index` of `file` of `model`.
    Piece { model: [u8; 32], file: String, index: u32 },
}

wire_enum! {
    /// Why a seeder did not send what was asked.
    pub enum Refusal: u8 {
        /// It does not seed this model.
        UnknownModel = 1,
        /// The file is not in the manifest, or not held by this seeder.
        UnknownFile = 2,
        /// The file has no piece with this index.
        OutOfRange = 3,
        /// Too many requests at once: ask again later, or elsewhere.
        Busy = 4,
        /// The request did not parse.
        Malformed = 5,
        /// It could not read the piece (or seeds nothing).
        Unavailable = 6,
    }
}

/// The answer on one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PieceResponse {
    Manifest(Vec<u8>),
    Piece(Vec<u8>),
    Refused { refusal: Refusal, message: String },
}

impl PieceResponse {
    pub fn refused(refusal: Refusal, message: impl Into<String>) -> Self {
        Self::Refused { refusal, message: message.into() }
    }
}

/// A message that is not a valid request or response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed pieces message: {0}")]
pub struct PiecesCodecError(pub &'static str);

const MANIFEST: u8 = 1;
const PIECE: u8 = 2;
const REFUSED: u8 = 3;

impl PieceRequest {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Manifest { model } => [&[MANIFEST][..], model].concat(),
            Self::Piece { model, file, index } => {
                let name = file.as_bytes();
                let length = u8::try_from(name.len()).expect("file names are at most 255 bytes");
                [&[PIECE][..], model, &[length], name, &index.to_be_bytes()].concat()
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, PiecesCodecError> {
        let (&kind, rest) = bytes.split_first().ok_or(PiecesCodecError("empty request"))?;
        let (model, rest) =
            rest.split_first_chunk::<32>().ok_or(PiecesCodecError("no model id"))?;
        match kind {
            MANIFEST if rest.is_empty() => Ok(Self::Manifest { model: *model }),
            PIECE => {
                let (&length, rest) = rest.split_first().ok_or(PiecesCodecError("no file name"))?;
                if rest.len() != length as usize + 4 {
                    return Err(PiecesCodecError("file name and index of the wrong length"));
                }
                let (name, index) = rest.split_at(length as usize);
                let file = std::str::from_utf8(name)
                    .map_err(|_| PiecesCodecError("file name is not UTF-8"))?
                    .to_owned();
                let index = u32::from_be_bytes(index.try_into().expect("4 bytes"));
                Ok(Self::Piece { model: *model, file, index })
            }
            MANIFEST => Err(PiecesCodecError("trailing bytes after a manifest request")),
            _ => Err(PiecesCodecError("unknown request kind")),
        }
    }
}

impl PieceResponse {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Manifest(bytes) => [&[MANIFEST][..], bytes].concat(),
            Self::Piece(bytes) => [&[PIECE][..], bytes].concat(),
            Self::Refused { refusal, message } => {
                [&[REFUSED, *refusal as u8][..], message.as_bytes()].concat()
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, PiecesCodecError> {
        let (&kind, rest) = bytes.split_first().ok_or(PiecesCodecError("empty response"))?;
        match kind {
            MANIFEST if rest.len() <= MAX_MANIFEST_BYTES => Ok(Self::Manifest(rest.to_vec())),
            PIECE if rest.len() as u64 <= MAX_PIECE_BYTES => Ok(Self::Piece(rest.to_vec())),
            MANIFEST | PIECE => Err(PiecesCodecError("oversized manifest or piece")),
            REFUSED => {
                let (&code, message) =
                    rest.split_first().ok_or(PiecesCodecError("refusal without a code"))?;
                let refusal =
                    Refusal::from_wire(code).ok_or(PiecesCodecError("unknown refusal code"))?;
                // A peer's words end up in logs and terminals: no control characters.
                let message = String::from_utf8_lossy(message)
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(512)
                    .collect();
                Ok(Self::Refused { refusal, message })
            }
            _ => Err(PiecesCodecError("unknown response kind")),
        }
    }
}

/// What a node seeds: answers each request (from a blocking thread: it reads files).
pub trait PieceSource: Send + Sync + 'static {
    fn answer(&self, request: PieceRequest) -> PieceResponse;
}

/// One message per stream, read up to its limit: a peer cannot make us hold more.
#[derive(Debug, Clone, Default)]
pub struct PiecesCodec;

/// A whole message of at most `limit` bytes; a longer one is an I/O error.
async fn read_capped<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    limit: usize,
) -> std::io::Result<Vec<u8>> {
    let bytes = read_limited(io, limit).await?;
    if bytes.len() > limit {
        let error = format!("pieces message over {limit} bytes");
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, error));
    }
    Ok(bytes)
}

impl libp2p::request_response::Codec for PiecesCodec {
    type Protocol = StreamProtocol;
    /// A request that does not parse is still delivered, to be answered `Malformed`.
    type Request = Result<PieceRequest, PiecesCodecError>;
    type Response = PieceResponse;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Self::Request> {
        Ok(PieceRequest::decode(&read_capped(io, MAX_REQUEST_BYTES).await?))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Self::Response> {
        PieceResponse::decode(&read_capped(io, MAX_RESPONSE_BYTES).await?).map_err(invalid_data)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Self::Request,
    ) -> std::io::Result<()> {
        write_message(io, &request.map_err(invalid_input)?.encode()).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Self::Response,
    ) -> std::io::Result<()> {
        write_message(io, &response.encode()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_round_trip() {
        let model = [7u8; 32];
        for request in [
            PieceRequest::Manifest { model },
            PieceRequest::Piece { model, file: "block-1.weights".into(), index: 41 },
        ] {
            assert_eq!(PieceRequest::decode(&request.encode()), Ok(request));
        }
        for response in [
            PieceResponse::Manifest(b"{}".to_vec()),
            PieceResponse::Piece(vec![1, 2, 3]),
            PieceResponse::refused(Refusal::Busy, "later"),
        ] {
            assert_eq!(PieceResponse::decode(&response.encode()), Ok(response));
        }
    }

    #[test]
    fn malformed_messages_are_refused() {
        let piece = PieceRequest::Piece { model: [0; 32], file: "a".into(), index: 1 }.encode();
        for (bytes, why) in [
            (&[][..], "empty request"),
            (&[PIECE, 1, 2][..], "no model id"),
            (&piece[..piece.len() - 1], "wrong length"),
            (&[MANIFEST; 34][..], "trailing bytes"),
            (&[9; 33][..], "unknown request kind"),
        ] {
            let error = PieceRequest::decode(bytes).unwrap_err();
            assert!(error.to_string().contains(why), "{error} for {why}");
        }
        let mut bad_name = piece.clone();
        bad_name[34] = 0xff;
        assert!(PieceRequest::decode(&bad_name).unwrap_err().to_string().contains("UTF-8"));
        let oversized = [&[PIECE][..], &vec![0u8; MAX_PIECE_BYTES as usize + 1]].concat();
        assert!(PieceResponse::decode(&oversized).unwrap_err().to_string().contains("oversized"));
        assert!(PieceResponse::decode(&[REFUSED, 99]).unwrap_err().to_string().contains("code"));
    }
}
