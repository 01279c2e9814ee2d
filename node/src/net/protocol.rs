//! The libp2p request-response codec carrying [`InferRequest`]s and [`InferResponse`]s.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

use super::codec::{CodecError, InferRequest, InferResponse, MAX_MESSAGE_BYTES};

/// The versioned protocol id.
pub const INFER_PROTOCOL: StreamProtocol = StreamProtocol::new("/infergrid/infer/3");

/// Earlier versions, still accepted inbound only to refuse every request with a message that
/// names the current one, written in their own response format (`IGS1`, which they shared),
/// instead of a bare protocol negotiation failure a peer cannot tell from an outage.
pub const RETIRED_INFER_PROTOCOLS: [StreamProtocol; 2] =
    [StreamProtocol::new("/infergrid/infer/1"), StreamProtocol::new("/infergrid/infer/2")];

/// Reads a whole stream (one message per stream) up to the size limit. A request that does
/// not parse is still delivered, as an error, so the node can answer it with a typed refusal.
#[derive(Debug, Clone, Default)]
pub struct InferCodec;

/// Reads a whole stream (one message), at most `limit` bytes and one more, so that an
/// over-long message shows without being held whole.
pub(super) async fn read_limited<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    limit: usize,
) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(limit as u64 + 1).read_to_end(&mut buf).await?;
    Ok(buf)
}

/// Writes one whole message and closes the stream's write side: the reader reads to EOF.
pub(super) async fn write_message<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    bytes: &[u8],
) -> std::io::Result<()> {
    io.write_all(bytes).await?;
    io.close().await
}

/// A message that cannot be sent, as the I/O error the codec traits return.
pub(super) fn invalid_input(
    error: impl std::error::Error + Send + Sync + 'static,
) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, error)
}

/// A message received that does not parse, likewise.
pub(super) fn invalid_data(
    error: impl std::error::Error + Send + Sync + 'static,
) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, error)
}

impl libp2p::request_response::Codec for InferCodec {
    type Protocol = StreamProtocol;
    type Request = Result<InferRequest, CodecError>;
    type Response = InferResponse;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Self::Request> {
        let bytes = read_limited(io, MAX_MESSAGE_BYTES).await?;
        if *protocol != INFER_PROTOCOL {
            return Ok(Err(CodecError::Retired {
                retired: protocol.to_string(),
                current: INFER_PROTOCOL.to_string(),
            }));
        }
        Ok(InferRequest::decode(&bytes))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Self::Response> {
        InferResponse::decode(&read_limited(io, MAX_MESSAGE_BYTES).await?).map_err(invalid_data)
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
        protocol: &StreamProtocol,
        io: &mut T,
        response: Self::Response,
    ) -> std::io::Result<()> {
        let bytes = match (&response, *protocol == INFER_PROTOCOL) {
            (_, true) => response.encode(),
            // Every request on a retired version is refused, in that version's format.
            (InferResponse::Err(refusal), false) => refusal.encode_retired(),
            (InferResponse::Ok { .. }, false) => {
                return Err(invalid_input(CodecError::Retired {
                    retired: protocol.to_string(),
                    current: INFER_PROTOCOL.to_string(),
                }));
            }
        };
        write_message(io, &bytes).await
    }
}
