//! The job state machine, validated in one place:
//! Idle -> Scanning -> Running <-> Paused -> Completed | Failed | Cancelled.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Idle,
    /// Resolving the job and loading what an earlier run already finished.
    Scanning,
    /// Copying (shown as "migrating" by rebalance).
    Running,
    /// No new I/O is submitted; in-flight I/O has completed.
    Paused,
    Completed,
    Failed,
    Cancelled,
}

/// What a job reports while it runs (here, below the job and the engine that both send it).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    State {
        from: JobState,
        to: JobState,
    },
    /// ENOSPC: the job paused itself; free space and resume.
    #[serde(rename = "destination_full")]
    DestinationFull {
        path: String,
    },
    Rate {
        bytes_per_sec: u64,
        ops_per_sec: u64,
    },
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Cancelled
        )
    }

    /// Whether `self -> to` is a legal transition.
    pub fn can_go(self, to: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, to),
            (Idle, Scanning)
                | (Idle, Failed)
                | (Idle, Cancelled)
                | (Scanning, Running)
                | (Scanning, Paused)
                | (Scanning, Completed)
                | (Scanning, Failed)
                | (Scanning, Cancelled)
                | (Running, Paused)
                | (Running, Completed)
                | (Running, Failed)
                | (Running, Cancelled)
                | (Paused, Running)
                | (Paused, Failed)
                | (Paused, Cancelled)
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            JobState::Idle => "idle",
            JobState::Scanning => "scanning",
            JobState::Running => "running",
            JobState::Paused => "paused",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// A rejected transition.
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidTransition {
    pub from: JobState,
    pub to: JobState,
}

impl std::fmt::Display for InvalidTransition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "job cannot go from {} to {}",
            self.from.name(),
            self.to.name()
        )
    }
}

impl std::error::Error for InvalidTransition {}

/// The current state plus the rule; every accepted change is returned so it can become an
/// event.
#[derive(Debug)]
pub struct Machine {
    state: JobState,
}

impl Default for Machine {
    fn default() -> Self {
        Machine {
            state: JobState::Idle,
        }
    }
}

impl Machine {
    pub fn state(&self) -> JobState {
        self.state
    }

    pub fn go(&mut self, to: JobState) -> Result<(JobState, JobState), InvalidTransition> {
        if !self.state.can_go(to) {
            return Err(InvalidTransition {
                from: self.state,
                to,
            });
        }
        let from = self.state;
        self.state = to;
        Ok((from, to))
    }
}

#[cfg(test)]
mod tests {
    use super::JobState::*;
    use super::*;

    const ALL: [JobState; 7] = [
        Idle, Scanning, Running, Paused, Completed, Failed, Cancelled,
    ];

    #[test]
    fn the_happy_path_and_pause_cycles_are_legal() {
        let mut m = Machine::default();
        for to in [
            Scanning, Running, Paused, Running, Paused, Running, Completed,
        ] {
            m.go(to).unwrap();
        }
        assert_eq!(m.state(), Completed);
    }

    #[test]
    fn terminal_states_have_no_exit_and_nothing_skips_ahead() {
        for from in ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in ALL {
                assert!(!from.can_go(to), "{from:?} -> {to:?}");
            }
        }
        assert!(!Idle.can_go(Running), "running needs a scan first");
        assert!(!Idle.can_go(Paused));
        assert!(!Paused.can_go(Completed), "resume before completing");
        assert!(!Running.can_go(Scanning));
        for s in ALL {
            assert!(!s.can_go(s), "{s:?} -> itself is not a transition");
        }
        let mut m = Machine::default();
        assert_eq!(
            m.go(Completed),
            Err(InvalidTransition {
                from: Idle,
                to: Completed
            })
        );
        assert_eq!(m.state(), Idle, "a rejected transition changes nothing");
    }
}
