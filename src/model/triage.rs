//! The intake's decision table: what happens to a spawn entry, as a pure
//! function of what is known about it so far.
//!
//! [`next`] looks at the [`Facts`] gathered and either names the one
//! [`Check`] it needs next (a Redis or Docker look-up the supervisor makes
//! and records) or gives the [`Decision`]. The order of the checks is part
//! of the guarantees (an answered request is never looked at again, a
//! cancel is taken only for a request that will not run otherwise, the
//! run mark is taken last), so it lives here, in one place, with unit
//! tests of plain values. How a decision settles the entry is a
//! [`Disposition`]; `supervisor::settle` is the only code that carries one
//! out.

use crate::model::outcome::{self, Interruption};
use crate::model::protocol::{ErrorInfo, RequestError, ResultRecord, Status};

/// How a spawn entry leaves the intake: the one place an entry is
/// acknowledged, answered, dead-lettered or left pending.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Acknowledge it: its work is recorded elsewhere (a labelled
    /// container, an earlier result, a run on this instance).
    Ack,
    /// Publish this result (with a `rejected` event when it is a
    /// rejection), then acknowledge.
    Answer(ResultRecord),
    /// Dead-letter it with this reason (which acknowledges it).
    DeadLetter(String),
    /// Dead-letter it, then answer its request (too many deliveries).
    GiveUp {
        /// The dead letter's reason.
        reason: String,
        /// The request's result.
        result: ResultRecord,
    },
    /// An entry the parser could not read but whose request id it found:
    /// the `rejected` result unless one was published, then the dead letter.
    RejectUnreadable {
        /// The dead letter's reason.
        reason: String,
        /// The `rejected` result.
        result: ResultRecord,
    },
    /// Leave it pending: a later read, sweep or reclaim handles it again.
    LeavePending(&'static str),
}

/// Which path an entry takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A one-shot (or pooled) request.
    OneShot,
    /// A task of a session, run by the session's owner in stream order.
    Session,
}

/// Whether another handling of the same request is under way in this
/// process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inflight {
    /// None: this handling is the request's.
    Free,
    /// The same entry (this instance reclaimed an entry it still handles).
    SameEntry,
    /// Another entry of the same request (it was published twice).
    OtherEntry,
}

/// Outcome of taking a request's run mark in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunClaim {
    /// Nobody ran it: the caller runs it now.
    Taken,
    /// The caller's own instance holds it already.
    Mine,
    /// Another live instance runs it.
    Elsewhere,
    /// A dead instance started it: the run was interrupted.
    Interrupted,
}

/// A look-up failed (Redis or Docker trouble): the entry stays pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// The request's container as a look-up found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenContainer {
    /// Whether it was ever started.
    pub started: bool,
    /// Whether it runs now.
    pub running: bool,
}

/// What is known about an entry so far; `None` is "not looked at yet".
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    /// The request id.
    pub request_id: String,
    /// Its session, if any.
    pub session_id: Option<String>,
    /// The path it takes.
    pub route: Route,
    /// How often the entry was delivered (1 on its first read).
    pub deliveries: u64,
    /// Deliveries after which it is given up.
    pub max_deliveries: u64,
    /// Other handlings of the request in this process.
    pub inflight: Inflight,
    /// Whether the request is a dry run.
    pub dry_run: bool,
    /// Whether a published result exists.
    pub answered: Option<Result<bool, Unavailable>>,
    /// Whether a worker of the request runs on this instance.
    pub running_here: Option<bool>,
    /// Whether a cancel arrived before the request was read (taken).
    pub early_cancel: Option<bool>,
    /// The request's labelled container (looked for on redeliveries).
    pub container: Option<Result<Option<SeenContainer>, Unavailable>>,
    /// Whether this instance may take the container over (claims it).
    pub adoptable: Option<bool>,
    /// Whether a container that never started was removed.
    pub removed_unstarted: Option<Result<(), Unavailable>>,
    /// The request resolved against the catalog, or why it was refused.
    pub resolved: Option<Result<Resolved, (Status, ErrorInfo)>>,
    /// The run mark (pooled requests and session tasks).
    pub run_claim: Option<Result<RunClaim, Unavailable>>,
}

