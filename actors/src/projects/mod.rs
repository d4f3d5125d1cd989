//! Projects: each is an engine of its own (store, experiments, ingest,
//! results, webhooks, alerts, live feed), so nothing of one can reach
//! another. The `default` project's engine is the server's: it also keeps
//! the projects, the API keys, and the audit entries of changes to them.
//!
//! A project's store lives under `storage.path/projects/<key>@<created
//! ms>`: a project deleted and created again under the same key gets a new
//! store at once. A deleted project's engine is shut down and taken out of
//! service; its directory is removed the next time the server starts.
//!
//! Cluster mode serves the `default` project only.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::audit::{self, AuditPage};
use crate::clock::Clock;
use crate::domain::{
    unix_ms, AuditEntry, AuditFilter, KeyIn, KeyIssued, Principal, Project, ProjectIn,
    ProjectPatch, QuotaLimits, ResourceKind, DEFAULT_PROJECT,
};
use crate::engine::{Engine, EngineConfig};
use crate::storage::blocking;
use crate::{Error, Result};

/// Where and how big further projects' stores are.
#[derive(Debug, Clone, Copy)]
pub struct ProjectLimits {
    /// Most projects, `default` included.
    pub max_projects: usize,
    /// Each further project's block cache.
    pub cache_bytes: usize,
}

/// Every project's engine, by key.
pub struct Projects {
    root: Arc<Engine>,
    engines: ArcSwap<HashMap<Arc<str>, Arc<Engine>>>,
    /// How the default project's engine was opened: further ones are
    /// opened alike, in their own directories.
    template: EngineConfig,
    limits: ProjectLimits,
    clock: Arc<dyn Clock>,
    /// Serialises creations and deletions (and the count they check).
    changing: tokio::sync::Mutex<()>,
}

impl Projects {
    /// Opens the default project's engine from `config`, records the
    /// default project if the store predates projects, and opens every
    /// other project's engine (not in cluster mode). Directories of deleted
    /// projects are removed.
    pub async fn open(
        config: EngineConfig,
        limits: ProjectLimits,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let root = Arc::new(Engine::open(config.clone(), Arc::clone(&clock)).await?);
        let store = root.store().clone();
        let now = clock.now();
        let projects = blocking(move || {
            let projects = store.projects()?;
            if projects.iter().any(|p| p.key.as_str() == DEFAULT_PROJECT) {
                return Ok(projects);
            }
            store.put_project(&Project::default_at(now), None)?;
            store.projects()
        })
        .await?;
        let mut engines: HashMap<Arc<str>, Arc<Engine>> = HashMap::new();
        if let Some(default) = projects.iter().find(|p| p.key.as_str() == DEFAULT_PROJECT) {
            root.quotas().set(default.quotas.over(config.quotas));
        }
        engines.insert(DEFAULT_PROJECT.into(), Arc::clone(&root));
        let others: Vec<&Project> = projects
            .iter()
            .filter(|p| p.key.as_str() != DEFAULT_PROJECT)
            .collect();
        if root.is_clustered() && !others.is_empty() {
            tracing::warn!(
                projects = others.len(),
                "cluster mode serves the default project only; the others are not opened"
            );
        } else {
            for project in &others {
                let engine = open_engine(&config, limits, project, Arc::clone(&clock)).await?;
                engines.insert(project.key.as_str().into(), Arc::new(engine));
            }
            remove_deleted(&config.storage_path, &projects).await;
        }
        Ok(Self {
            root,
            engines: ArcSwap::from_pointee(engines),
            template: config,
            limits,
            clock,
            changing: tokio::sync::Mutex::new(()),
        })
    }

    /// The default project's engine: the server's.
    pub fn root(&self) -> &Arc<Engine> {
        &self.root
    }

    /// The engine of project `key`, if there is such a project.
    pub fn engine(&self, key: &str) -> Option<Arc<Engine>> {
        self.engines.load().get(key).cloned()
    }

    /// Every project's engine.
    pub fn engines(&self) -> Vec<Arc<Engine>> {
        self.engines.load().values().cloned().collect()
    }

