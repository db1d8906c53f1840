//! SDK errors.

use anima_protocol::TransportError;

/// Why a module could not start or serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SdkError {
    /// The capability contract is invalid.
    #[error("contract: {0}")]
    Contract(#[from] anima_protocol::ContractError),
    /// The file descriptor set describing the served services is unusable.
    #[error("contract: {0}")]
    Descriptors(String),
    /// The served methods differ from the declared ones.
    #[error("the served methods differ from the contract: {0}")]
    MethodMismatch(String),
    /// The interfaces the contract provides do not match the definitions
    /// given, or their methods are not declared (P1).
    #[error("interfaces: {0}")]
    Interface(String),
    /// The certificate's identity is not the contract's.
    #[error("certificate identity {cert} differs from the contract's {contract}")]
    IdentityMismatch {
        /// The certificate's URN.
        cert: String,
        /// The contract's URN.
        contract: String,
    },
    /// TLS or identity setup failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The lease signer could not be built.
    #[error("lease signer: {0}")]
    Signer(#[from] anima_protocol::lease::LeaseError),
    /// The gRPC server failed.
    #[error("server: {0}")]
    Server(#[from] tonic::transport::Error),
    /// The launch environment is incomplete or malformed.
    #[error("launch: {0}")]
    Launch(String),
    /// The launch environment (`ANIMA_*`) is incomplete or malformed.
    #[error("launch: {0}")]
    LaunchEnv(#[from] anima_protocol::launch::LaunchEnvError),
    /// An I/O failure (binding, the launch handshake).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