/// What the decision needs of a resolved request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// Whether its preset keeps a warm pool (its run may leave no
    /// labelled container behind, so it takes a run mark).
    pub pooled: bool,
}

impl Facts {
    /// Facts of an entry just read: nothing looked up yet.
    pub fn new(
        request_id: &str,
        session_id: Option<&str>,
        route: Route,
        deliveries: u64,
        max_deliveries: u64,
        inflight: Inflight,
        dry_run: bool,
    ) -> Facts {
        Facts {
            request_id: request_id.to_string(),
            session_id: session_id.map(str::to_string),
            route,
            deliveries,
            max_deliveries,
            inflight,
            dry_run,
            answered: None,
            running_here: None,
            early_cancel: None,
            container: None,
            adoptable: None,
            removed_unstarted: None,
            resolved: None,
            run_claim: None,
        }
    }
}

/// A look-up the decision needs before it can be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Is there a published result? (`Bus::has_result`)
    Answered,
    /// Does a worker of the request run here? (the registry)
    RunningHere,
    /// Did a cancel arrive early? (the registry; taking it)
    EarlyCancel,
    /// The request's labelled container (the engine).
    Container,
    /// May this instance take the container over? (claims it)
    Adoptable,
    /// Remove the container that never started (the engine).
    RemoveUnstarted,
    /// Resolve the request against the catalog.
    Resolve,
    /// Take the run mark (`Bus::claim_run`).
    RunMark,
}

/// What the supervisor does with the entry.
// Made once per entry and moved once: the size of a result is no cost.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Settle the entry now; no worker runs for it.
    Settle(Disposition),
    /// The labelled container is the record of the work: acknowledge, and
    /// supervise it if this instance may (its owner is gone or is this one).
    FollowContainer,
    /// Answer with the resolved config and files.
    DryRun,
    /// Run it in a ready pool container if one fits, else start it cold
    /// (its run mark is taken).
    Pooled,
    /// Start a new container.
    Cold,
    /// Run it as the session's next task (its run mark is taken).
    SessionTask,
    /// A session task whose instance died mid-run: stop what is left of it
    /// in the session container, then answer `interrupted`.
    InterruptedTask,
}

/// One step of triage: a look-up still needed, or the decision.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Make this look-up, record it in the facts, ask again.
    Check(Check),
    /// Act on this.
    Decide(Decision),
}

use Step::{Check as Need, Decide};

fn settle(d: Disposition) -> Step {
    Decide(Decision::Settle(d))
}

fn pending(why: &'static str) -> Step {
    settle(Disposition::LeavePending(why))
}

/// The next step for an entry with these facts.
pub fn next(f: &Facts) -> Step {
    match f.route {
        Route::OneShot => next_oneshot(f),
        Route::Session => next_session(f),
    }
}

