//! The RPC actions: validation, the store transaction, and the answer's fields. The REST style
//! translates its requests into the same actions.
//!
//! Every mutating action runs under one lock, so a check (priority unique, quota, source not
//! yet associated) and the write it guards are atomic. Error codes are Alibaba's; the
//! Volcengine envelope maps the ones it spells differently (`dialect_error`).

mod checks;
mod filters;
mod sessions;
mod targets;

use std::str::FromStr;

use serde_json::{Value, json};

use super::{ApiError, rpc::Params};
use crate::{service::Service, store::Batch};
pub(in crate::api) use checks::{check_description, check_name, merge, page, tags};
pub use sessions::target_type;

/// What a successful action answers, and the session change it started (for ClientToken
/// "in progress" and for the reconciler).
pub struct Outcome {
    pub body: Value,
    pub session: Option<(String, u64)>,
}

impl Outcome {
    fn empty() -> Self {
        Outcome {
            body: json!({}),
            session: None,
        }
    }
    fn body(body: Value) -> Self {
        Outcome {
            body,
            session: None,
        }
    }
    /// An answer for a change the reconciler has yet to apply: a ClientToken replay stays "in
    /// progress" until object `id` settles at `generation`.
    pub fn tracking(body: Value, id: &str, generation: u64) -> Self {
        Outcome {
            body,
            session: Some((id.to_owned(), generation)),
        }
    }
}

/// Whether an action changes the store (under the write lock, with ClientToken and DryRun)
/// or only reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Mutating,
    Reading,
}

/// Declares `Action` with each variant's `Action=` name (its own identifier) and `Access`,
/// so a name is written once.
macro_rules! actions {
    ($($access:ident $name:ident,)*) => {
        /// An RPC action, named as in `Action=`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Action {
            $($name,)*
        }

        impl Action {
            pub const ALL: &'static [Action] = &[$(Action::$name,)*];

            /// The `Action=` name.
            pub fn name(self) -> &'static str {
                match self {
                    $(Action::$name => stringify!($name),)*
                }
            }

            pub fn access(self) -> Access {
                match self {
                    $(Action::$name => Access::$access,)*
                }
            }
        }
    };
}

actions! {
    Mutating CreateTrafficMirrorFilter,
    Mutating DeleteTrafficMirrorFilter,
    Mutating UpdateTrafficMirrorFilterAttribute,
    Mutating CreateTrafficMirrorFilterRules,
    Mutating DeleteTrafficMirrorFilterRules,
    Mutating UpdateTrafficMirrorFilterRuleAttribute,
    Mutating CreateTrafficMirrorTarget,
    Mutating DeleteTrafficMirrorTarget,
    Mutating UpdateTrafficMirrorTargetAttribute,
    Mutating CreateTrafficMirrorSession,
    Mutating UpdateTrafficMirrorSessionAttribute,
    Mutating DeleteTrafficMirrorSession,
    Mutating AddSourcesToTrafficMirrorSession,
    Mutating RemoveSourcesFromTrafficMirrorSession,
    Reading ListTrafficMirrorFilters,
    Reading ListTrafficMirrorTargets,
    Reading ListTrafficMirrorSessions,
    // Alibaba's account-level switches: on a node the features are always on.
    Reading GetTrafficMirrorServiceStatus,
    Reading OpenTrafficMirrorService,
    Reading GetFlowLogServiceStatus,
    Reading OpenFlowLogService,
    // Flow logs (`flowlogs`).
    Mutating CreateFlowLog,
    Mutating DeleteFlowLog,
    Mutating ModifyFlowLogAttribute,
    Mutating ActiveFlowLog,
    Mutating DeactiveFlowLog,
    Reading DescribeFlowLogs,
    // Receivers (`receivers`).
    Mutating CreateTrafficMirrorReceiver,
    Mutating DeleteTrafficMirrorReceiver,
    Reading ListTrafficMirrorReceivers,
}

impl Action {
    /// The action named `name`, if there is one (names are case-sensitive, as in `Action=`).
    pub fn parse(name: &str) -> Option<Action> {
        Action::ALL.iter().copied().find(|a| a.name() == name)
    }
}

impl FromStr for Action {
    type Err = ApiError;

    fn from_str(name: &str) -> Result<Action, ApiError> {
        Action::parse(name).ok_or_else(|| unknown_action(name))
    }
}

pub fn is_known(action: &str) -> bool {
    Action::parse(action).is_some()
}

pub fn is_mutating(action: &str) -> bool {
    Action::parse(action).is_some_and(|a| a.access() == Access::Mutating)
}

pub fn is_reading(action: &str) -> bool {
    Action::parse(action).is_some_and(|a| a.access() == Access::Reading)
}

