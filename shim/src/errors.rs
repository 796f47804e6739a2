//! The shim's errors and the one place that maps them to ttrpc status codes.

use containerd_shim::protos::ttrpc::{self, Code};

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("usernsrs: {0} is not implemented yet")]
    Unimplemented(&'static str),
    #[error("{context}")]
    Internal {
        context: String,
        #[source]
        err: anyhow::Error,
    },
}

impl ShimError {
    pub fn internal<C: Into<String>, E: Into<anyhow::Error>>(
        context: C,
    ) -> impl FnOnce(E) -> ShimError {
        let context = context.into();
        move |err| ShimError::Internal {
            context,
            err: err.into(),
        }
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        let code = match &e {
            ShimError::NotFound(_) => Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            ShimError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            ShimError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            ShimError::Unimplemented(_) => Code::UNIMPLEMENTED,
            ShimError::Internal { .. } => Code::INTERNAL,
        };
        let message = usernsrs_init::error_chain(&e);
        log::warn!("rpc error {code:?}: {message}");
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
    }
}

pub type Result<T> = std::result::Result<T, ShimError>;
