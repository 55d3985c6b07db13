use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream that may be plain TCP or TLS, so a session can switch after STARTTLS.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub(crate) type BoxedIo = Box<dyn Io>;