fn next_oneshot(f: &Facts) -> Step {
    match f.inflight {
        Inflight::Free => {}
        // The first entry's handling covers this one.
        Inflight::OtherEntry => return settle(Disposition::Ack),
        // That handling acknowledges it.
        Inflight::SameEntry => return pending("being handled here already"),
    }
    match f.answered {
        None => return Need(Check::Answered),
        Some(Err(Unavailable)) => return pending("cannot check for an earlier result"),
        Some(Ok(true)) => return settle(Disposition::Ack),
        Some(Ok(false)) => {}
    }
    match f.running_here {
        None => return Need(Check::RunningHere),
        Some(true) => return settle(Disposition::Ack),
        Some(false) => {}
    }
    match f.early_cancel {
        None => return Need(Check::EarlyCancel),
        Some(true) => {
            return settle(Disposition::Answer(outcome::cancelled_before_start(
                &f.request_id,
                f.session_id.as_deref(),
            )))
        }
        Some(false) => {}
    }
    if let Some(step) = give_up(f) {
        return step;
    }
    // A first delivery skips the container look-up (one engine call less
    // per request): the create conflict covers a name in use.
    if f.deliveries > 1 {
        match f.container {
            None => return Need(Check::Container),
            Some(Err(Unavailable)) => return pending("docker unavailable"),
            Some(Ok(None)) => {}
            Some(Ok(Some(c))) if !c.started && !c.running => {
                // Created but never started (its daemon died in between):
                // nothing ran, and the entry is at hand: start afresh.
                match (f.adoptable, f.removed_unstarted) {
                    (None, _) => return Need(Check::Adoptable),
                    (Some(false), _) => return Decide(Decision::FollowContainer),
                    (Some(true), None) => return Need(Check::RemoveUnstarted),
                    (Some(true), Some(Err(Unavailable))) => return pending("docker unavailable"),
                    (Some(true), Some(Ok(()))) => {}
                }
            }
            Some(Ok(Some(_))) => return Decide(Decision::FollowContainer),
        }
    }
    let resolved = match &f.resolved {
        None => return Need(Check::Resolve),
        Some(Err((status, info))) => return settle(Disposition::Answer(refusal(f, *status, info))),
        Some(Ok(r)) => *r,
    };
    if f.dry_run {
        return Decide(Decision::DryRun);
    }
    if !resolved.pooled {
        return Decide(Decision::Cold);
    }
    // A pooled preset's request may run in a pool container, which carries
    // no request label: the run mark is what tells a redelivery that it
    // ran, whether a pool container is ready now or not.
    match f.run_claim {
        None => Need(Check::RunMark),
        Some(Err(Unavailable)) => pending("cannot take the run mark"),
        Some(Ok(RunClaim::Taken)) => Decide(Decision::Pooled),
        // Its run died with its instance: never run it twice.
        Some(Ok(RunClaim::Interrupted)) => settle(Disposition::Answer(outcome::interrupted(
            &f.request_id,
            None,
            Interruption::Request,
        ))),
        // Marked by this instance id in an earlier life (a restart under
        // the same id): that run died with it.
        Some(Ok(RunClaim::Mine)) if f.running_here == Some(false) => settle(Disposition::Answer(
            outcome::interrupted(&f.request_id, None, Interruption::Request),
        )),
        // Running here or on a live instance: that run acknowledges it.
        Some(Ok(RunClaim::Mine | RunClaim::Elsewhere)) => pending("running elsewhere"),
    }
}

fn next_session(f: &Facts) -> Step {
    match f.answered {
        None => return Need(Check::Answered),
        Some(Err(Unavailable)) => return pending("cannot check for an earlier result"),
        Some(Ok(true)) => return settle(Disposition::Ack),
        Some(Ok(false)) => {}
    }
    match f.run_claim {
        None => return Need(Check::RunMark),
        Some(Err(Unavailable)) => return pending("cannot take the run mark"),
        Some(Ok(RunClaim::Taken)) => {}
        // Marked by this instance id, but not running here: an earlier life
        // of this instance (a restart under the same id) was cut off
        // mid-task, as with a dead instance's mark.
        Some(Ok(RunClaim::Mine)) => match f.running_here {
            None => return Need(Check::RunningHere),
            Some(false) => return Decide(Decision::InterruptedTask),
            Some(true) => return pending("running here"),
        },
        // Running on a live instance: that run acknowledges it.
        Some(Ok(RunClaim::Elsewhere)) => return pending("running elsewhere"),
        // Its instance died mid-task: never run it a second time.
        Some(Ok(RunClaim::Interrupted)) => return Decide(Decision::InterruptedTask),
    }
    if let Some(step) = give_up(f) {
        return step;
    }
    match &f.resolved {
        None => return Need(Check::Resolve),
        Some(Err((status, info))) => return settle(Disposition::Answer(refusal(f, *status, info))),
        Some(Ok(_)) => {}
    }
    if f.dry_run {
        return Decide(Decision::DryRun);
    }
    Decide(Decision::SessionTask)
}

/// Gives up an entry delivered more than `max_deliveries` times.
fn give_up(f: &Facts) -> Option<Step> {
    (f.deliveries > f.max_deliveries).then(|| {
        settle(Disposition::GiveUp {
            reason: outcome::too_many_deliveries_reason(f.deliveries),
            result: outcome::too_many_deliveries(&f.request_id, f.deliveries),
        })
    })
}

fn refusal(f: &Facts, status: Status, info: &ErrorInfo) -> ResultRecord {
    let mut r = ResultRecord::bare(&f.request_id, status, Some(info.clone()));
    r.session_id = f.session_id.clone();
    r
}

