//! `given(events).when(decision).then(events)` for pure deciders.

use std::fmt::Debug;

use annals::Domain;

/// The state after some events, ready for a decision.
#[derive(Debug)]
pub struct Given<D: Domain> {
    state: D::State,
}

/// Starts a scenario: the state after `events`.
pub fn given<D: Domain>(events: impl IntoIterator<Item = D::Event>) -> Given<D> {
    let events: Vec<D::Event> = events.into_iter().collect();
    Given {
        state: D::fold(D::initial(), &events),
    }
}

/// What a decision returns: events, or a domain error.
pub trait Outcome<E> {
    /// The domain error (`Infallible` for decisions that cannot fail).
    type Err;
    /// As a `Result`.
    fn into_result(self) -> Result<Vec<E>, Self::Err>;
}

impl<E> Outcome<E> for Vec<E> {
    type Err = std::convert::Infallible;
    fn into_result(self) -> Result<Vec<E>, Self::Err> {
        Ok(self)
    }
}

impl<E, X> Outcome<E> for Result<Vec<E>, X> {
    type Err = X;
    fn into_result(self) -> Result<Vec<E>, X> {
        self
    }
}

impl<D: Domain> Given<D> {
    /// The state the events fold to.
    pub fn state(&self) -> &D::State {
        &self.state
    }

    /// Runs `decide` on that state.
    pub fn when<O: Outcome<D::Event>>(
        self,
        decide: impl FnOnce(&D::State) -> O,
    ) -> When<D, O::Err> {
        let outcome = decide(&self.state).into_result();
        When {
            state: self.state,
            outcome,
        }
    }
}

/// The result of a decision, ready for assertions.
#[derive(Debug)]
pub struct When<D: Domain, X> {
    state: D::State,
    outcome: Result<Vec<D::Event>, X>,
}

impl<D: Domain, X: Debug> When<D, X>
where
    D::Event: PartialEq + Debug,
{
    /// Asserts the decision produced exactly `expected`; returns the state after them.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = D::Event>) -> D::State {
        let expected: Vec<D::Event> = expected.into_iter().collect();
        match self.outcome {
            Ok(events) => {
                assert_eq!(events, expected, "the decision produced other events");
                D::fold(self.state, &events)
            }
            Err(e) => panic!("the decision failed with {e:?}, expected events {expected:?}"),
        }
    }

    /// Asserts the decision failed with `expected`.
    #[track_caller]
    pub fn then_err(self, expected: X)
    where
        X: PartialEq,
    {
        match self.outcome {
            Ok(events) => {
                panic!("the decision produced {events:?}, expected the error {expected:?}")
            }
            Err(e) => assert_eq!(e, expected, "the decision failed with another error"),
        }
    }
}
