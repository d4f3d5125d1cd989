//! The engine's one error type.

/// Everything the engine can refuse or fail at. The HTTP layer maps each
/// variant to a status code in exactly one place.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No experiment has this key.
    #[error("experiment '{0}' not found")]
    ExperimentNotFound(String),
    /// No holdout has this key.
    #[error("holdout '{0}' not found")]
    HoldoutNotFound(String),
    /// No webhook subscription has this id.
    #[error("webhook subscription '{0}' not found")]
    WebhookNotFound(String),
    /// No alert rule has this id.
    #[error("alert rule '{0}' not found")]
    RuleNotFound(String),
    /// No alert has this id.
    #[error("alert '{0}' not found")]
    AlertNotFound(String),
    /// No API key has this id (or the caller may not see it).
    #[error("API key '{0}' not found")]
    KeyNotFound(String),
    /// No project has this key.
    #[error("project '{0}' not found")]
    ProjectNotFound(String),
    /// An id cannot be linked to this unit (see `POST /v1/aliases`).
    #[error("{0}")]
    LinkConflict(String),
    /// A project with this key exists already.
    #[error("project '{0}' already exists")]
    ProjectExists(String),
    /// This server cannot do that in the mode it runs in.
    #[error("{0}")]
    Unsupported(&'static str),
    /// The caller's role or project does not allow this change.
    #[error("{0}")]
    NotPermitted(String),
    /// An alert cannot go this way from where it is.
    #[error("cannot {action} an alert that is {from}")]
    AlertTransition {
        /// Where the alert is (its status).
        from: &'static str,
        /// What was asked.
        action: &'static str,
    },
    /// An experiment with this key exists already (archived ones included).
    #[error("experiment '{0}' already exists")]
    ExperimentExists(String),
    /// The experiment's layer slice overlaps another experiment's in the
    /// same layer, which could then reach the same unit.
    #[error("layer '{layer}' [{start}, {end}) overlaps experiment '{other}', which holds [{other_start}, {other_end})")]
    LayerOverlap {
        /// The layer's key.
        layer: String,
        /// The asked slice.
        start: f64,
        /// Its end.
        end: f64,
        /// The experiment holding the overlapping slice.
        other: String,
        /// Its slice.
        other_start: f64,
        /// Its end.
        other_end: f64,
    },
    /// A value is well-formed JSON but breaks a rule.
    #[error("{message}")]
    Invalid {
        /// Path of the offending field, e.g. `variants[1].weight`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// One event of a request breaks a rule; nothing of the request was
    /// kept.
    #[error("event {index}: {message}")]
    InvalidEvent {
        /// The event's position in the request, from 0.
        index: usize,
        /// Path of the offending field within the event.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The lifecycle does not allow this action from the current status.
    #[error("cannot {action} an experiment that is {from}")]
    InvalidTransition {
        /// Status the experiment is in.
        from: &'static str,
        /// What was asked, e.g. `start`.
        action: &'static str,
    },
    /// A started experiment's allocation cannot change this way.
    #[error("{message}")]
    Reallocation {
        /// Why.
        message: String,
    },
    /// The field may only change while the experiment is a draft.
    #[error("'{field}' can only change while the experiment is a draft; it is {status}")]
    NotEditable {
        /// The field that was asked to change.
        field: &'static str,
        /// Status the experiment is in.
        status: &'static str,
    },
    /// A project has spent its quota of a rate for now.
    #[error("project '{project}' is over its {quota} quota; retry in {retry_after_s} s")]
    OverQuota {
        /// The project.
        project: std::sync::Arc<str>,
        /// `events_per_second` or `assignments_per_second`.
        quota: &'static str,
        /// Whole seconds until the request would pass (at least 1).
        retry_after_s: u64,
    },
    /// A bounded mailbox is full; the caller should retry shortly.
    #[error("the {0} mailbox is full")]
    Overloaded(&'static str),
    /// The engine is shutting down or an actor has stopped.
    #[error("the engine is not running")]
    Unavailable,
    /// Cluster mode: another node changed the record (an experiment, an
    /// alert rule, an alert) since this node last saw it, and its change
    /// won; read it and retry.
    #[error("{0} was changed by another node meanwhile; read it and retry")]
    ChangedElsewhere(String),
    /// Cluster mode: the NATS JetStream cluster did not answer or refused.
    #[error("the cluster is unavailable: {0}")]
    Cluster(String),
    /// RocksDB failed.
    #[error("storage: {0}")]
    Storage(#[from] rocksdb::Error),
    /// A stored record could not be decoded.
    #[error("corrupt record in {cf}: {reason}")]
    Corrupt {
        /// Column family the record is in.
        cf: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// A validation failure on `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// `error`, if a validation failure, as one of the `index`-th event of
    /// a request.
    pub fn in_event(index: usize, error: Self) -> Self {
        match error {
            Self::Invalid { field, message } => Self::InvalidEvent {
                index,
                field,
                message,
            },
            other => other,
        }
    }
}

impl From<actix::MailboxError> for Error {
    fn from(_: actix::MailboxError) -> Self {
        Self::Unavailable
    }
}

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;
