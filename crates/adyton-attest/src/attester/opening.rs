//! An attester opened on a thread of its own, so that a server's start does not wait for it.
//!
//! Opening an attester can take a while: the SIM attester hashes its own executable (about 60 ms
//! for a 40 MB `adyton-server`). A server that pulls protected models needs evidence only once the
//! key pair of the transfer is made, and can fetch the model's info and download its blob
//! meanwhile. [`OpeningAttester`] is an [`Attester`] at once: its TEE is known (detected now, for
//! `auto`), and its evidence waits for the opening to finish.

use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use super::{attester_for, detect, Attester, AttesterPaths, TeeChoice};
use crate::error::{AttestError, Result};
use crate::evidence::{Evidence, TeeKind, REPORT_DATA_LEN};

/// An attester being opened on a thread of its own. [`OpeningAttester::wait`] gives the opened
/// attester; [`Attester::evidence`] waits for it too. `Debug` shows the TEE and the state.
#[derive(Debug)]
pub struct OpeningAttester {
    tee: TeeKind,
    state: Mutex<State>,
}

#[derive(Debug)]
enum State {
    Opening(JoinHandle<Result<Box<dyn Attester>>>),
    Open(Arc<dyn Attester>),
    /// The opening failed: why, for every later caller (the first one got the error itself).
    Failed(String),
}

impl OpeningAttester {
    /// Starts opening the attester for `choice`. `auto` is resolved now (its detection only
    /// looks for the interfaces), so that a machine with no TEE is an error at once; opening the
    /// interface itself happens on a thread. Where no thread can be started, it is opened here.
    pub fn start(choice: TeeChoice, paths: &AttesterPaths) -> Result<Self> {
        let tee = match choice {
            TeeChoice::Auto => detect(paths).ok_or(AttestError::NoTeeDetected)?,
            TeeChoice::Kind(kind) => kind,
            // The agent's answer names the TEE, so it is opened here: one local request.
            TeeChoice::Coco => {
                let attester = attester_for(choice, paths)?;
                return Ok(Self {
                    tee: attester.tee(),
                    state: Mutex::new(State::Open(Arc::from(attester))),
                });
            }
        };
        let thread_paths = paths.clone();
        let state = match std::thread::Builder::new()
            .name("adyton-attester".into())
            .spawn(move || attester_for(TeeChoice::Kind(tee), &thread_paths))
        {
            Ok(thread) => State::Opening(thread),
            Err(_) => State::Open(Arc::from(attester_for(TeeChoice::Kind(tee), paths)?)),
        };
        Ok(Self {
            tee,
            state: Mutex::new(state),
        })
    }

    /// The opened attester, waiting for the opening to finish. If it failed, the first caller
    /// gets the error as it was, and every later one [`AttestError::TeeUnavailable`] with its
    /// text.
    pub fn wait(&self) -> Result<Arc<dyn Attester>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let unavailable = |reason: String| AttestError::TeeUnavailable {
            tee: self.tee,
            reason,
        };
        match &*state {
            State::Open(attester) => return Ok(Arc::clone(attester)),
            State::Failed(reason) => return Err(unavailable(reason.clone())),
            State::Opening(_) => {}
        }
        let State::Opening(thread) = std::mem::replace(&mut *state, State::Failed(String::new()))
        else {
            unreachable!("the state was matched as opening under the lock");
        };
        match thread.join() {
            Ok(Ok(attester)) => {
                let attester: Arc<dyn Attester> = Arc::from(attester);
                *state = State::Open(Arc::clone(&attester));
                Ok(attester)
            }
            Ok(Err(e)) => {
                *state = State::Failed(e.to_string());
                Err(e)
            }
            Err(_) => {
                let reason = "the attester's thread panicked while opening it".to_owned();
                *state = State::Failed(reason.clone());
                Err(unavailable(reason))
            }
        }
    }
}

impl Attester for OpeningAttester {
    fn tee(&self) -> TeeKind {
        self.tee
    }

    fn evidence(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Evidence> {
        self.wait()?.evidence(report_data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths_in(dir: &std::path::Path) -> AttesterPaths {
        AttesterPaths {
            gramine: dir.join("no-gramine"),
            tsm_report: dir.join("no-tsm"),
            sim_key: dir.join("sim.key"),
            sev_guest: dir.join("no-sev-guest"),
            tpm: dir.join("no-tpm"),
            nsm: dir.join("no-nsm"),
            coco: Default::default(),
        }
    }

    #[test]
    fn evidence_waits_for_the_opening_and_matches_the_attester_opened_directly() {
        let dir = tempfile::tempdir().unwrap();
        let paths = paths_in(dir.path());
        let opening = OpeningAttester::start(TeeChoice::Kind(TeeKind::Sim), &paths).unwrap();
        assert_eq!(opening.tee(), TeeKind::Sim);
        let report_data = [7u8; REPORT_DATA_LEN];
        let evidence = opening.evidence(&report_data).unwrap();
        assert_eq!(evidence.tee, TeeKind::Sim);
        let direct = attester_for(TeeChoice::Kind(TeeKind::Sim), &paths).unwrap();
        // SIM evidence is a deterministic signature over the measurement and the report data.
        assert_eq!(evidence, direct.evidence(&report_data).unwrap());
        assert_ne!(evidence, opening.evidence(&[8u8; REPORT_DATA_LEN]).unwrap());
        // The same attester every time, once open.
        assert!(Arc::ptr_eq(
            &opening.wait().unwrap(),
            &opening.wait().unwrap()
        ));
    }

    #[test]
    fn auto_with_no_tee_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let err = OpeningAttester::start(TeeChoice::Auto, &paths_in(dir.path())).unwrap_err();
        assert!(matches!(err, AttestError::NoTeeDetected), "{err}");
    }

    #[test]
    fn a_failed_opening_is_the_first_callers_error_then_unavailable_for_every_later_one() {
        let dir = tempfile::tempdir().unwrap();
        // configfs-tsm asked for where there is none: the opening, on its thread, fails.
        let opening =
            OpeningAttester::start(TeeChoice::Kind(TeeKind::Tdx), &paths_in(dir.path())).unwrap();
        assert_eq!(opening.tee(), TeeKind::Tdx);
        let first = opening.wait().unwrap_err();
        let later = opening.evidence(&[0u8; REPORT_DATA_LEN]).unwrap_err();
        match later {
            AttestError::TeeUnavailable { tee, reason } => {
                assert_eq!(tee, TeeKind::Tdx);
                assert_eq!(reason, first.to_string());
            }
            other => panic!("expected TeeUnavailable, got {other}"),
        }
    }
}
