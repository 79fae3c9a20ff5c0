//! The agent's state machine, validated in one table. Every transition is an event (stdout with
//! `--json`, the status API, the metrics).
//!
//! Init → ClaimingId → Election → WaitingAssignment → Stable; Stable → Scaling (a member
//! joined) → Rebalancing → Stable; Stable → Emergency (a member's lease expired) → Stable;
//! any → Shutdown. Also: a lost lease sends a running agent back to ClaimingId, a window that
//! sees a member lost becomes Emergency, and a hand-over seen straight from Stable or Emergency
//! is Rebalancing.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    Init,
    ClaimingId,
    Election,
    WaitingAssignment,
    Stable,
    Scaling,
    Rebalancing,
    Emergency,
    Shutdown,
}

use AgentState::*;

impl AgentState {
    pub const ALL: [AgentState; 9] = [
        Init,
        ClaimingId,
        Election,
        WaitingAssignment,
        Stable,
        Scaling,
        Rebalancing,
        Emergency,
        Shutdown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Init => "init",
            ClaimingId => "claiming_id",
            Election => "election",
            WaitingAssignment => "waiting_assignment",
            Stable => "stable",
            Scaling => "scaling",
            Rebalancing => "rebalancing",
            Emergency => "emergency",
            Shutdown => "shutdown",
        }
    }

    /// Whether the agent has joined (its lease and id are held).
    fn running(self) -> bool {
        matches!(
            self,
            WaitingAssignment | Stable | Scaling | Rebalancing | Emergency
        )
    }

    /// The one table of legal transitions.
    pub fn can_go(self, to: AgentState) -> bool {
        if to == Shutdown {
            return self != Shutdown;
        }
        if to == ClaimingId && (self.running() || self == Election) {
            return true; // the lease was lost: claim the id again
        }
        matches!(
            (self, to),
            (Init, ClaimingId)
                | (ClaimingId, Election)
                | (Election, WaitingAssignment)
                | (WaitingAssignment, Stable)
                | (WaitingAssignment, Rebalancing)
                | (Stable, Scaling)
                | (Stable, Emergency)
                | (Stable, Rebalancing)
                | (Scaling, Rebalancing)
                | (Scaling, Stable)
                | (Scaling, Emergency)
                | (Rebalancing, Stable)
                | (Rebalancing, Emergency)
                | (Rebalancing, Scaling)
                | (Emergency, Stable)
                | (Emergency, Rebalancing)
        )
    }

    /// The legal path from `self` to `to` (through Rebalancing when there is no direct edge).
    pub fn path_to(self, to: AgentState) -> Vec<AgentState> {
        if self == to {
            return vec![];
        }
        if self.can_go(to) {
            return vec![to];
        }
        if self.can_go(Rebalancing) && Rebalancing.can_go(to) {
            return vec![Rebalancing, to];
        }
        vec![]
    }
}

/// One state change, with why.
#[derive(Clone, Debug, Serialize)]
pub struct Transition {
    pub from: AgentState,
    pub to: AgentState,
    pub reason: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// The current state and how many times each was entered.
pub struct Machine {
    pub state: AgentState,
    pub entered: [u64; 9],
}

impl Default for Machine {
    fn default() -> Self {
        let mut entered = [0; 9];
        entered[0] = 1;
        Machine {
            state: Init,
            entered,
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Machine {
    /// Moves to `to`; Err if the table forbids it (a bug: the caller asked for a wrong edge).
    pub fn go(&mut self, to: AgentState, reason: &str) -> Result<Transition, String> {
        if !self.state.can_go(to) {
            return Err(format!(
                "agent cannot go from {} to {}",
                self.state.name(),
                to.name()
            ));
        }
        let t = Transition {
            from: self.state,
            to,
            reason: reason.to_string(),
            at_ms: now_ms(),
        };
        self.state = to;
        self.entered[AgentState::ALL.iter().position(|s| *s == to).unwrap_or(0)] += 1;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_paths_are_legal_and_others_are_not() {
        let path = [
            Init,
            ClaimingId,
            Election,
            WaitingAssignment,
            Stable,
            Scaling,
            Rebalancing,
            Stable,
            Emergency,
            Stable,
        ];
        let mut m = Machine::default();
        for s in &path[1..] {
            m.go(*s, "test").unwrap();
        }
        for s in AgentState::ALL {
            assert_eq!(s.can_go(Shutdown), s != Shutdown, "{s:?} -> shutdown");
        }
        assert!(!Init.can_go(Stable));
        assert!(!ClaimingId.can_go(Stable));
        assert!(!Election.can_go(Stable));
        assert!(!Shutdown.can_go(Init));
        assert!(!Stable.can_go(WaitingAssignment));
        assert!(
            Stable.can_go(ClaimingId),
            "a lost lease claims the id again"
        );
        assert!(m.go(Init, "x").is_err());
        assert_eq!(Scaling.path_to(Stable), vec![Stable]);
        assert_eq!(
            WaitingAssignment.path_to(Emergency),
            vec![Rebalancing, Emergency]
        );
        assert_eq!(m.entered[4], 3, "stable entered three times");
    }
}
