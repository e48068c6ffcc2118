//! Command-line client of the agent's RPC API (docs/api.md, Alibaba style).
//!
//! Every subcommand becomes one `POST /?Action=…` with a form body, over the agent's Unix
//! socket or a TCP endpoint. Table output is for people; `-o json` prints the API's answer
//! untouched so scripts see exactly what the API said.
//!
//! `args` holds the command line; each resource's module turns its subcommands into a
//! [`Plan`] and renders its list; `transport` and `reply` carry the request and read the
//! answer; `execute` follows pages and decides what is printed and the exit code.

mod args;
mod call;
mod error;
mod execute;
mod filters;
mod flowlogs;
mod params;
mod receivers;
mod reply;
mod rules;
mod sessions;
mod table;
mod targets;
mod transport;

#[cfg(test)]
mod tests;

use std::{ffi::OsString, io::Write, process::ExitCode};

use serde_json::Value;

pub use args::*;
pub use error::{AnswerError, UsageError};
pub use params::{ParamError, RuleSpec, Tag};

use params::Params;

/// A misbehaving server could hand out the same NextToken forever.
const MAX_PAGES: usize = 1000;

const EXIT_OK: u8 = 0;
const EXIT_API_ERROR: u8 = 1;
const EXIT_USAGE: u8 = 2;

/// What a successful answer is turned into in table mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Render {
    /// `call`: the answer, pretty-printed.
    Raw,
    /// `ok (RequestId …)`.
    Done,
    /// A create: the new id on stdout, the RequestId on stderr so `$(…)` captures the id.
    Created(&'static str),
    FilterCreated,
    RulesCreated,
    Sessions,
    Filters,
    Targets,
    FlowLogs,
    Receivers,
}

impl Render {
    /// The list a paged answer carries.
    fn list_field(self) -> Option<&'static str> {
        match self {
            Render::Sessions => Some("TrafficMirrorSessions"),
            Render::Filters => Some("TrafficMirrorFilters"),
            Render::Targets => Some("TrafficMirrorTargets"),
            Render::FlowLogs => Some("FlowLogs"),
            Render::Receivers => Some("TrafficMirrorReceivers"),
            _ => None,
        }
    }

    /// The table of a list, once every page has arrived.
    fn list(self, items: &[Value]) -> String {
        match self {
            Render::Sessions => sessions::render(items),
            Render::Filters => filters::render(items),
            Render::Targets => targets::render(items),
            Render::FlowLogs => flowlogs::render(items),
            Render::Receivers => receivers::render(items),
            _ => String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    action: String,
    params: Params,
    render: Render,
    /// Table output of a list follows NextToken unless the user asked for one page.
    follow_pages: bool,
}

impl Plan {
    fn new(action: &str, params: Params, render: Render) -> Plan {
        Plan {
            action: action.to_string(),
            params,
            render,
            follow_pages: false,
        }
    }

    fn list(action: &str, params: Params, render: Render, paging: &Paging) -> Plan {
        Plan {
            follow_pages: paging.next_token.is_none(),
            ..Plan::new(action, params, render)
        }
    }

    /// Delete and the like: the id, then the options every mutation takes.
    fn by_id<R: Resource>(action: &str, by_id: ById<R>) -> Plan {
        let mut p = Params::default();
        p.set(R::ID_PARAM, by_id.id);
        p.mutation(&by_id.mutation);
        Plan::new(action, p, Render::Done)
    }

    fn list_by_ids<R: Resource>(action: &str, list: ListByIds<R>, render: Render) -> Plan {
        let mut p = Params::default();
        p.list(R::IDS_PARAM, &list.ids);
        p.paging(&list.paging);
        Plan::list(action, p, render, &list.paging)
    }

    /// An update whose `params` hold the id and the attributes given; `wanted` tells the user
    /// what to add when there are none.
    fn update(
        action: &str,
        mut params: Params,
        mutation: &Mutation,
        wanted: &'static str,
    ) -> Result<Plan, UsageError> {
        if params.len() == 1 {
            return Err(UsageError::NothingToUpdate(wanted));
        }
        params.mutation(mutation);
        Ok(Plan::new(action, params, Render::Done))
    }
}

/// Turns a command into its API request; errors are usage errors.
fn plan(command: ClientCommand) -> Result<Plan, UsageError> {
    match command {
        ClientCommand::Call { action, params } => call::plan(action, &params),
        ClientCommand::Session(c) => sessions::plan(c),
        ClientCommand::Filter(c) => filters::plan(c),
        ClientCommand::Rule(c) => rules::plan(c),
        ClientCommand::Target(c) => targets::plan(c),
        ClientCommand::FlowLog(c) => flowlogs::plan(c),
        ClientCommand::Receiver(c) => Ok(receivers::plan(c)),
    }
}

/// Runs one client command; builds its own current-thread tokio runtime. Exit codes: 0
/// success, 1 the API answered an error (`error: <Code>: <Message> (RequestId <id>)` on
/// stderr; with -o json the JSON body on stdout too), 2 usage or connection problems.
pub fn run(args: &ClientArgs, command: ClientCommand) -> ExitCode {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let code = run_with(
        args,
        command,
        &env,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    ExitCode::from(code)
}

fn run_with(
    args: &ClientArgs,
    command: ClientCommand,
    env: &dyn Fn(&str) -> Option<OsString>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let prepared = plan(command).and_then(|p| {
        let t = transport::transport(args, env)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(UsageError::Runtime)?;
        Ok((p, t, runtime))
    });
    let (plan, transport, runtime) = match prepared {
        Ok(x) => x,
        Err(e) => {
            // Nothing useful is left to do if stderr itself is gone.
            let _ = writeln!(err, "error: {e}");
            return EXIT_USAGE;
        }
    };
    let result = runtime.block_on(execute::execute(&transport, &plan, args.output));
    let _ = out.write_all(result.stdout.as_bytes());
    let _ = err.write_all(result.stderr.as_bytes());
    let _ = out.flush();
    result.code
}