    /// Every project, by key.
    pub async fn list(&self) -> Result<Vec<Project>> {
        let store = self.root.store().clone();
        blocking(move || store.projects()).await
    }

    /// One project.
    pub async fn get(&self, key: &str) -> Result<Project> {
        self.list()
            .await?
            .into_iter()
            .find(|p| p.key.as_str() == key)
            .ok_or_else(|| Error::ProjectNotFound(key.to_owned()))
    }

    /// Creates a project and opens its engine, on behalf of `by`.
    pub async fn create(&self, input: ProjectIn, by: &Principal) -> Result<Project> {
        if self.root.is_clustered() {
            return Err(Error::Unsupported(
                "cluster mode serves the default project only",
            ));
        }
        let project = Project::create(input, self.clock.now())
            .map_err(|(field, message)| Error::invalid(field, message))?;
        let _changing = self.changing.lock().await;
        let engines = self.engines.load_full();
        if engines.contains_key(project.key.as_str()) {
            return Err(Error::ProjectExists(project.key.to_string()));
        }
        if engines.len() >= self.limits.max_projects {
            return Err(Error::invalid(
                "projects",
                format!(
                    "at most {} projects (projects.max_projects); delete one first",
                    self.limits.max_projects
                ),
            ));
        }
        let engine = open_engine(
            &self.template,
            self.limits,
            &project,
            Arc::clone(&self.clock),
        )
        .await?;
        let engine = Arc::new(engine);
        let at = project.created_at;
        let audit = audit_entry(by, at, &project, "project.created", None, Some(&project));
        let (store, stored) = (self.root.store().clone(), project.clone());
        if let Err(e) = blocking(move || store.put_project(&stored, Some(&audit))).await {
            let _ = Arc::clone(&engine).shutdown().await;
            return Err(e);
        }
        let mut next = (*engines).clone();
        next.insert(project.key.as_str().into(), engine);
        self.engines.store(Arc::new(next));
        tracing::info!(project = %project.key, by = %by.id, "project created");
        Ok(project)
    }

    /// The quotas in force for `project`: its overrides over the server's.
    pub fn quotas_of(&self, project: &Project) -> QuotaLimits {
        project.quotas.over(self.template.quotas)
    }

    /// Changes a project's name, description or quotas, on behalf of `by`.
    pub async fn patch(&self, key: &str, patch: ProjectPatch, by: &Principal) -> Result<Project> {
        let _changing = self.changing.lock().await;
        let current = self.get(key).await?;
        let next = current
            .patched(patch, self.clock.now())
            .map_err(|(field, message)| Error::invalid(field, message))?;
        let at = next.updated_at;
        let audit = audit_entry(
            by,
            at,
            &next,
            "project.updated",
            Some(&current),
            Some(&next),
        );
        let (store, stored) = (self.root.store().clone(), next.clone());
        blocking(move || store.put_project(&stored, Some(&audit))).await?;
        if let Some(engine) = self.engine(key) {
            engine.quotas().set(self.quotas_of(&next));
        }
        Ok(next)
    }

    /// Deletes a project, on behalf of `by`: its keys are revoked, its
    /// engine shut down, and its data removed at the next start. The
    /// default project cannot be deleted.
    pub async fn delete(&self, key: &str, by: &Principal) -> Result<Project> {
        if key == DEFAULT_PROJECT {
            return Err(Error::invalid(
                "key",
                "the default project cannot be deleted",
            ));
        }
        let _changing = self.changing.lock().await;
        let project = self.get(key).await?;
        let at = self.clock.now();
        let audit = audit_entry(by, at, &project, "project.deleted", Some(&project), None);
        let store = self.root.store().clone();
        let owned = key.to_owned();
        blocking(move || store.delete_project(&owned, Some(&audit))).await?;
        let mut next = (*self.engines.load_full()).clone();
        let engine = next.remove(key);
        self.engines.store(Arc::new(next));
        self.root.credentials().revoke_project(key, by).await?;
        if let Some(engine) = engine {
            engine.shutdown().await?;
        }
        tracing::info!(project = %key, by = %by.id, "project deleted");
        Ok(project)
    }

