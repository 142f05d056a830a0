//! Which workspaces a change affects.
//!
//! A workspace is affected when a changed file is under its `dir`, matches one of
//! its `trigger_patterns`, or is under a local module directory its configuration
//! calls (`module "x" { source = "../modules/x" }`), followed transitively through
//! modules that call modules. Module sources are read from the commit being
//! planned, so a PR that adds a module call is planned correctly.

use std::collections::{BTreeSet, HashMap};

use crate::config::{RepoPath, Workspace};

/// Read access to the files of one commit.
pub trait SourceTree {
    /// `(file name, contents)` of each `*.tf` file directly in `dir` (repository
    /// relative; empty for the root).
    fn tf_files(&self, dir: &str) -> Vec<(String, String)>;
}

/// Local module sources (`./…` or `../…`) called by one `.tf` file.
pub fn local_module_sources(text: &str) -> Vec<String> {
    let is_local = |s: &str| s.starts_with("./") || s.starts_with("../");
    match hcl::parse(text) {
        Ok(body) => body
            .blocks()
            .filter(|b| b.identifier() == "module")
            .filter_map(|b| {
                b.body
                    .attributes()
                    .find(|a| a.key.as_str() == "source")
                    .and_then(|a| match &a.expr {
                        hcl::Expression::String(s) if is_local(s) => Some(s.clone()),
                        _ => None,
                    })
            })
            .collect(),
        // A file the HCL parser rejects (terraform will say why at plan time):
        // fall back to a line scan so a module change still triggers the workspace.
        Err(_) => text
            .lines()
            .filter_map(|l| {
                let l = l.trim();
                let rest = l
                    .strip_prefix("source")?
                    .trim_start()
                    .strip_prefix('=')?
                    .trim();
                let v = rest.strip_prefix('"')?.split('"').next()?;
                is_local(v).then(|| v.to_string())
            })
            .collect(),
    }
}

/// Memoizes the module directories each directory calls, transitively.
pub struct ModuleGraph<'t> {
    tree: &'t dyn SourceTree,
    direct: HashMap<RepoPath, Vec<RepoPath>>,
}

impl<'t> ModuleGraph<'t> {
    pub fn new(tree: &'t dyn SourceTree) -> Self {
        ModuleGraph {
            tree,
            direct: HashMap::new(),
        }
    }

    fn direct_modules(&mut self, dir: &RepoPath) -> Vec<RepoPath> {
        if let Some(v) = self.direct.get(dir) {
            return v.clone();
        }
        let mut out = BTreeSet::new();
        for (_name, text) in self.tree.tf_files(dir.as_str()) {
            for src in local_module_sources(&text) {
                // A source that climbs out of the repository cannot change with it.
                if let Ok(p) = dir.join(&src) {
                    out.insert(p);
                }
            }
        }
        let v: Vec<RepoPath> = out.into_iter().collect();
        self.direct.insert(dir.clone(), v.clone());
        v
    }

    /// Every local module directory `dir` calls, directly or through other modules.
    pub fn closure(&mut self, dir: &RepoPath) -> BTreeSet<RepoPath> {
        let mut seen = BTreeSet::new();
        let mut stack = self.direct_modules(dir);
        while let Some(m) = stack.pop() {
            if &m == dir || !seen.insert(m.clone()) {
                continue;
            }
            stack.extend(self.direct_modules(&m));
        }
        seen
    }
}

/// Why a workspace was found affected (for logs and the API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Named in a `/gantry plan -w NAME` command.
    Requested,
    Dir(String),
    Trigger(String),
    Module {
        module: String,
        file: String,
    },
}

