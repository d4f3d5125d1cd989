//! The experiment state machine:
//! `draft → running ⇄ paused → completed`, and any state → `archived`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Where an experiment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Being set up; variants, weights, salt and layer may still change.
    Draft,
    /// Assigning units.
    Running,
    /// Temporarily not assigning; everyone gets the control.
    Paused,
    /// Finished; everyone gets the winner, or the control if none was named.
    Completed,
    /// Deleted through the API. Data is kept; the key stays taken.
    Archived,
}

impl Status {
    /// Every status, for listing and metrics.
    pub const ALL: [Status; 5] = [
        Status::Draft,
        Status::Running,
        Status::Paused,
        Status::Completed,
        Status::Archived,
    ];

    /// The status name as used in JSON and query strings.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "draft",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Completed => "completed",
            Status::Archived => "archived",
        }
    }

    /// The status after `action`, or `invalid_transition`.
    pub fn apply(self, action: Action) -> Result<Status> {
        use Action as A;
        use Status as S;
        match (self, action) {
            (S::Draft, A::Start) => Ok(S::Running),
            (S::Running, A::Pause) => Ok(S::Paused),
            (S::Paused, A::Resume) => Ok(S::Running),
            (S::Running | S::Paused, A::Complete) => Ok(S::Completed),
            (S::Archived, A::Archive) => Err(Error::InvalidTransition {
                from: self.as_str(),
                action: action.as_str(),
            }),
            (_, A::Archive) => Ok(S::Archived),
            _ => Err(Error::InvalidTransition {
                from: self.as_str(),
                action: action.as_str(),
            }),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A lifecycle action, as named in `POST /v1/experiments/{key}/{action}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `draft → running`.
    Start,
    /// `running → paused`.
    Pause,
    /// `paused → running`.
    Resume,
    /// `running | paused → completed`.
    Complete,
    /// Anything but `archived` → `archived` (`DELETE`).
    Archive,
}

impl Action {
    /// The action's name in URLs and webhook event types.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Complete => "complete",
            Action::Archive => "archive",
        }
    }

    /// What the experiment was, in the audit log: `experiment.started`.
    pub fn past_tense(self) -> &'static str {
        match self {
            Action::Start => "started",
            Action::Pause => "paused",
            Action::Resume => "resumed",
            Action::Complete => "completed",
            Action::Archive => "archived",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_happy_path_is_allowed() {
        let s = Status::Draft.apply(Action::Start).unwrap();
        let s = s.apply(Action::Pause).unwrap();
        let s = s.apply(Action::Resume).unwrap();
        let s = s.apply(Action::Complete).unwrap();
        assert_eq!(s, Status::Completed);
        assert_eq!(s.apply(Action::Archive).unwrap(), Status::Archived);
        assert_eq!(
            Status::Paused.apply(Action::Complete).unwrap(),
            Status::Completed
        );
    }

    #[test]
    fn every_other_transition_is_refused() {
        let allowed = [
            (Status::Draft, Action::Start),
            (Status::Running, Action::Pause),
            (Status::Paused, Action::Resume),
            (Status::Running, Action::Complete),
            (Status::Paused, Action::Complete),
        ];
        let actions = [
            Action::Start,
            Action::Pause,
            Action::Resume,
            Action::Complete,
        ];
        for from in Status::ALL {
            for action in actions {
                let result = from.apply(action);
                assert_eq!(
                    result.is_ok(),
                    allowed.contains(&(from, action)),
                    "{from} {action:?}"
                );
                if let Err(e) = result {
                    assert!(matches!(e, Error::InvalidTransition { .. }));
                }
            }
            assert_eq!(
                from.apply(Action::Archive).is_ok(),
                from != Status::Archived
            );
        }
    }
}
