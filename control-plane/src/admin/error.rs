//! The admin API's one error type, mapped to gRPC status codes with a message a person can act
//! on. Database details stay in the server's log; the caller gets what it can fix.

use crate::store::StoreError;

#[derive(Debug, Clone)]
pub enum AdminError {
    /// No credential, or one that is not valid for the admin API.
    Unauthenticated(&'static str),
    PermissionDenied(String),
    InvalidArgument(String),
    NotFound(String),
    AlreadyExists(String),
    /// The request is valid but the state does not allow it (e.g. deleting a referenced object).
    FailedPrecondition(String),
    /// Lost a race too many times; retrying is safe.
    Aborted(String),
    Internal,
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::NotFound("no such object".into()),
            StoreError::Conflict(what) => Self::AlreadyExists(format!("{what} is already taken")),
            StoreError::Contended => Self::Aborted("the object is being changed concurrently; try again".into()),
            StoreError::Refused(why) => Self::PermissionDenied(why),
            StoreError::InUse(_) => Self::FailedPrecondition(
                "other objects still refer to this one (or it refers to one that does not exist); move or delete them first".into(),
            ),
            StoreError::Corrupt(_) | StoreError::Database(_) => {
                eprintln!("sluice: store error: {e}");
                Self::Internal
            }
        }
    }
}

impl From<AdminError> for tonic::Status {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Unauthenticated(why) => tonic::Status::unauthenticated(why),
            AdminError::PermissionDenied(why) => tonic::Status::permission_denied(why),
            AdminError::InvalidArgument(why) => tonic::Status::invalid_argument(why),
            AdminError::NotFound(what) => tonic::Status::not_found(what),
            AdminError::AlreadyExists(what) => tonic::Status::already_exists(what),
            AdminError::Aborted(why) => tonic::Status::aborted(why),
            AdminError::FailedPrecondition(why) => tonic::Status::failed_precondition(why),
            AdminError::Internal => tonic::Status::internal("internal error; the control plane's log has the details"),
        }
    }
}

impl AdminError {
    /// The message a caller would see.
    pub fn message(&self) -> String {
        tonic::Status::from(self.clone()).message().to_owned()
    }
}

pub type AdminResult<T> = Result<T, AdminError>;

/// Maps a store error where a named object was expected: a missing one is "no such {what}";
/// anything else keeps its own mapping (a database failure is never reported as "not found").
pub fn missing(what: &'static str) -> impl Fn(StoreError) -> AdminError {
    move |e| match e {
        StoreError::NotFound => AdminError::NotFound(format!("no such {what}")),
        other => other.into(),
    }
}
