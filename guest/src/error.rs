//! The core's one error type. Each variant is one exception class of the reference
//! library; the component maps it 1:1 onto the WIT `error` variant.

use std::fmt;

/// Errors the library reports to the charm.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// `RollingOpsNoRelationError`.
    NoRelation(String),
    /// `RollingOpsFileSystemError`.
    FileSystem(String),
    /// `RollingOpsInvalidLockRequestError`.
    InvalidLockRequest(String),
    /// `RollingOpsDecodingError`.
    Decoding(String),
    /// `RollingOpsInvalidSecretContentError`.
    InvalidSecretContent(String),
    /// `RollingOpsLibMissingError`.
    LibMissing(String),
    /// `RollingOpsEtcdctlError`.
    Etcdctl(String),
    /// `RollingOpsEtcdNotConfiguredError`.
    EtcdNotConfigured(String),
    /// `RollingOpsSyncLockError`.
    SyncLock(String),
    /// `TimeoutError`.
    Timeout(String),
    /// `ValueError`.
    InvalidArgument(String),
    /// A host effect (hook tool, file, process) failed.
    Host(String),
}

impl Error {
    /// The message alone, without the class.
    pub fn message(&self) -> &str {
        match self {
            Error::NoRelation(m)
            | Error::FileSystem(m)
            | Error::InvalidLockRequest(m)
            | Error::Decoding(m)
            | Error::InvalidSecretContent(m)
            | Error::LibMissing(m)
            | Error::Etcdctl(m)
            | Error::EtcdNotConfigured(m)
            | Error::SyncLock(m)
            | Error::Timeout(m)
            | Error::InvalidArgument(m)
            | Error::Host(m) => m,
        }
    }

    /// The reference's exception class name.
    pub fn class(&self) -> &'static str {
        match self {
            Error::NoRelation(_) => "RollingOpsNoRelationError",
            Error::FileSystem(_) => "RollingOpsFileSystemError",
            Error::InvalidLockRequest(_) => "RollingOpsInvalidLockRequestError",
            Error::Decoding(_) => "RollingOpsDecodingError",
            Error::InvalidSecretContent(_) => "RollingOpsInvalidSecretContentError",
            Error::LibMissing(_) => "RollingOpsLibMissingError",
            Error::Etcdctl(_) => "RollingOpsEtcdctlError",
            Error::EtcdNotConfigured(_) => "RollingOpsEtcdNotConfiguredError",
            Error::SyncLock(_) => "RollingOpsSyncLockError",
            Error::Timeout(_) => "TimeoutError",
            Error::InvalidArgument(_) => "ValueError",
            Error::Host(_) => "RollingOpsError",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class(), self.message())
    }
}

impl std::error::Error for Error {}