/// How an entry the parser refused leaves: a request id it could read
/// hears back (`rejected`), an entry without one is dead-lettered.
pub fn unparsed(e: &RequestError) -> Disposition {
    match &e.request_id {
        Some(rid) => {
            let info = ErrorInfo {
                code: e.code.to_string(),
                field: Some(e.field.clone()),
                message: e.to_string(),
            };
            let result = ResultRecord::bare(rid, Status::Rejected, Some(info));
            if e.unreadable {
                Disposition::RejectUnreadable {
                    reason: e.to_string(),
                    result,
                }
            } else {
                Disposition::Answer(result)
            }
        }
        None => Disposition::DeadLetter(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the supervisor's look-ups answer in a test.
    #[derive(Clone)]
    struct World {
        answered: Result<bool, Unavailable>,
        running_here: bool,
        early_cancel: bool,
        container: Result<Option<SeenContainer>, Unavailable>,
        adoptable: bool,
        removed: Result<(), Unavailable>,
        resolved: Result<Resolved, (Status, ErrorInfo)>,
        run_claim: Result<RunClaim, Unavailable>,
    }

    impl Default for World {
        fn default() -> World {
            World {
                answered: Ok(false),
                running_here: false,
                early_cancel: false,
                container: Ok(None),
                adoptable: true,
                removed: Ok(()),
                resolved: Ok(Resolved { pooled: false }),
                run_claim: Ok(RunClaim::Taken),
            }
        }
    }

    /// Runs triage to its decision the way the supervisor does; returns
    /// the checks made, in order, and the decision.
    fn triage(mut f: Facts, w: &World) -> (Vec<Check>, Decision) {
        let mut checks = Vec::new();
        for _ in 0..20 {
            match next(&f) {
                Step::Decide(d) => return (checks, d),
                Step::Check(c) => {
                    assert!(!checks.contains(&c), "{c:?} asked twice: {checks:?}");
                    checks.push(c);
                    match c {
                        Check::Answered => f.answered = Some(w.answered),
                        Check::RunningHere => f.running_here = Some(w.running_here),
                        Check::EarlyCancel => f.early_cancel = Some(w.early_cancel),
                        Check::Container => f.container = Some(w.container),
                        Check::Adoptable => f.adoptable = Some(w.adoptable),
                        Check::RemoveUnstarted => f.removed_unstarted = Some(w.removed),
                        Check::Resolve => f.resolved = Some(w.resolved.clone()),
                        Check::RunMark => f.run_claim = Some(w.run_claim),
                    }
                }
            }
        }
        panic!("triage did not decide: {checks:?}");
    }

    fn oneshot(deliveries: u64) -> Facts {
        Facts::new(
            "r1",
            None,
            Route::OneShot,
            deliveries,
            5,
            Inflight::Free,
            false,
        )
    }

    fn session(deliveries: u64) -> Facts {
        Facts::new(
            "r1",
            Some("s1"),
            Route::Session,
            deliveries,
            5,
            Inflight::Free,
            false,
        )
    }

    fn error_code(d: &Decision) -> Option<String> {
        match d {
            Decision::Settle(Disposition::Answer(r)) => r.error.as_ref().map(|e| e.code.clone()),
            _ => None,
        }
    }

    #[test]
    fn a_first_delivery_starts_cold_without_looking_for_a_container() {
        let (checks, d) = triage(oneshot(1), &World::default());
        assert_eq!(d, Decision::Cold);
        assert_eq!(
            checks,
            [
                Check::Answered,
                Check::RunningHere,
                Check::EarlyCancel,
                Check::Resolve
            ]
        );
    }

    #[test]
    fn a_redelivery_with_a_started_container_follows_it() {
        let seen = SeenContainer {
            started: true,
            running: true,
        };
        let w = World {
            container: Ok(Some(seen)),
            ..World::default()
        };
        let (checks, d) = triage(oneshot(2), &w);
        assert_eq!(d, Decision::FollowContainer);
        assert_eq!(checks.last(), Some(&Check::Container));
        // An ended one too: its supervisor (or adopter) answers for it.
        let ended = World {
            container: Ok(Some(SeenContainer {
                started: true,
                running: false,
            })),
            ..World::default()
        };
        assert_eq!(triage(oneshot(2), &ended).1, Decision::FollowContainer);
    }

    #[test]
    fn a_redelivery_with_a_container_that_never_started_replaces_it() {
        let unstarted = Ok(Some(SeenContainer {
            started: false,
            running: false,
        }));
        let w = World {
            container: unstarted,
            ..World::default()
        };
        let (checks, d) = triage(oneshot(2), &w);
        assert_eq!(d, Decision::Cold);
        assert!(checks.ends_with(&[
            Check::Container,
            Check::Adoptable,
            Check::RemoveUnstarted,
            Check::Resolve
        ]));
        // Owned by a live instance: left to it.
        let owned = World {
            container: unstarted,
            adoptable: false,
            ..World::default()
        };
        assert_eq!(triage(oneshot(2), &owned).1, Decision::FollowContainer);
        // Docker trouble while removing it: try again later.
        let stuck = World {
            container: unstarted,
            removed: Err(Unavailable),
            ..World::default()
        };
        assert!(matches!(
            triage(oneshot(2), &stuck).1,
            Decision::Settle(Disposition::LeavePending(_))
        ));
    }

    #[test]
    fn a_redelivery_without_a_container_starts_cold() {
        let (checks, d) = triage(oneshot(3), &World::default());
        assert_eq!(d, Decision::Cold);
        assert!(checks.contains(&Check::Container));
        // Docker trouble: left pending, never started blind.
        let w = World {
            container: Err(Unavailable),
            ..World::default()
        };
        assert!(matches!(
            triage(oneshot(3), &w).1,
            Decision::Settle(Disposition::LeavePending(_))
        ));
    }

    #[test]
    fn an_in_flight_duplicate_is_acknowledged_or_left_to_its_first_handling() {
        let mut f = oneshot(1);
        f.inflight = Inflight::OtherEntry;
        assert_eq!(
            triage(f, &World::default()),
            (vec![], Decision::Settle(Disposition::Ack))
        );
        let mut f = oneshot(2);
        f.inflight = Inflight::SameEntry;
        let (checks, d) = triage(f, &World::default());
        assert!(checks.is_empty());
        assert!(matches!(d, Decision::Settle(Disposition::LeavePending(_))));
    }

    #[test]
    fn an_answered_or_running_request_is_only_acknowledged() {
        let w = World {
            answered: Ok(true),
            ..World::default()
        };
        assert_eq!(
            triage(oneshot(1), &w),
            (vec![Check::Answered], Decision::Settle(Disposition::Ack))
        );
        let w = World {
            running_here: true,
            early_cancel: true,
            ..World::default()
        };
        // The early cancel is not taken for a request that runs already.
        let (checks, d) = triage(oneshot(2), &w);
        assert_eq!(d, Decision::Settle(Disposition::Ack));
        assert!(!checks.contains(&Check::EarlyCancel));
        let w = World {
            answered: Err(Unavailable),
            ..World::default()
        };
        assert!(matches!(
            triage(oneshot(1), &w).1,
            Decision::Settle(Disposition::LeavePending(_))
        ));
    }

    #[test]
    fn a_cancel_before_the_start_answers_cancelled() {
        let w = World {
            early_cancel: true,
            ..World::default()
        };
        let (checks, d) = triage(oneshot(1), &w);
        assert_eq!(error_code(&d).as_deref(), Some("cancelled"));
        assert!(!checks.contains(&Check::Resolve));
    }

    #[test]
    fn an_entry_delivered_too_often_is_given_up_with_a_result() {
        for f in [oneshot(6), session(6)] {
            let (checks, d) = triage(f, &World::default());
            match d {
                Decision::Settle(Disposition::GiveUp { reason, result }) => {
                    assert_eq!(reason, "failed 5 deliveries");
                    assert_eq!(result.error.unwrap().code, "too_many_deliveries");
                }
                other => panic!("{other:?}"),
            }
            assert!(!checks.contains(&Check::Resolve));
        }
        // At the limit it still runs.
        assert_eq!(triage(oneshot(5), &World::default()).1, Decision::Cold);
    }

    #[test]
    fn a_refused_request_is_answered_with_its_session() {
        let info =
            crate::model::outcome::ErrorCode::UnknownPreset.info(Some("worker_config_id"), "no");
        let w = World {
            resolved: Err((Status::Rejected, info)),
            ..World::default()
        };
        for f in [oneshot(1), session(1)] {
            let want_sid = f.session_id.clone();
            match triage(f, &w).1 {
                Decision::Settle(Disposition::Answer(r)) => {
                    assert_eq!(r.status, Status::Rejected);
                    assert_eq!(r.session_id, want_sid);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_dry_run_is_answered_after_resolution() {
        let mut f = oneshot(1);
        f.dry_run = true;
        assert_eq!(triage(f, &World::default()).1, Decision::DryRun);
    }

    #[test]
    fn a_pooled_entry_takes_the_run_mark_first() {
        let pooled = World {
            resolved: Ok(Resolved { pooled: true }),
            ..World::default()
        };
        let (checks, d) = triage(oneshot(1), &pooled);
        assert_eq!(d, Decision::Pooled);
        assert_eq!(checks.last(), Some(&Check::RunMark));
        // Running on a live instance: that run acknowledges it.
        let elsewhere = World {
            run_claim: Ok(RunClaim::Elsewhere),
            ..pooled.clone()
        };
        assert!(matches!(
            triage(oneshot(2), &elsewhere).1,
            Decision::Settle(Disposition::LeavePending(_))
        ));
    }

    #[test]
    fn a_dead_instances_pooled_entry_is_answered_interrupted_never_run_again() {
        let pooled = World {
            resolved: Ok(Resolved { pooled: true }),
            ..World::default()
        };
        let dead = World {
            run_claim: Ok(RunClaim::Interrupted),
            ..pooled.clone()
        };
        assert_eq!(
            error_code(&triage(oneshot(2), &dead).1).as_deref(),
            Some("interrupted")
        );
        // This instance's own mark from an earlier life (same id, restarted).
        let mine = World {
            run_claim: Ok(RunClaim::Mine),
            ..pooled
        };
        assert_eq!(
            error_code(&triage(oneshot(2), &mine).1).as_deref(),
            Some("interrupted")
        );
    }

    #[test]
    fn a_session_entry_runs_as_a_task_after_its_run_mark() {
        let (checks, d) = triage(session(1), &World::default());
        assert_eq!(d, Decision::SessionTask);
        assert_eq!(checks, [Check::Answered, Check::RunMark, Check::Resolve]);
        let w = World {
            run_claim: Ok(RunClaim::Interrupted),
            ..World::default()
        };
        assert_eq!(triage(session(2), &w).1, Decision::InterruptedTask);
        // This instance's own mark from an earlier life: cut off as well.
        let w = World {
            run_claim: Ok(RunClaim::Mine),
            ..World::default()
        };
        assert_eq!(triage(session(2), &w).1, Decision::InterruptedTask);
        // Running here now: that run acknowledges it.
        let w = World {
            run_claim: Ok(RunClaim::Mine),
            running_here: true,
            ..World::default()
        };
        assert!(matches!(
            triage(session(2), &w).1,
            Decision::Settle(Disposition::LeavePending(_))
        ));
        let w = World {
            run_claim: Ok(RunClaim::Elsewhere),
            ..World::default()
        };
        assert!(matches!(
            triage(session(2), &w).1,
            Decision::Settle(Disposition::LeavePending(_))
        ));
        let w = World {
            answered: Ok(true),
            ..World::default()
        };
        assert_eq!(triage(session(2), &w).1, Decision::Settle(Disposition::Ack));
    }

    #[test]
    fn an_unparsed_entry_with_an_id_hears_back_and_one_without_is_dead_lettered() {
        let error = |rid: Option<&str>, code, field: &str| RequestError {
            request_id: rid.map(str::to_string),
            code,
            field: field.to_string(),
            message: "is required".into(),
            unreadable: false,
        };
        let e = error(Some("r9"), "missing_field", "task.prompt");
        match unparsed(&e) {
            Disposition::Answer(r) => {
                assert_eq!(r.status, Status::Rejected);
                assert_eq!(r.error.unwrap().field.as_deref(), Some("task.prompt"));
            }
            other => panic!("{other:?}"),
        }
        let mut unreadable = error(Some("r9"), "invalid_json", "data");
        unreadable.unreadable = true;
        assert!(matches!(
            unparsed(&unreadable),
            Disposition::RejectUnreadable { .. }
        ));
        let anonymous = error(None, "invalid_json", "data");
        assert!(matches!(unparsed(&anonymous), Disposition::DeadLetter(_)));
    }
}
