//! Request/response services: framing and bounds, nothing else.
//!
//! Two libp2p request-response protocols carry the point-to-point messages of
//! a job (see `docs/jobs.md`):
//!
//! | service | protocol | request ≤ | response ≤ | timeout |
//! |---|---|---|---|---|
//! | [`Service::Rpc`] | `/rendertrust/rpc/1` | 4 MiB | 4 MiB | 30 s |
//! | [`Service::Content`] | `/rendertrust/content/1` | 4 KiB | 4 MiB | 60 s |
//! | [`Service::Ledger`] | `/rendertrust/ledger/1` | 16 KiB | 4 MiB | 30 s |
//!
//! Bulk chunks do not travel here but on raw streams
//! ([`CHUNK_STREAM_PROTOCOL`], `/rendertrust/chunks/1`: one request of up to
//! 256 chunk indices, then per chunk a 9-byte header and the raw bytes; see
//! `rendertrust_protocol::rpc::ChunkStreamRequest` and `jobs::transfer`):
//! one 1 MiB chunk per request-response stream, copied through the swarm's
//! event loop both ways, moved a sealed 1 GiB input at about a quarter of a
//! plain QUIC transfer's rate.
//!
//! One request per stream (QUIC streams by default). On the stream each
//! message is a 4-byte big-endian length and that many bytes; the length is
//! checked against the service's bound *before* anything is allocated. The
//! bytes are opaque here: the job service decodes them with
//! `rendertrust_protocol::rpc`, bounded again, and treats them as hostile.
//! The remote peer is authenticated by the transport (noise / TLS), so the
//! receiver knows who sent a request without a signature.

use std::io;
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response::{self, Codec, ProtocolSupport};

/// The RPC protocol name.
pub const RPC_PROTOCOL: StreamProtocol = StreamProtocol::new("/rendertrust/rpc/1");
/// The content protocol name.
pub const CONTENT_PROTOCOL: StreamProtocol = StreamProtocol::new("/rendertrust/content/1");
/// The ledger protocol name (rollup reconciliation between ledger peers).
pub const LEDGER_PROTOCOL: StreamProtocol = StreamProtocol::new("/rendertrust/ledger/1");

/// The chunk stream protocol name (raw libp2p streams, not request-response).
pub const CHUNK_STREAM_PROTOCOL: StreamProtocol = StreamProtocol::new("/rendertrust/chunks/1");

/// Largest ledger request (`RollupRequest`).
pub const MAX_LEDGER_REQUEST: usize = 16 << 10;
/// Largest ledger response (`RollupResponse`) plus framing slack.
pub const MAX_LEDGER_RESPONSE: usize = (4 << 20) + 1024;
/// Ledger requests time out after this long.
pub const LEDGER_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest RPC request or response.
pub const MAX_RPC_BYTES: usize = 4 << 20;
/// Largest content request.
pub const MAX_CONTENT_REQUEST: usize = 4 << 10;
/// Largest content response: what `rendertrust_protocol::rpc` decodes (4 MiB)
/// plus framing slack.
pub const MAX_CONTENT_RESPONSE: usize = (4 << 20) + 1024;

/// RPC requests time out after this long.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// Content requests time out after this long.
pub const CONTENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Concurrent inbound + outbound streams per connection and service.
pub const MAX_STREAMS: usize = 64;

/// Which request-response service a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// Job control messages.
    Rpc,
    /// Manifests and sealed chunks.
    Content,
    /// Rollup reconciliation between ledger peers.
    Ledger,
}

impl Service {
    /// Request and response bounds.
    pub const fn limits(self) -> (usize, usize) {
        match self {
            Service::Rpc => (MAX_RPC_BYTES, MAX_RPC_BYTES),
            Service::Content => (MAX_CONTENT_REQUEST, MAX_CONTENT_RESPONSE),
            Service::Ledger => (MAX_LEDGER_REQUEST, MAX_LEDGER_RESPONSE),
        }
    }
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Service::Rpc => "rpc",
            Service::Content => "content",
            Service::Ledger => "ledger",
        })
    }
}

/// Length-prefixed opaque bytes with a bound per direction.
#[derive(Debug, Clone, Copy)]
pub struct BytesCodec {
    max_request: usize,
    max_response: usize,
}

impl BytesCodec {
    /// A codec with the bounds of `service`.
    pub const fn new(service: Service) -> Self {
        let (max_request, max_response) = service.limits();
        BytesCodec {
            max_request,
            max_response,
        }
    }
}

async fn read_bounded<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {len} bytes exceeds the limit of {max}"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_bounded<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    bytes: &[u8],
    max: usize,
) -> io::Result<()> {
    if bytes.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "message of {} bytes exceeds the limit of {max}",
                bytes.len()
            ),
        ));
    }
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "message too long"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

impl Codec for BytesCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_bounded(io, self.max_request).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_bounded(io, self.max_response).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_bounded(io, &req, self.max_request).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_bounded(io, &res, self.max_response).await
    }
}

/// The request-response behaviour of a service.
pub fn behaviour(service: Service) -> request_response::Behaviour<BytesCodec> {
    let (protocol, timeout) = match service {
        Service::Rpc => (RPC_PROTOCOL, RPC_TIMEOUT),
        Service::Content => (CONTENT_PROTOCOL, CONTENT_TIMEOUT),
        Service::Ledger => (LEDGER_PROTOCOL, LEDGER_TIMEOUT),
    };
    request_response::Behaviour::with_codec(
        BytesCodec::new(service),
        [(protocol, ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(timeout)
            .with_max_concurrent_streams(MAX_STREAMS),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    fn block<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn round_trip_and_bounds() {
        let mut codec = BytesCodec::new(Service::Content);
        let mut buf = Cursor::new(Vec::new());
        block(codec.write_request(&CONTENT_PROTOCOL, &mut buf, vec![1, 2, 3])).unwrap();
        let bytes = buf.into_inner();
        assert_eq!(bytes, vec![0, 0, 0, 3, 1, 2, 3]);
        let got = block(codec.read_request(&CONTENT_PROTOCOL, &mut Cursor::new(bytes))).unwrap();
        assert_eq!(got, vec![1, 2, 3]);

        // Too long to write, and a declared length over the bound is refused
        // before any allocation.
        let mut sink = Cursor::new(Vec::new());
        let big = vec![0u8; MAX_CONTENT_REQUEST + 1];
        assert!(block(codec.write_request(&CONTENT_PROTOCOL, &mut sink, big)).is_err());
        let lie = u32::MAX.to_be_bytes().to_vec();
        let err = block(codec.read_request(&CONTENT_PROTOCOL, &mut Cursor::new(lie))).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        // A truncated body is an error, not a short message.
        let short = vec![0, 0, 0, 5, 1, 2];
        assert!(block(codec.read_request(&CONTENT_PROTOCOL, &mut Cursor::new(short))).is_err());
    }
}