    /// Issues a key (see [`Credentials::issue`]) in an existing project.
    ///
    /// [`Credentials::issue`]: crate::credentials::Credentials::issue
    pub async fn issue_key(&self, input: KeyIn, by: &Principal) -> Result<KeyIssued> {
        // Not while the project is being deleted: its keys are revoked then.
        let _changing = self.changing.lock().await;
        let project = input.project.as_ref().map_or(&*by.project, |p| p.as_str());
        if self.engine(project).is_none() {
            return Err(Error::invalid("project", format!("no project '{project}'")));
        }
        self.root.credentials().issue(input, by).await
    }

    /// A page of the audit log: of one project (its own changes, and those
    /// to its keys) or of every project.
    pub async fn audit(
        &self,
        filter: AuditFilter,
        window: (u64, u64),
        before: Option<String>,
        limit: usize,
    ) -> Result<AuditPage> {
        let engines = match filter.project.as_deref() {
            Some(project) => {
                let mut engines = vec![Arc::clone(&self.root)];
                if project != DEFAULT_PROJECT {
                    engines.extend(self.engine(project));
                }
                engines
            }
            None => self.engines(),
        };
        let logs: Vec<&audit::AuditLog> = engines.iter().map(|e| &**e.audit()).collect();
        audit::page_of(&logs, filter, window, before, limit).await
    }

    /// Shuts every project's engine down (the default project's last).
    pub async fn shutdown(&self) -> Result<()> {
        let engines = self.engines.swap(Arc::default());
        for (key, engine) in engines.iter() {
            if **key != *DEFAULT_PROJECT {
                Arc::clone(engine).shutdown().await?;
            }
        }
        Arc::clone(&self.root).shutdown().await
    }
}

/// The directory of `project`'s store under the default project's.
fn directory(root: &Path, project: &Project) -> PathBuf {
    let created = unix_ms(project.created_at);
    root.join("projects")
        .join(format!("{}@{created}", project.key))
}

async fn open_engine(
    template: &EngineConfig,
    limits: ProjectLimits,
    project: &Project,
    clock: Arc<dyn Clock>,
) -> Result<Engine> {
    let storage_path = directory(&template.storage_path, project);
    let config = EngineConfig {
        project: project.key.as_str().into(),
        quotas: project.quotas.over(template.quotas),
        jsonl_path: template
            .jsonl_path
            .as_ref()
            .map(|_| storage_path.join("events.jsonl")),
        storage_path,
        cache_bytes: limits.cache_bytes,
        cluster: None,
        ..template.clone()
    };
    tracing::info!(project = %project.key, path = %config.storage_path.display(), "opening a project");
    Engine::open(config, clock).await
}

/// Removes the directories under `root/projects` no project has.
async fn remove_deleted(root: &Path, projects: &[Project]) {
    let parent = root.join("projects");
    let kept: Vec<PathBuf> = projects.iter().map(|p| directory(root, p)).collect();
    let removed = blocking(move || {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            return Ok(());
        };
        for path in entries.flatten().map(|e| e.path()) {
            if kept.contains(&path) {
                continue;
            }
            tracing::info!(path = %path.display(), "removing a deleted project's data");
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::warn!(path = %path.display(), error = %e, "a deleted project's data could not be removed");
            }
        }
        Ok(())
    })
    .await;
    debug_assert!(removed.is_ok());
}

/// The audit entry of `action` by `by` on `project` at `at`, in that
/// project.
fn audit_entry(
    by: &Principal,
    at: time::OffsetDateTime,
    project: &Project,
    action: &str,
    before: Option<&Project>,
    after: Option<&Project>,
) -> AuditEntry {
    let mut entry = AuditEntry::of_change(
        by,
        at,
        action,
        ResourceKind::Project,
        project.key.as_str(),
        before,
        after,
    );
    entry.project = project.key.to_string();
    entry
}