/// Runs a mutating action under the service's write lock. With `dry_run`, everything is
/// checked and nothing is written.
pub async fn mutate(
    svc: &Service,
    action: &str,
    p: &Params,
    dry_run: bool,
) -> Result<(Outcome, Batch), ApiError> {
    let snap = svc.snapshot()?;
    checks::check_not_kubernetes(&snap, p)?;
    let mut batch = Batch::default();
    let Some(action) = Action::parse(action).filter(|a| a.access() == Access::Mutating) else {
        return Err(unknown_action(action));
    };
    let out = match action {
        Action::CreateTrafficMirrorFilter => filters::create_filter(svc, &snap, p, &mut batch)?,
        Action::DeleteTrafficMirrorFilter => filters::delete_filter(&snap, p, &mut batch)?,
        Action::UpdateTrafficMirrorFilterAttribute => filters::update_filter(&snap, p, &mut batch)?,
        Action::CreateTrafficMirrorFilterRules => filters::create_rules(svc, &snap, p, &mut batch)?,
        Action::DeleteTrafficMirrorFilterRules => filters::delete_rules(&snap, p, &mut batch)?,
        Action::UpdateTrafficMirrorFilterRuleAttribute => {
            filters::update_rule(svc, &snap, p, &mut batch)?
        }
        Action::CreateTrafficMirrorTarget => targets::create_target(svc, p, &mut batch)?,
        Action::DeleteTrafficMirrorTarget => targets::delete_target(&snap, p, &mut batch)?,
        Action::UpdateTrafficMirrorTargetAttribute => targets::update_target(&snap, p, &mut batch)?,
        Action::CreateTrafficMirrorSession => sessions::create_session(svc, &snap, p, &mut batch)?,
        Action::UpdateTrafficMirrorSessionAttribute => {
            sessions::update_session(svc, &snap, p, &mut batch)?
        }
        Action::DeleteTrafficMirrorSession => sessions::delete_session(&snap, p, &mut batch)?,
        Action::AddSourcesToTrafficMirrorSession => {
            sessions::add_sources(svc, &snap, p, &mut batch)?
        }
        Action::RemoveSourcesFromTrafficMirrorSession => {
            sessions::remove_sources(&snap, p, &mut batch)?
        }
        Action::CreateFlowLog
        | Action::DeleteFlowLog
        | Action::ModifyFlowLogAttribute
        | Action::ActiveFlowLog
        | Action::DeactiveFlowLog => super::flowlogs::mutate(svc, &snap, action, p, &mut batch)?,
        Action::CreateTrafficMirrorReceiver | Action::DeleteTrafficMirrorReceiver => {
            super::receivers::mutate(svc, &snap, action, p, &mut batch)?
        }
        other => return Err(unknown_action(other.name())),
    };
    if dry_run {
        return Err(ApiError::bad(
            "DryRunOperation",
            "Request validation has been passed with DryRun flag set.",
        ));
    }
    Ok((out, batch))
}

pub fn read(svc: &Service, action: &str, p: &Params) -> Result<Value, ApiError> {
    let snap = svc.snapshot()?;
    let Some(action) = Action::parse(action) else {
        return Err(unknown_action(action));
    };
    match action {
        Action::ListTrafficMirrorFilters => filters::list_filters(&snap, p),
        Action::ListTrafficMirrorTargets => targets::list_targets(&snap, p),
        Action::ListTrafficMirrorSessions => sessions::list_sessions(svc, &snap, p),
        Action::GetTrafficMirrorServiceStatus | Action::GetFlowLogServiceStatus => {
            Ok(json!({"Enabled": true}))
        }
        Action::OpenTrafficMirrorService | Action::OpenFlowLogService => Ok(json!({})),
        Action::DescribeFlowLogs => super::flowlogs::describe(svc, &snap, p),
        Action::ListTrafficMirrorReceivers => super::receivers::list(svc, &snap, p),
        other => Err(unknown_action(other.name())),
    }
}

pub fn unknown_action(action: &str) -> ApiError {
    ApiError::new(
        404,
        "InvalidAction.NotFound",
        format!("Specified api \"{action}\" is not found, please check your url and method."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_parses_from_its_name() {
        for &a in Action::ALL {
            assert_eq!(Action::parse(a.name()), Some(a));
            assert_eq!(a.name().parse::<Action>().ok(), Some(a));
        }
        let names: std::collections::BTreeSet<&str> =
            Action::ALL.iter().map(|a| a.name()).collect();
        assert_eq!(names.len(), Action::ALL.len());
    }

    #[test]
    fn unknown_names_give_the_unknown_action_error() {
        for name in [
            "",
            "createtrafficmirrorsession",
            "DescribeTrafficMirrorSessions",
        ] {
            assert!(Action::parse(name).is_none(), "{name}");
            let e = name.parse::<Action>().err().map(|e| e.code);
            assert_eq!(e, Some(unknown_action(name).code), "{name}");
        }
    }

    #[test]
    fn mutating_and_reading_split_the_actions() {
        assert!(is_mutating("CreateTrafficMirrorSession"));
        assert!(is_mutating("CreateFlowLog"));
        assert!(is_mutating("DeleteTrafficMirrorReceiver"));
        assert!(is_reading("ListTrafficMirrorSessions"));
        assert!(is_reading("DescribeFlowLogs"));
        assert!(is_reading("ListTrafficMirrorReceivers"));
        assert!(!is_known("DescribeTrafficMirrorSessions"));
        for &a in Action::ALL {
            assert_ne!(is_mutating(a.name()), is_reading(a.name()), "{a:?}");
        }
    }
}
