//! PR comment commands: `/gantry plan [-w NAME]`, `/gantry apply [-w NAME]`,
//! `/gantry help`. Parsed strictly: a comment whose first line starts with
//! `/gantry` is a command (anything malformed gets the help text back); every
//! other comment is not for gantry.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    Plan {
        workspace: Option<String>,
    },
    Apply {
        workspace: Option<String>,
    },
    /// Overrides soft-mandatory policy failures of the PR's plans, with a reason.
    Override {
        workspace: Option<String>,
        reason: String,
    },
    Help,
    /// A `/gantry` comment gantry does not understand; `why` says what is wrong.
    Invalid {
        why: String,
    },
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Plan { .. } => "plan",
            Command::Apply { .. } => "apply",
            Command::Override { .. } => "override",
            Command::Help => "help",
            Command::Invalid { .. } => "invalid",
        }
    }
}

pub const HELP: &str = "gantry commands (comment on the pull request):\n\n\
| command | does |\n| --- | --- |\n\
| `/gantry plan` | plans every workspace the pull request affects again |\n\
| `/gantry plan -w NAME` | plans one workspace again |\n\
| `/gantry apply` | applies the plans shown on this pull request (workspaces with `workflow: apply_before_merge`) |\n\
| `/gantry apply -w NAME` | applies one workspace's plan |\n\
| `/gantry override [-w NAME] REASON` | overrides soft-mandatory policy failures of the plans shown |\n\
| `/gantry help` | shows this |";

/// The command in a comment, or `None` when the comment is not addressed to gantry.
pub fn parse(body: &str) -> Option<Command> {
    let first = body.trim_start().lines().next()?.trim();
    let mut words = first.split_whitespace();
    if words.next()? != "/gantry" {
        return None;
    }
    let Some(verb) = words.next() else {
        return Some(Command::Help);
    };
    let rest: Vec<&str> = words.collect();
    let invalid = |why: String| Some(Command::Invalid { why });
    if verb == "override" {
        let (workspace, words) = match rest.as_slice() {
            ["-w" | "--workspace", name, tail @ ..] => (Some(name.to_string()), tail.to_vec()),
            ["-w" | "--workspace"] => return invalid("`-w` needs a workspace name".into()),
            other => (None, other.to_vec()),
        };
        // The reason: the rest of the line, else the lines below it.
        let mut reason = words.join(" ");
        if reason.is_empty() {
            reason = body
                .trim_start()
                .lines()
                .skip(1)
                .collect::<Vec<_>>()
                .join(" ")
                .trim()
                .to_string();
        }
        if reason.is_empty() {
            return invalid("an override needs a reason: `/gantry override REASON`".into());
        }
        return Some(Command::Override { workspace, reason });
    }
    let workspace = match rest.as_slice() {
        [] => None,
        ["-w", name] | ["--workspace", name] => Some(name.to_string()),
        ["-w"] | ["--workspace"] => return invalid("`-w` needs a workspace name".into()),
        other => return invalid(format!("unexpected `{}`", other.join(" "))),
    };
    match verb {
        "plan" => Some(Command::Plan { workspace }),
        "apply" => Some(Command::Apply { workspace }),
        "help" if workspace.is_none() => Some(Command::Help),
        other => invalid(format!("unknown command `{other}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_strictly() {
        assert_eq!(
            parse("/gantry plan"),
            Some(Command::Plan { workspace: None })
        );
        assert_eq!(
            parse("  /gantry apply -w dns\nthanks!"),
            Some(Command::Apply {
                workspace: Some("dns".into())
            })
        );
        assert_eq!(
            parse("/gantry apply --workspace dns"),
            Some(Command::Apply {
                workspace: Some("dns".into())
            })
        );
        assert_eq!(parse("/gantry"), Some(Command::Help));
        assert_eq!(parse("/gantry help"), Some(Command::Help));
        assert_eq!(
            parse("/gantry destroy"),
            Some(Command::Invalid {
                why: "unknown command `destroy`".into()
            })
        );
        assert_eq!(
            parse("/gantry apply -w"),
            Some(Command::Invalid {
                why: "`-w` needs a workspace name".into()
            })
        );
        assert_eq!(
            parse("/gantry plan now please"),
            Some(Command::Invalid {
                why: "unexpected `now please`".into()
            })
        );
        assert_eq!(parse("LGTM"), None);
        assert_eq!(parse("I ran /gantry plan yesterday"), None);
        assert_eq!(parse("/gantryplan"), None);
        assert_eq!(
            parse("/gantry override -w dns checked with the DNS team"),
            Some(Command::Override {
                workspace: Some("dns".into()),
                reason: "checked with the DNS team".into()
            })
        );
        assert_eq!(
            parse("/gantry override\nbudget approved in INFRA-12"),
            Some(Command::Override {
                workspace: None,
                reason: "budget approved in INFRA-12".into()
            })
        );
        assert_eq!(
            parse("/gantry override"),
            Some(Command::Invalid {
                why: "an override needs a reason: `/gantry override REASON`".into()
            })
        );
        assert_eq!(parse(""), None);
    }
}