/// The workspaces among `candidates` that `changed` affects, with the first
/// reason found for each, in candidate order.
pub fn affected<'w>(
    candidates: &[&'w Workspace],
    tree: &dyn SourceTree,
    changed: &[String],
) -> Vec<(&'w Workspace, Reason)> {
    let mut graph = ModuleGraph::new(tree);
    let mut out = Vec::new();
    for ws in candidates {
        if let Some(f) = changed.iter().find(|f| ws.dir.contains(f)) {
            out.push((*ws, Reason::Dir(f.clone())));
            continue;
        }
        if let Some(f) = changed.iter().find(|f| ws.triggers.is_match(f.as_str())) {
            out.push((*ws, Reason::Trigger(f.clone())));
            continue;
        }
        let modules = graph.closure(&ws.dir);
        let hit = modules
            .iter()
            .find_map(|m| changed.iter().find(|f| m.contains(f)).map(|f| (m, f)));
        if let Some((m, f)) = hit {
            out.push((
                *ws,
                Reason::Module {
                    module: m.to_string(),
                    file: f.clone(),
                },
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use globset::{Glob, GlobSetBuilder};

    struct MapTree(HashMap<&'static str, Vec<(&'static str, &'static str)>>);

    impl SourceTree for MapTree {
        fn tf_files(&self, dir: &str) -> Vec<(String, String)> {
            self.0
                .get(dir)
                .map(|v| {
                    v.iter()
                        .map(|(n, t)| (n.to_string(), t.to_string()))
                        .collect()
                })
                .unwrap_or_default()
        }
    }

    fn ws(name: &str, dir: &str, triggers: &[&str]) -> Workspace {
        let mut b = GlobSetBuilder::new();
        for t in triggers {
            b.add(Glob::new(t).unwrap());
        }
        Workspace {
            name: name.into(),
            environment: "production".into(),
            provider: "github".into(),
            repo: "acme/infra".into(),
            branch: "main".into(),
            dir: RepoPath::parse(dir).unwrap(),
            trigger_patterns: triggers.iter().map(|s| s.to_string()).collect(),
            triggers: b.build().unwrap(),
            timeout: None,
            auto_apply: false,
            workflow: crate::config::Workflow::ApplyOnMerge,
            agent_pool: None,
            apply_requirements: Vec::new(),
            drift_mode: crate::config::drift::DriftMode::RefreshOnly,
            drift_schedule: None,
            drift_notify: None,
        }
    }

    fn tree() -> MapTree {
        MapTree(HashMap::from([
            (
                "network",
                vec![(
                    "main.tf",
                    "module \"vpc\" {\n  source = \"../modules/vpc\"\n}\n",
                )],
            ),
            (
                "app",
                vec![(
                    "main.tf",
                    "module \"svc\" {\n  source = \"../modules/service\"\n  count = 2\n}\n",
                )],
            ),
            (
                "modules/service",
                vec![("main.tf", "module \"vpc\" { source = \"../vpc\" }\n")],
            ),
            (
                "modules/vpc",
                vec![("main.tf", "resource \"null_resource\" \"x\" {}\n")],
            ),
            (
                "dns",
                vec![(
                    "main.tf",
                    "module \"r\" { source = \"terraform-aws-modules/vpc/aws\" }\n",
                )],
            ),
        ]))
    }

    fn names(found: Vec<(&Workspace, Reason)>) -> Vec<String> {
        found.into_iter().map(|(w, _)| w.name.clone()).collect()
    }

    #[test]
    fn parses_local_sources_only() {
        let text = r#"
module "a" { source = "./a" }
module "b" {
  source  = "hashicorp/consul/aws"
  version = "1.0.0"
}
module "c" { source = "../../c" }
resource "null_resource" "x" { triggers = { source = "./not-a-module" } }
"#;
        assert_eq!(local_module_sources(text), vec!["./a", "../../c"]);
    }

    #[test]
    fn falls_back_to_a_line_scan_on_unparsable_files() {
        let text = "module \"a\" {\n  source = \"../mods/a\"\n  broken = \n}\n";
        assert_eq!(local_module_sources(text), vec!["../mods/a"]);
    }

    #[test]
    fn dir_trigger_and_transitive_modules() {
        let (net, app, dns, lb) = (
            ws("network", "network", &[]),
            ws("app", "app", &[]),
            ws("dns", "dns", &[]),
            ws("lb", "lb", &["shared/*.json"]),
        );
        let all = [&net, &app, &dns, &lb];
        let t = tree();
        let changed = |files: &[&str]| files.iter().map(|s| s.to_string()).collect::<Vec<_>>();

        assert_eq!(
            names(affected(&all, &t, &changed(&["network/main.tf"]))),
            ["network"]
        );
        // A module used directly by network and through modules/service by app.
        assert_eq!(
            names(affected(&all, &t, &changed(&["modules/vpc/variables.tf"]))),
            ["network", "app"]
        );
        assert_eq!(
            names(affected(&all, &t, &changed(&["modules/service/main.tf"]))),
            ["app"]
        );
        assert_eq!(
            names(affected(&all, &t, &changed(&["shared/lb.json"]))),
            ["lb"]
        );
        assert!(affected(&all, &t, &changed(&["README.md", "networking/x.tf"])).is_empty());
    }

    #[test]
    fn root_workspace_sees_every_file() {
        let root = ws("root", ".", &[]);
        let t = tree();
        assert_eq!(
            names(affected(&[&root], &t, &["README.md".to_string()])),
            ["root"]
        );
    }

    #[test]
    fn module_cycles_terminate() {
        let t = MapTree(HashMap::from([
            ("a", vec![("main.tf", "module \"b\" { source = \"../b\" }")]),
            ("b", vec![("main.tf", "module \"a\" { source = \"../a\" }")]),
        ]));
        let mut g = ModuleGraph::new(&t);
        let c = g.closure(&RepoPath::parse("a").unwrap());
        assert_eq!(
            c.into_iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            ["b"]
        );
    }
}
