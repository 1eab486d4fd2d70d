//! Runs a [`Manager`] against the outside world: reads the hook's snapshot through
//! [`Effects`], then loops `poll_command → effect → reply`. [`Effects`] is the Rust mirror
//! of the WIT imports; the component implements it with them, tests with memory.

use crate::error::Error;
use crate::manager::{
    CallbackOutcome, Command, Config, Event, HookContext, LogLevel, Manager, PeerData, State,
    SyncBackendError, sync_acquire_error, sync_release_error,
};
use crate::timestamp::Timestamp;
use crate::wire::Bag;

/// Whose bag to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BagOwner<'a> {
    /// The application bag.
    App,
    /// A unit's bag.
    Unit(&'a str),
}

/// The outside world, as the WIT imports offer it.
pub trait Effects {
    /// This unit's name.
    fn unit_name(&mut self) -> String;
    /// Leadership.
    fn is_leader(&mut self) -> Result<bool, Error>;
    /// Relation ids on an endpoint.
    fn relation_ids(&mut self, endpoint: &str) -> Result<Vec<u32>, Error>;
    /// Remote units on a relation.
    fn relation_units(&mut self, relation_id: u32) -> Result<Vec<String>, Error>;
    /// A databag.
    fn relation_get(&mut self, relation_id: u32, owner: BagOwner<'_>) -> Result<Bag, Error>;
    /// Write keys (empty value deletes).
    fn relation_set(
        &mut self,
        relation_id: u32,
        app: bool,
        pairs: &[(String, String)],
    ) -> Result<(), Error>;
    /// Log a line.
    fn log(&mut self, level: LogLevel, message: &str);
    /// Run a hook on this unit after the current one.
    fn dispatch(&mut self, event: &str) -> Result<(), Error>;
    /// Wall clock.
    fn now(&mut self) -> Timestamp;
    /// Run a charm callback.
    fn run_callback(&mut self, id: &str, kwargs_json: &str) -> CallbackOutcome;
    /// Acquire a charm sync-lock backend.
    fn sync_backend_acquire(
        &mut self,
        id: &str,
        timeout_seconds: Option<u32>,
    ) -> Result<(), SyncBackendError>;
    /// Release a charm sync-lock backend.
    fn sync_backend_release(&mut self, id: &str) -> Result<(), SyncBackendError>;
}

/// Read this hook's snapshot and build the manager.
pub fn load(config: Config, fx: &mut impl Effects) -> Result<Manager, Error> {
    config.validate()?;
    let unit = fx.unit_name();
    let now = fx.now();
    let leader = fx.is_leader()?;
    let peer = match fx.relation_ids(&config.peer_relation_name)?.first() {
        None => None,
        Some(&relation_id) => {
            let remote_units = fx.relation_units(relation_id)?;
            let app = fx.relation_get(relation_id, BagOwner::App)?;
            let local = fx.relation_get(relation_id, BagOwner::Unit(&unit))?;
            let mut remote_bags = std::collections::BTreeMap::new();
            if Manager::reads_all_units(leader) {
                for remote in &remote_units {
                    remote_bags.insert(
                        remote.clone(),
                        fx.relation_get(relation_id, BagOwner::Unit(remote))?,
                    );
                }
            }
            Some(PeerData {
                relation_id,
                app,
                local,
                remote_units,
                remote_bags,
            })
        }
    };
    Manager::new(
        config,
        HookContext {
            now,
            unit,
            leader,
            peer,
        },
    )
}

/// Carry out every pending command. A failed databag write fails the hook (Juju then
/// discards all of its writes and retries it); a failed wake-up is logged, never fatal.
pub fn drive(manager: &mut Manager, fx: &mut impl Effects) -> Result<(), Error> {
    while let Some(command) = manager.poll_command() {
        match command {
            Command::SetBag {
                relation_id,
                app,
                pairs,
            } => fx.relation_set(relation_id, app, &pairs)?,
            Command::RunCallback { id, kwargs_json } => {
                let outcome = fx.run_callback(&id, &kwargs_json);
                let now = fx.now();
                manager.handle_callback_result(outcome, now);
            }
            Command::Dispatch { event } => {
                if let Err(e) = fx.dispatch(&event) {
                    fx.log(
                        LogLevel::Warning,
                        &format!(
                            "Could not dispatch {event}; the next hook will pick the turn up: {e}"
                        ),
                    );
                }
            }
            Command::Log { level, message } => fx.log(level, &message),
        }
    }
    Ok(())
}

/// `request_async_lock` end to end.
pub fn request_async_lock(
    manager: &mut Manager,
    fx: &mut impl Effects,
    callback_id: &str,
    kwargs_json: &str,
    max_retry: Option<i64>,
) -> Result<(), Error> {
    let result = manager.request_async_lock(callback_id, kwargs_json, max_retry);
    drive(manager, fx)?;
    result
}

/// One hook event end to end.
pub fn handle_event(
    manager: &mut Manager,
    fx: &mut impl Effects,
    event: Event,
) -> Result<(), Error> {
    let result = manager.handle_event(event);
    drive(manager, fx)?;
    result
}

/// `state`.
pub fn state(manager: &Manager) -> Result<State, Error> {
    manager.state()
}

/// `is_waiting*`, reading the asked unit's bag if this hook has not.
pub fn is_waiting(
    manager: &mut Manager,
    fx: &mut impl Effects,
    unit: Option<&str>,
    callback_id: Option<&str>,
) -> Result<bool, Error> {
    if let (Some(name), Some(relation_id)) = (unit, manager.relation_id())
        && manager.needs_remote_bag(name)
    {
        let bag = fx.relation_get(relation_id, BagOwner::Unit(name))?;
        manager.add_remote_bag(name, &bag);
    }
    manager.is_waiting(unit, callback_id)
}

/// Acquire the synchronous lock through the charm's backend (peer mode).
pub fn acquire_sync_lock(
    manager: &Manager,
    fx: &mut impl Effects,
    backend_id: &str,
    timeout_seconds: Option<u32>,
) -> Result<(), Error> {
    manager.check_sync_backend(backend_id)?;
    fx.sync_backend_acquire(backend_id, timeout_seconds)
        .map_err(|e| sync_acquire_error(backend_id, e))
}

/// Release the synchronous lock.
pub fn release_sync_lock(
    manager: &Manager,
    fx: &mut impl Effects,
    backend_id: &str,
) -> Result<(), Error> {
    manager.check_sync_backend(backend_id)?;
    fx.sync_backend_release(backend_id)
        .map_err(|e| sync_release_error(backend_id, e))
}
